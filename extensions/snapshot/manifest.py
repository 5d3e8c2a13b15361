"""The snapshot manifest: what a snapshot holds and how to put it back together.

JSON form (``version`` 1)::

    {"version": 1, "created": 1700000000.0, "root": "workspace",
     "files": [{"path": "data/a.csv", "mode": 420, "size": 1234, "hash": "<blake3>",
                "chunks": [["<blake3>", 1234], ...]}, ...],
     "meta": {...}}

Paths are relative, use ``/`` and never contain ``..``: a manifest cannot name a file
outside the directory it is restored into (:func:`check_path`). Every entry is a regular
file: a mode with another file type (device, FIFO, socket, link, directory) is refused,
and only the permission bits (``0o777``) are kept, never setuid, setgid or sticky
(:func:`check_mode`). ``meta`` carries what the writer wants to keep with the snapshot
(the kernels and their variables, for a migration). See docs/security.md.
"""

from __future__ import annotations

import json
import stat
import time
from dataclasses import dataclass, field

from .chunking import is_chunk_id

VERSION = 1


class ManifestError(ValueError):
    """A manifest is malformed, names a path outside its root or holds something other
    than a regular file; the message names the path."""


def check_path(path: str) -> str:
    """Return ``path`` if it is a plain relative POSIX path: not empty, not absolute, no
    ``..``, ``.`` or empty component, no NUL or backslash. Else raise ManifestError naming
    the path and what is wrong with it."""
    if not isinstance(path, str) or not path:
        raise ManifestError(f"bad path {path!r}: a path must be a non-empty string")
    if "\x00" in path or "\\" in path:
        raise ManifestError(f"bad path {path!r}: NUL and backslash are not allowed")
    if path.startswith("/"):
        raise ManifestError(f"bad path {path!r}: it is absolute; manifest paths are relative")
    parts = path.split("/")
    if ".." in parts:
        raise ManifestError(f"bad path {path!r}: a '..' component would leave the workspace")
    if any(p in ("", ".") for p in parts):
        raise ManifestError(f"bad path {path!r}: it has an empty or '.' component")
    return path


#: the mode bits a restore applies: permissions only, never setuid, setgid or sticky
PERMISSION_BITS = 0o777
_KINDS = {
    stat.S_IFREG: "regular file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symbolic link",
    stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFIFO: "FIFO",
    stat.S_IFSOCK: "socket",
}


def file_kind(mode: int) -> str:
    """What kind of file ``mode`` (a ``st_mode``) describes, in words; a mode without
    file type bits (as manifests record it) is a regular file."""
    kind = stat.S_IFMT(mode)
    return "regular file" if kind == 0 else _KINDS.get(kind, f"file of type {kind:#o}")


def check_mode(path: str, mode) -> int:
    """The permission bits (:data:`PERMISSION_BITS`) of a manifest entry's ``mode``.

    Raises ManifestError naming ``path`` for a mode that is not a whole number of 16 bits or
    that describes anything but a regular file (a device, FIFO or socket could never be
    restored safely). Setuid, setgid and sticky bits are dropped, not refused."""
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o177777:
        raise ManifestError(f"{path}: bad mode {mode!r}")
    kind = file_kind(mode)
    if kind != "regular file":
        raise ManifestError(f"{path}: a {kind} cannot be restored; a snapshot holds regular files only")
    return mode & PERMISSION_BITS


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
            path = check_path(data["path"])
            entry = cls(
                path=path, mode=check_mode(path, data["mode"]),
                size=int(data["size"]), hash=str(data["hash"]),
                chunks=[(str(c), int(n)) for c, n in data["chunks"]],
            )
        except (KeyError, TypeError, ValueError, OverflowError) as err:  # OverflowError: int(inf)
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
        if not isinstance(data.get("files") or [], list):
            raise ManifestError("files must be a list")
        files = [FileEntry.from_json(f) for f in data.get("files") or []]
        paths = [f.path for f in files]
        if len(set(paths)) != len(paths):
            raise ManifestError("a path is listed twice")
        meta = data.get("meta") or {}
        if not isinstance(meta, dict):
            raise ManifestError("meta must be an object")
        created = data.get("created") or 0
        if not isinstance(created, (int, float)) or isinstance(created, bool):
            raise ManifestError(f"created must be a number, not {type(created).__name__}")
        return cls(files=files, created=float(created), meta=meta)

    @classmethod
    def loads(cls, raw: bytes | str) -> "Manifest":
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as err:  # RecursionError: nested too deep
            raise ManifestError(f"manifest is not JSON: {err}") from err
        return cls.from_json(data)
