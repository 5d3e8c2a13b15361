"""Take a snapshot of a directory into the store, and restore one from it.

``take_snapshot`` chunks every file (see :mod:`.chunking`), asks the store which chunks
it lacks, uploads only those and stores the manifest. ``restore_snapshot`` downloads
the chunks a destination lacks, writes each file to a temporary name beside its final
place, checks the file's BLAKE3 by reading it back, and only then renames it into place:
a reader never sees a half-written file, and a failed restore leaves no partial file.
A snapshot also holds symbolic links (as links, never followed) and folders with nothing
else kept in them (:mod:`.excludes`); a restore makes them after every file is in place.
A restore writes with permission bits only, and never through a symbolic link in the
destination, its own included (:mod:`.confined`); see docs/security.md.
"""

from __future__ import annotations

import logging
import mmap
import os
import re
import secrets
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable

import blake3

from .chunking import Chunker, hash_bytes
from .client import StoreClient, StoreError
from .confined import Confined, RestoreError, UnsafePath
from .excludes import Excludes, Skipped
from .manifest import FileEntry, Manifest, check_entry, check_link, check_path, check_tree, link_hash

log = logging.getLogger(__name__)


class SnapshotError(RuntimeError):
    """A file changed while it was being snapshotted."""


class ChunkError(StoreError, RestoreError):
    """A restore's chunk was missing or corrupt in the store; the message names the files
    it belongs to (a StoreError and a RestoreError alike, for callers that catch either)."""


@dataclass
class SnapshotStats:
    files: int = 0
    chunks: int = 0
    bytes_total: int = 0
    chunks_sent: int = 0
    #: chunk bytes uploaded plus the manifest
    bytes_sent: int = 0
    #: every workspace path left out (:class:`~.excludes.Skipped`)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """:attr:`skipped` as lines, ``"<path>: <reason>"``."""
        return [str(s) for s in self.skipped]


def fd_hash(fd: int) -> str:
    """The BLAKE3 (hex) of the open file ``fd``, hashed in parallel from a memory map."""
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    size = os.fstat(fd).st_size
    if size:
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as view:
            h.update(view)
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
    sources = [(found, os.path.join(os.fspath(root), found.path)) for found in excludes.walk(root)]
    stats.skipped = list(excludes.skipped)
    for prefix, directory in (extra or {}).items():
        for found in Excludes(patterns=(), max_file_bytes=1 << 62).walk(directory):
            sources.append((replace(found, path=f"{prefix.strip('/')}/{found.path}"),
                            os.path.join(directory, found.path)))

    where: dict[str, tuple[str, int, int]] = {}
    #: each source file's path as the user knows it (the manifest's), for error messages
    shown = {path: found.path for found, path in sources}
    manifest = Manifest(meta=dict(meta or {}))
    for found, path in sources:
        rel, mode = check_path(found.path), found.stat.st_mode & 0o7777
        if found.kind == "link":
            manifest.files.append(FileEntry.symlink(rel, found.link))
            continue
        if found.kind == "dir":
            manifest.files.append(FileEntry.folder(rel, mode))
            continue
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
            raise SnapshotError(f"{shown.get(path, os.path.basename(path))} changed while it was being "
                                "snapshotted; try again")
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


@dataclass(frozen=True)
class Place:
    """Where a restore puts one manifest file: ``path`` (a manifest-style relative path)
    below the directory ``root``. Nothing is ever written outside ``root`` or through a
    link below it (:class:`~.confined.Confined`)."""

    root: str
    path: str


def restore_snapshot(
    manifest: Manifest,
    client: StoreClient,
    dest_for: Callable[[str], Place | None],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, str]:
    """Restore the files of ``manifest``; ``dest_for(path)`` gives each file's
    :class:`Place` (``None`` skips it). Returns ``{path: blake3}`` as read back from disk.

    The one restore every caller uses; what it guarantees (docs/security.md):

    - it writes regular files only, with permission bits only (``mode & 0o777``): an entry
      that is a device, FIFO, socket, link or directory fails the restore before anything
      is written (ManifestError naming the path and its type);
    - it never follows a link below a place's root: a link (or a non-directory) on the way
      to a file, or a link or non-regular file where the file goes, fails the restore
      (:class:`~.confined.UnsafePath`-based RestoreError: "<path>: refused: <why>"), also
      when it appears while the restore runs;
    - a failure removes this restore's temporary files; files already put in place stay.

    A destination file that already has the right content is left as it is (its mode set).

    Link and folder entries (:func:`~.manifest.check_entry`) are made after every file is
    in place, folders first: a link is made in its folder with ``symlinkat`` and renamed
    over what is there (a regular file or a link; anything else fails the restore), its
    text read back and checked; no entry may lie below a link
    (:func:`~.manifest.check_tree`), so nothing is ever written through one. The result
    maps a link to the BLAKE3 of its text and a folder to that of nothing."""
    check_tree(manifest.files)
    wanted: list[tuple[FileEntry, int, Place]] = []
    others: list[tuple[FileEntry, int, Place]] = []
    for entry in manifest.files:
        mode = check_entry(entry)
        place = dest_for(entry.path)
        if place is None:
            continue
        if not isinstance(place, Place):
            raise TypeError(f"dest_for must return a Place or None, not {type(place).__name__}")
        if entry.kind == "link":
            check_link(place.path, entry.link)
        (wanted if entry.kind == "file" else others).append((entry, mode, place))
    others.sort(key=lambda item: item[0].kind != "dir")

    roots: dict[str, Confined] = {}
    plan: list[tuple[FileEntry, int, Confined, str, str]] = []  # (entry, mode, root, final, temp)
    done: dict[str, str] = {}
    try:
        for entry, mode, place in wanted:
            if place.root not in roots:
                roots[place.root] = Confined(place.root)
            tree = roots[place.root]
            with _refusing(entry.path):
                if _holds(tree, place.path, entry, mode):
                    done[entry.path] = entry.hash
                    continue
                head, slash, name = place.path.rpartition("/")
                temp = f"{head}{slash}.{name}.cloudhop-{secrets.token_hex(4)}"
                fd = tree.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, create_dirs=True)
                try:
                    plan.append((entry, mode, tree, place.path, temp))
                    os.ftruncate(fd, entry.size)
                finally:
                    os.close(fd)

        places: dict[str, list[tuple[FileEntry, Confined, str, int]]] = {}
        for entry, _, tree, _, temp in plan:
            offset = 0
            for cid, length in entry.chunks:
                places.setdefault(cid, []).append((entry, tree, temp, offset))
                offset += length
        total = sum(e.size for e, *_ in plan)
        got = 0
        received: set[str] = set()

        def on_chunk(cid: str, data) -> None:
            nonlocal got
            received.add(cid)
            for entry, tree, temp, offset in places[cid]:
                with _refusing(entry.path):
                    fd = tree.open(temp, os.O_WRONLY)
                try:
                    os.pwrite(fd, data, offset)
                finally:
                    os.close(fd)
            got += len(data) * len(places[cid])
            if progress:
                progress(got, total)

        try:
            client.download(list(places), on_chunk)
        except StoreError as err:  # a chunk missing or corrupt in the store: name its file
            raise ChunkError(_chunk_failure(err, places, received), err.status) from None
        for entry, mode, tree, final, temp in plan:
            with _refusing(entry.path):
                fd = tree.open(temp, os.O_RDONLY)
                try:
                    digest = fd_hash(fd)
                    if digest != entry.hash:
                        raise RestoreError(f"{entry.path}: restored content does not match its checksum")
                    os.fchmod(fd, mode)
                finally:
                    os.close(fd)
                tree.replace(temp, final)
            done[entry.path] = digest
        for entry, mode, place in others:
            if place.root not in roots:
                roots[place.root] = Confined(place.root)
            done[entry.path] = _make(roots[place.root], place.path, entry, mode)
    finally:
        for _, _, tree, _, temp in plan:
            try:
                tree.unlink(temp)
            except (OSError, RestoreError):
                pass  # already renamed into place, or out of reach behind a link
        for tree in roots.values():
            tree.close()
    return done


def _chunk_failure(err: StoreError, places: dict, received: set[str]) -> str:
    """The message of a restore whose chunk download failed with ``err``: the files the
    failed chunk belongs to (the one ``err`` names, else those not received yet). No file
    of the restore was put in place yet: each lies in a temporary file until all are in."""
    named = re.search(r"\b([0-9a-f]{12,64})", str(err))
    cids = [c for c in places if named and c.startswith(named.group(1))] or [c for c in places if c not in received]
    paths = sorted({entry.path for cid in cids for entry, *_ in places[cid]})
    shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return f"{shown}: could not be restored ({err}); nothing of this restore was written"


def _holds(tree: Confined, path: str, entry: FileEntry, mode: int) -> bool:
    """Whether ``path`` already is a regular file with ``entry``'s content (then its mode
    is set to ``mode``); raises UnsafePath when a link or other file is in the way. A file
    with other hard links is never taken as it is (its mode would change for every name it
    has, maybe outside the root): it is replaced like a file with other content."""
    st = tree.existing(path)
    if st is None or st.st_size != entry.size or st.st_nlink != 1:
        return False
    fd = tree.open(path, os.O_RDONLY)
    try:
        if fd_hash(fd) != entry.hash:
            return False
        os.fchmod(fd, mode)
        return True
    finally:
        os.close(fd)


def _make(tree: Confined, path: str, entry: FileEntry, mode: int) -> str:
    """Make the link or folder ``entry`` at ``path``; returns its hash as made."""
    with _refusing(entry.path):
        if entry.kind == "dir":
            tree.mkdir(path, mode)
            return entry.hash
        tree.symlink(entry.link, path)
        digest = link_hash(tree.readlink(path))
    if digest != entry.hash:
        raise RestoreError(f"{entry.path}: the restored link does not match its checksum")
    return digest


@contextmanager
def _refusing(path: str):
    """Name the manifest ``path`` in an UnsafePath raised inside."""
    try:
        yield
    except UnsafePath as err:
        raise RestoreError(f"{path}: refused: {err}") from None


def workspace_dest(root: str, skip_prefix: str | None = None) -> Callable[[str], Place | None]:
    """``dest_for`` that puts manifest paths below ``root`` (skipping ``skip_prefix``)."""
    root = os.path.abspath(root)
    skip = skip_prefix.rstrip("/") if skip_prefix else None

    def dest(path: str) -> Place | None:
        if skip and (path == skip or path.startswith(skip + "/")):
            return None
        return Place(root, check_path(path))

    return dest
