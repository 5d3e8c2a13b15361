"""The snapshot manifest: what a snapshot holds and how to put it back together.

JSON form (``version`` 1)::

    {"version": 1, "created": 1700000000.0, "root": "workspace",
     "files": [{"path": "data/a.csv", "mode": 420, "size": 1234, "hash": "<blake3>",
                "chunks": [["<blake3>", 1234], ...]},
               {"path": ".venv/bin/python", "kind": "link", "link": "/usr/bin/python3",
                "mode": 41471, "size": 0, "hash": "<blake3 of the link text>", "chunks": []},
               {"path": ".git/refs/tags", "kind": "dir", "mode": 16877, "size": 0,
                "hash": "<blake3 of nothing>", "chunks": []}, ...],
     "meta": {...}}

Paths are relative, use ``/`` and never contain ``..``: a manifest cannot name a file
outside the directory it is restored into (:func:`check_path`). An entry is a regular
file unless its ``kind`` says otherwise (:func:`check_entry`):

- a regular file's mode is permission bits only: a mode with a file type (device, FIFO,
  socket, link, directory) is refused, and only the permission bits (``0o777``) are kept,
  never setuid, setgid or sticky (:func:`check_mode`);
- ``"kind": "link"`` is a symbolic link to ``link``: an absolute path, or a relative one
  that stays inside the root (:func:`check_link`); no entry may lie below a link
  (:func:`check_tree`), so a restore never has to write through one;
- ``"kind": "dir"`` is a folder the writer found with nothing else in it (a folder
  holding files is made for them anyway).

A link's or folder's mode carries its file type bits as well, so a reader that knows
regular files only refuses the entry instead of writing a file there. Their ``hash`` is
the BLAKE3 of the link's text, or of nothing, so a restore report lists them like files.
``meta`` carries what the writer wants to keep with the snapshot (the kernels and their
variables, for a migration). See docs/security.md.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass, field

from .chunking import hash_bytes, is_chunk_id

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


#: the kinds of entry besides regular files, and the file type bits their mode carries
KIND_TYPES = {"dir": stat.S_IFDIR, "link": stat.S_IFLNK}
#: the longest link text kept (Linux's PATH_MAX, less its NUL)
MAX_LINK_BYTES = 4095


def check_link(path: str, target) -> str:
    """Return ``target`` if a symbolic link at ``path`` may point there: an absolute path
    (a system file, ``/usr/bin/python3``), or a relative one that stays inside the root
    when its ``..`` are counted from the link's folder (``../lib/x.js`` in ``a/b``). Else
    raise ManifestError naming ``path``. The count is by name only (a link on the way could
    lead elsewhere); what guards a restore is that it never writes through a link."""
    if not isinstance(target, str) or not target:
        raise ManifestError(f"{path}: a link target must be a non-empty string")
    try:
        raw = os.fsencode(target)
    except UnicodeError:
        raise ManifestError(f"{path}: the link target is not a file name") from None
    if b"\x00" in raw or len(raw) > MAX_LINK_BYTES:
        raise ManifestError(f"{path}: the link target has a NUL or is over {MAX_LINK_BYTES} bytes")
    if target.startswith("/"):
        return target
    depth = path.count("/")
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise ManifestError(f"{path}: the link target {target!r} leads out of the workspace")
        elif part not in ("", "."):
            depth += 1
    return target


def link_hash(target: str) -> str:
    """The ``hash`` of a link entry: the BLAKE3 of its text."""
    return hash_bytes(os.fsencode(target))


#: the ``hash`` of a folder entry: the BLAKE3 of nothing
DIR_HASH = hash_bytes(b"")


def check_entry(entry: "FileEntry") -> int:
    """The permission bits a restore gives ``entry``; raises ManifestError naming its path
    for a kind it does not know, a mode whose file type does not match the kind (a regular
    file's: :func:`check_mode`), a link target :func:`check_link` refuses, or content, or a
    hash other than :func:`link_hash` / :data:`DIR_HASH`, in a link or folder."""
    if entry.kind == "file":
        if entry.link is not None:
            raise ManifestError(f"{entry.path}: only a link entry has a link target")
        return check_mode(entry.path, entry.mode)
    if entry.kind not in KIND_TYPES:
        raise ManifestError(f"{entry.path}: unknown entry kind {entry.kind!r}")
    mode, wanted = entry.mode, KIND_TYPES[entry.kind]
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o177777 \
            or stat.S_IFMT(mode) != wanted:
        raise ManifestError(f"{entry.path}: a {entry.kind} entry needs the mode of a {file_kind(wanted)}, "
                            f"not {mode!r}")
    if entry.size or entry.chunks:
        raise ManifestError(f"{entry.path}: a {entry.kind} entry has no content")
    if entry.kind == "link":
        check_link(entry.path, entry.link)
    elif entry.link is not None:
        raise ManifestError(f"{entry.path}: only a link entry has a link target")
    if entry.hash != (link_hash(entry.link) if entry.kind == "link" else DIR_HASH):
        raise ManifestError(f"{entry.path}: the hash of a {entry.kind} entry does not match it")
    return mode & PERMISSION_BITS


def check_tree(entries) -> None:
    """Refuse (ManifestError naming the path) an entry below a link entry: a restore
    would have to write through the link to put it there."""
    links = {e.path for e in entries if e.kind == "link"}
    if not links:
        return
    for e in entries:
        parts = e.path.split("/")
        for i in range(1, len(parts)):
            above = "/".join(parts[:i])
            if above in links:
                raise ManifestError(f"{e.path}: it lies below the link {above!r}; a restore never "
                                    "writes through a link")


@dataclass
class FileEntry:
    """One manifest entry: a regular file (``kind`` ``"file"``), a symbolic link to
    ``link`` (``"link"``) or an otherwise empty folder (``"dir"``)."""

    path: str
    mode: int
    size: int
    hash: str
    #: ``(chunk_id, length)`` in file order
    chunks: list[tuple[str, int]] = field(default_factory=list)
    kind: str = "file"
    link: str | None = None

    @classmethod
    def symlink(cls, path: str, target: str) -> "FileEntry":
        return cls(path, stat.S_IFLNK | 0o777, 0, link_hash(target), [], kind="link", link=target)

    @classmethod
    def folder(cls, path: str, mode: int) -> "FileEntry":
        return cls(path, stat.S_IFDIR | (mode & 0o7777), 0, DIR_HASH, [], kind="dir")

    def to_json(self) -> dict:
        data = {"path": self.path, "mode": self.mode, "size": self.size, "hash": self.hash,
                "chunks": [[c, n] for c, n in self.chunks]}
        if self.kind != "file":
            data["kind"] = self.kind
        if self.link is not None:
            data["link"] = self.link
        return data

    @classmethod
    def from_json(cls, data: dict) -> "FileEntry":
        try:
            path = check_path(data["path"])
            kind = data.get("kind", "file")
            mode = data["mode"]
            entry = cls(
                path=path, mode=check_mode(path, mode) if kind == "file" else mode,
                size=int(data["size"]), hash=str(data["hash"]),
                chunks=[(str(c), int(n)) for c, n in data["chunks"]],
                kind=kind if isinstance(kind, str) else repr(kind), link=data.get("link"),
            )
            check_entry(entry)
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
        check_tree(files)
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
