"""Files below a root directory, reached without ever following a symbolic link.

A restore writes into a directory that may already hold things it did not make. A link
there (``data -> /etc``, ``data -> ../other-user``) must never be written through, or a
manifest naming ``data/x`` would write outside the workspace. :class:`Confined` reaches
every path by walking from an open descriptor of its root, one component at a time, with
``openat(..., O_NOFOLLOW)``; every operation walks again, so a link swapped in between one
operation and the next is refused as well, and an operation already under way keeps
writing into the directory it opened, never into the link's target.

Links a restore makes itself (:meth:`Confined.symlink`) are made with ``symlinkat`` in a
folder reached the same way, under a temporary name renamed into place: making a link
never writes through one, and never replaces anything but a regular file or a link.

Refusals raise :class:`UnsafePath`, whose message names the component and what it is
("'data' is a symbolic link in the target"). The root itself is trusted (a server's own
root directory, which may itself be a link); everything below it is not. Needs ``dir_fd``
support (Linux, the BSDs, macOS). See docs/security.md.
"""

from __future__ import annotations

import os
import secrets
import stat
from contextlib import contextmanager
from typing import Iterator

from .manifest import check_path, file_kind


class RestoreError(RuntimeError):
    """A restore was refused or a restored file did not match its manifest; the message
    names the path and why."""


class UnsafePath(RestoreError):
    """A path below the root is not safe to write: a link, or something other than a
    directory on the way or other than a regular file at the end."""


#: a directory on the way: never a link, never blocks (a FIFO in its place fails at once)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
#: added to every file open
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class Confined:
    """One root directory (made if missing) and the files below it.

    Paths are manifest-style (``a/b/c``, checked by
    :func:`~.manifest.check_path`). Use as a context manager, or call :meth:`close`."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.path.abspath(os.fspath(root))
        os.makedirs(self.root, exist_ok=True)
        self._fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "Confined":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def parent(self, path: str, *, create: bool = False) -> Iterator[tuple[int, str]]:
        """Yield ``(dir_fd, name)``: the open directory that holds ``path`` and its last
        component. Directories on the way are made when ``create`` (else a missing one
        raises FileNotFoundError); a link or non-directory on the way raises UnsafePath."""
        parts = check_path(path).split("/")
        opened: list[int] = []
        try:
            here = self._fd
            for i, part in enumerate(parts[:-1]):
                if create:
                    try:
                        os.mkdir(part, 0o777, dir_fd=here)
                    except FileExistsError:
                        pass  # a link or a file there is refused by the open below
                try:
                    here = os.open(part, _DIR_FLAGS, dir_fd=here)
                except OSError as err:
                    raise self._refusal(here, parts[:i + 1], err, stat.S_IFDIR) from None
                opened.append(here)
            yield here, parts[-1]
        finally:
            for fd in opened:
                os.close(fd)

    def existing(self, path: str) -> os.stat_result | None:
        """The stat of the regular file at ``path``, or None when nothing is there;
        anything else there (a link, a directory, a FIFO...) raises UnsafePath."""
        try:
            with self.parent(path) as (dir_fd, name):
                return _regular_or_none(dir_fd, name, path)
        except FileNotFoundError:
            return None

    def open(self, path: str, flags: int, mode: int = 0o600, *, create_dirs: bool = False) -> int:
        """Open the regular file at ``path`` (``os.open`` flags; never through a link,
        never a FIFO or device) and return its descriptor; the caller closes it."""
        with self.parent(path, create=create_dirs) as (dir_fd, name):
            try:
                fd = os.open(name, flags | _FILE_FLAGS, mode, dir_fd=dir_fd)
            except OSError as err:
                raise self._refusal(dir_fd, path.split("/"), err, stat.S_IFREG) from None
        refusal = _unsafe(path, os.fstat(fd).st_mode, stat.S_IFREG)
        if refusal:
            os.close(fd)
            raise refusal
        return fd

    def replace(self, temp: str, path: str) -> None:
        """Rename ``temp`` over ``path`` (both in the same directory); a link or anything
        but a regular file now at ``path`` is refused, not replaced."""
        if temp.rpartition("/")[0] != path.rpartition("/")[0]:
            raise ValueError(f"{temp!r} and {path!r} are not in the same directory")
        with self.parent(path) as (dir_fd, name):
            _regular_or_none(dir_fd, name, path)
            os.replace(temp.rpartition("/")[2], name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def unlink(self, path: str) -> None:
        """Remove the file at ``path`` (a link on the way raises UnsafePath)."""
        with self.parent(path) as (dir_fd, name):
            os.unlink(name, dir_fd=dir_fd)

    def mkdir(self, path: str, mode: int) -> None:
        """Make the folder ``path`` (and those on the way) if missing and set its permission
        bits to ``mode``; a link or anything but a folder there raises UnsafePath."""
        with self.parent(path, create=True) as (dir_fd, name):
            try:
                os.mkdir(name, 0o700, dir_fd=dir_fd)
            except FileExistsError:
                pass  # a link or a file there is refused by the open below
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
            except OSError as err:
                raise self._refusal(dir_fd, path.split("/"), err, stat.S_IFDIR) from None
            try:
                os.fchmod(fd, mode)
            finally:
                os.close(fd)

    def symlink(self, target: str, path: str) -> None:
        """Make ``path`` a symbolic link to ``target``. The folders on the way are made
        (never through a link); a regular file or link already at ``path`` is replaced
        (renamed over: nothing is written through it), anything else there is refused."""
        with self.parent(path, create=True) as (dir_fd, name):
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None:
                if stat.S_ISLNK(st.st_mode) and os.readlink(name, dir_fd=dir_fd) == target:
                    return
                if not (stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode)):
                    raise UnsafePath(f"{path!r} is a {file_kind(st.st_mode)} in the target, "
                                     "not a symbolic link or a regular file")
            temp = f".{name}.cloudhop-{secrets.token_hex(4)}"
            os.symlink(target, temp, dir_fd=dir_fd)
            try:
                os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except OSError:
                os.unlink(temp, dir_fd=dir_fd)
                raise

    def readlink(self, path: str) -> str:
        """The text of the symbolic link at ``path`` (OSError when it is not one)."""
        with self.parent(path) as (dir_fd, name):
            return os.readlink(name, dir_fd=dir_fd)

    @staticmethod
    def _refusal(dir_fd: int, parts: list[str], err: OSError, wanted: int) -> OSError:
        """The error for failing to open ``parts`` (the last one, in ``dir_fd``) as a file
        of type ``wanted`` (``stat.S_IFDIR``...): UnsafePath naming what is there instead,
        or ``err`` itself when the right kind of file (or nothing) is there."""
        try:
            st = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return err
        return _unsafe("/".join(parts), st.st_mode, wanted) or err


def _unsafe(where: str, mode: int, wanted: int) -> UnsafePath | None:
    """The refusal for finding a file of ``mode`` at ``where`` when one of type ``wanted``
    (``stat.S_IFDIR``, ``stat.S_IFREG``) is needed; None when it is of that type."""
    if stat.S_ISLNK(mode):
        return UnsafePath(f"{where!r} is a symbolic link in the target; a restore never writes through one")
    if stat.S_IFMT(mode) == wanted:
        return None
    return UnsafePath(f"{where!r} is a {file_kind(mode)} in the target, not a {file_kind(wanted)}")


def _regular_or_none(dir_fd: int, name: str, where: str) -> os.stat_result | None:
    """The stat of ``name`` in ``dir_fd`` (not followed) when it is a regular file, None
    when nothing is there; anything else raises UnsafePath naming ``where``."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    refusal = _unsafe(where, st.st_mode, stat.S_IFREG)
    if refusal:
        raise refusal
    return st
