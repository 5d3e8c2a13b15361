"""The snapshot manifest: what a snapshot holds and how to put it back together.

JSON form (``version`` 1)::

    {"version": 1, "created": 1700000000.0, "root": "workspace",
     "files": [{"path": "data/a.csv", "mode": 420, "size": 1234, "hash": "<blake3>",
                "chunks": [["<blake3>", 1234], ...]}, ...],
     "meta": {...}}

Paths are relative, use ``/`` and never contain ``..``: a manifest cannot name a file
outside the directory it is restored into. ``meta`` carries what the writer wants to
keep with the snapshot (the kernels and their variables, for a migration).
"""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import dataclass, field

from .chunking import is_chunk_id

VERSION = 1


class ManifestError(ValueError):
    """A manifest is malformed or names a path outside its root."""


def check_path(path: str) -> str:
    """Return ``path`` if it is a safe relative POSIX path, else raise ManifestError."""
    if not isinstance(path, str) or not path or "\x00" in path or "\\" in path:
        raise ManifestError(f"bad path {path!r}")
    norm = posixpath.normpath(path)
    if norm != path or path.startswith("/") or norm == "." or norm.split("/")[0] == "..":
        raise ManifestError(f"path {path!r} is not a plain relative path")
    return path


@dataclass
class FileEntry:
    path: str
    mode: int
    size: int
    hash: str
    #: ``(chunk_id, length)`` in file order
    chunks: list[tuple[str, int]] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"path": self.path, "mode": self.mode, "size": self.size, "hash": self.hash,
                "chunks": [[c, n] for c, n in self.chunks]}

    @classmethod
    def from_json(cls, data: dict) -> "FileEntry":
        try:
            entry = cls(
                path=check_path(data["path"]), mode=int(data["mode"]) & 0o7777,
                size=int(data["size"]), hash=str(data["hash"]),
                chunks=[(str(c), int(n)) for c, n in data["chunks"]],
            )
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, ManifestError):
                raise
            raise ManifestError(f"bad file entry: {err}") from err
        if not is_chunk_id(entry.hash) or not all(is_chunk_id(c) for c, _ in entry.chunks):
            raise ManifestError(f"{entry.path}: hashes must be 64 hex digits")
        if sum(n for _, n in entry.chunks) != entry.size or entry.size < 0:
            raise ManifestError(f"{entry.path}: chunk lengths do not add up to the size")
        return entry


@dataclass
class Manifest:
    files: list[FileEntry] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    meta: dict = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def chunk_ids(self) -> list[str]:
        """Distinct chunk ids, in first-use order."""
        seen: dict[str, None] = {}
        for f in self.files:
            for c, _ in f.chunks:
                seen.setdefault(c, None)
        return list(seen)

    def by_path(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files}

    def to_json(self) -> dict:
        return {"version": VERSION, "created": self.created, "meta": self.meta,
                "files": [f.to_json() for f in self.files]}

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data) -> "Manifest":
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ManifestError("not a version 1 snapshot manifest")
        files = [FileEntry.from_json(f) for f in data.get("files") or []]
        paths = [f.path for f in files]
        if len(set(paths)) != len(paths):
            raise ManifestError("a path is listed twice")
        meta = data.get("meta") or {}
        if not isinstance(meta, dict):
            raise ManifestError("meta must be an object")
        return cls(files=files, created=float(data.get("created") or 0), meta=meta)

    @classmethod
    def loads(cls, raw: bytes | str) -> "Manifest":
        try:
            data = json.loads(raw)
        except ValueError as err:
            raise ManifestError(f"manifest is not JSON: {err}") from err
        return cls.from_json(data)
