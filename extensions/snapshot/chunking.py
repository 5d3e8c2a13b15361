"""Content-defined chunking (FastCDC) with BLAKE3 chunk ids.

Chunk boundaries depend on the content, not on offsets, so inserting or changing a few
bytes in a file changes only the chunks around the edit; every other chunk keeps its id
and is not sent again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import blake3
from pyfastcdc.cy import FastCDC

from .protocol import MAX_CHUNK

#: FastCDC sizes (bytes): average 256 KiB keeps a 1 GiB workspace at ~4k chunks while a
#: small edit re-sends well under a megabyte. The largest, MAX_CHUNK, is the store's
#: limit too (defined in :mod:`.protocol`).
MIN_CHUNK = 64 << 10
AVG_CHUNK = 256 << 10

HASH_HEX_LEN = 64


def hash_bytes(data) -> str:
    """The chunk id of ``data``: BLAKE3-256, hex."""
    return blake3.blake3(data).hexdigest()


def is_chunk_id(value) -> bool:
    return (
        isinstance(value, str)
        and len(value) == HASH_HEX_LEN
        and all(c in "0123456789abcdef" for c in value)
    )


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a file: its id, where it starts in the file and its length."""

    id: str
    offset: int
    length: int


class Chunker:
    """Cuts files into content-defined chunks and hashes them."""

    def __init__(self, avg_size: int = AVG_CHUNK, min_size: int = MIN_CHUNK, max_size: int = MAX_CHUNK):
        if max_size > MAX_CHUNK:
            raise ValueError(f"max_size: the store takes chunks of at most {MAX_CHUNK} bytes, not {max_size}")
        self._cdc = FastCDC(avg_size=avg_size, min_size=min_size, max_size=max_size)

    def chunk_file(self, path: str | os.PathLike) -> tuple[str, list[ChunkRef]]:
        """Return ``(file_hash, chunks)`` for the file at ``path``.

        ``file_hash`` is the BLAKE3 of the whole content; restore checks it."""
        whole = blake3.blake3()
        refs: list[ChunkRef] = []
        if os.path.getsize(path) == 0:
            return whole.hexdigest(), refs
        for chunk in self._cdc.cut_file(os.fspath(path)):
            data = chunk.data
            whole.update(data)
            refs.append(ChunkRef(hash_bytes(data), chunk.offset, chunk.length))
        return whole.hexdigest(), refs

    def chunk_bytes(self, data: bytes) -> Iterator[ChunkRef]:
        for chunk in self._cdc.cut_buf(data):
            yield ChunkRef(hash_bytes(chunk.data), chunk.offset, chunk.length)
