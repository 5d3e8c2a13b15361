"""Take a snapshot of a directory into the store, and restore one from it.

``take_snapshot`` chunks every file (see :mod:`.chunking`), asks the store which chunks
it lacks, uploads only those and stores the manifest. ``restore_snapshot`` downloads
the chunks a destination lacks, writes each file to a temporary name beside its final
place, checks the file's BLAKE3 by reading it back, and only then renames it into place:
a reader never sees a half-written file, and a failed restore leaves no partial file.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from dataclasses import dataclass, field
from typing import Callable

import blake3

from .chunking import Chunker, hash_bytes
from .client import StoreClient
from .excludes import Excludes
from .manifest import FileEntry, Manifest, check_path

log = logging.getLogger(__name__)


class RestoreError(RuntimeError):
    """A restored file did not match its manifest."""


class SnapshotError(RuntimeError):
    """A file changed while it was being snapshotted."""


@dataclass
class SnapshotStats:
    files: int = 0
    chunks: int = 0
    bytes_total: int = 0
    chunks_sent: int = 0
    #: chunk bytes uploaded plus the manifest
    bytes_sent: int = 0
    warnings: list[str] = field(default_factory=list)


def file_hash(path: str) -> str:
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    if os.path.getsize(path):
        h.update_mmap(path)
    return h.hexdigest()


def take_snapshot(
    root: str | os.PathLike,
    client: StoreClient,
    *,
    excludes: Excludes | None = None,
    extra: dict[str, str] | None = None,
    meta: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    chunker: Chunker | None = None,
) -> tuple[str, Manifest, SnapshotStats]:
    """Snapshot ``root`` (minus ``excludes``) into the store.

    ``extra`` maps a path prefix (``".cloudhop/kernels/0"``) to another directory whose
    files are added under that prefix, unfiltered. ``progress(bytes_sent, bytes_total)``
    is called from this thread as chunks go out. Returns ``(snapshot_id, manifest, stats)``.
    """
    excludes = excludes or Excludes()
    chunker = chunker or Chunker()
    stats = SnapshotStats()
    sources: list[tuple[str, str, int]] = []  # (manifest path, absolute path, mode)
    for rel, st in excludes.walk(root):
        sources.append((rel, os.path.join(os.fspath(root), rel), st.st_mode & 0o7777))
    stats.warnings = list(excludes.warnings)
    for prefix, directory in (extra or {}).items():
        for rel, st in Excludes(patterns=(), max_file_bytes=1 << 62).walk(directory):
            sources.append((f"{prefix.strip('/')}/{rel}", os.path.join(directory, rel), st.st_mode & 0o7777))

    where: dict[str, tuple[str, int, int]] = {}
    manifest = Manifest(meta=dict(meta or {}))
    for rel, path, mode in sources:
        check_path(rel)
        digest, refs = chunker.chunk_file(path)
        for ref in refs:
            where.setdefault(ref.id, (path, ref.offset, ref.length))
        manifest.files.append(FileEntry(rel, mode, sum(r.length for r in refs), digest,
                                        [(r.id, r.length) for r in refs]))
    stats.files = len(manifest.files)
    stats.bytes_total = manifest.total_bytes
    ids = manifest.chunk_ids()
    stats.chunks = len(ids)

    missing, upload = client.missing(ids)
    lock = threading.Lock()
    # a store that takes chunks itself checks each one against its id; a bucket behind
    # presigned URLs does not, so then the client checks what it re-read
    verify = upload.get("kind") == "presigned"

    def read(cid: str) -> bytes:
        path, offset, length = where[cid]
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if len(data) != length or (verify and hash_bytes(data) != cid):
            raise SnapshotError(f"{path} changed while it was being snapshotted; try again")
        return data

    def sent(n: int) -> None:
        with lock:
            stats.bytes_sent += n
            if progress:
                progress(stats.bytes_sent, stats.bytes_total)

    client.upload(missing, read, upload, on_sent=sent)
    stats.chunks_sent = len(missing)
    body = manifest.dumps()
    snapshot_id = client.put_manifest(body)
    stats.bytes_sent += len(body)
    return snapshot_id, manifest, stats


def restore_snapshot(
    manifest: Manifest,
    client: StoreClient,
    dest_for: Callable[[str], str | None],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, str]:
    """Restore the files of ``manifest``; ``dest_for(path)`` gives each file's absolute
    destination (``None`` skips it). Returns ``{path: blake3}`` as read back from disk.

    A destination file that already has the right content is left as it is."""
    plan: list[tuple[FileEntry, str, str]] = []  # (entry, final, temp)
    done: dict[str, str] = {}
    for entry in manifest.files:
        final = dest_for(entry.path)
        if final is None:
            continue
        if os.path.isfile(final) and os.path.getsize(final) == entry.size and file_hash(final) == entry.hash:
            os.chmod(final, entry.mode)
            done[entry.path] = entry.hash
            continue
        os.makedirs(os.path.dirname(final) or ".", exist_ok=True)
        temp = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.cloudhop-{secrets.token_hex(4)}")
        plan.append((entry, final, temp))

    places: dict[str, list[tuple[str, int]]] = {}
    total = 0
    try:
        for entry, _, temp in plan:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(fd, entry.size)
            finally:
                os.close(fd)
            offset = 0
            for cid, length in entry.chunks:
                places.setdefault(cid, []).append((temp, offset))
                offset += length
        ids = list(places)
        got = 0

        def on_chunk(cid: str, data) -> None:
            nonlocal got
            for temp, offset in places[cid]:
                fd = os.open(temp, os.O_WRONLY)
                try:
                    os.pwrite(fd, data, offset)
                finally:
                    os.close(fd)
            got += len(data) * len(places[cid])
            if progress:
                progress(got, total)

        total = sum(e.size for e, _, _ in plan)
        client.download(ids, on_chunk)
        for entry, final, temp in plan:
            digest = file_hash(temp)
            if digest != entry.hash:
                raise RestoreError(f"{entry.path}: restored content does not match its checksum")
            os.chmod(temp, entry.mode)
            os.replace(temp, final)
            done[entry.path] = digest
    finally:
        for _, _, temp in plan:
            if os.path.exists(temp):
                os.unlink(temp)
    return done


def workspace_dest(root: str, skip_prefix: str | None = None) -> Callable[[str], str | None]:
    """``dest_for`` that puts manifest paths under ``root`` (skipping ``skip_prefix``)."""
    root = os.path.abspath(root)

    def dest(path: str) -> str | None:
        if skip_prefix and (path == skip_prefix.rstrip("/") or path.startswith(skip_prefix.rstrip("/") + "/")):
            return None
        final = os.path.abspath(os.path.join(root, check_path(path)))
        if not final.startswith(root + os.sep):
            raise RestoreError(f"{path}: outside the workspace")
        return final

    return dest
