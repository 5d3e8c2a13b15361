"""Where the local provider keeps workspaces, and who may enter them.

A server's workspace is ``<region root>/<user>/<server>``. When servers run as the
users' own system accounts (:mod:`.accounts`), :func:`prepare` makes the region root
(and the workspaces root above it) mode 0711, owned by the hub: users can pass through
to their own folder but not list who else has one. ``<user>`` and ``<user>/<server>``
belong to the user's account with mode 0700. A workspace made before, when servers ran
as the hub's user, is given to the account on its next spawn (its files included).

Every step inside a user's folder works on open directory descriptors opened with
``O_NOFOLLOW``: the folder belongs to the user, whose other servers may swap a link in
while the hub (root) changes owners, and a link followed there would hand a system file
to the user. A file with more than one hard link is never given away, for the same
reason.

``cloudhop up``'s layout (:func:`cloudhop_up_settings`): the workspaces root is inside
the data folder when the hub is not root (one OS user for everything, as before). A root
hub's data folder is 0700, so no account could reach a workspace there: its workspaces
live in ``/var/lib/cloudhop/workspaces/<hub id>`` instead, while node records and logs
stay in the data folder, and workspaces left in the data folder by an older version are
moved on their next spawn.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from .accounts import Account
from .base import ProviderError

#: a root hub's workspaces, one folder per hub id, when `cloudhop up` chooses
ROOT_HUB_WORKSPACES = "/var/lib/cloudhop/workspaces"
#: folders users pass through but cannot list
PASS_THROUGH = 0o711
#: a user's own folders
PRIVATE = 0o700


class WorkspaceError(ProviderError):
    """A workspace cannot be made private to its user (a link in its place, ...)."""

    reason = "workspace"
    status_code = 500


def cloudhop_up_settings(data_dir: Path, hub_id: str, as_root: bool | None = None) -> dict:
    """``c.LocalProvider`` settings of `cloudhop up` for data folder ``data_dir``."""
    inside = Path(data_dir) / "workspaces"
    if not (os.geteuid() == 0 if as_root is None else as_root):
        return {"default_root": str(inside)}
    return {"default_root": f"{ROOT_HUB_WORKSPACES}/{hub_id}", "state_dir": str(inside / ".nodes"),
            "former_root": str(inside)}


def prepare(workspace: Path, account: Account | None, *, pass_through: list[Path] = (),
            former: Path | None = None, log=None) -> Path:
    """Make ``workspace`` (``<region root>/<user>/<server>``) ready for a server.

    ``former``: where this workspace was kept before; it is moved here when it exists and
    the workspace does not. Without ``account`` (servers run as the hub's user) the
    folders are just made. With it, the folders in ``pass_through`` and the region root
    are made 0711 (when the hub owns them), and the user's folder and the workspace are
    made the account's, mode 0700, with everything in a workspace another user owned."""
    if (former is not None and former != workspace and former.is_dir() and not former.is_symlink()
            and not os.path.lexists(workspace)):
        workspace.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(former), str(workspace))
        if log is not None:
            log.info("local: moved workspace %s to %s", former, workspace)
    if account is None:
        workspace.mkdir(parents=True, exist_ok=True)
        return workspace
    region_root = workspace.parent.parent
    region_root.mkdir(parents=True, exist_ok=True)
    for folder in (*pass_through, region_root):
        _pass_through(Path(folder), log)
    fd = _private_dir(os.open(region_root, os.O_RDONLY | os.O_DIRECTORY), workspace.parent.name, account, log)
    os.close(_private_dir(fd, workspace.name, account, log))
    return workspace


def _pass_through(folder: Path, log) -> None:
    st = folder.stat()
    if st.st_uid == os.geteuid():
        if stat.S_IMODE(st.st_mode) != PASS_THROUGH:
            folder.chmod(PASS_THROUGH)
    elif st.st_mode & 0o044 and log is not None:
        log.warning("local: users can list %s (mode %o, not the hub's to change), and so see "
                    "each other's workspace names", folder, stat.S_IMODE(st.st_mode))


def _private_dir(parent_fd: int, name: str, account: Account, log) -> int:
    """Open (making it if needed) folder ``name`` in ``parent_fd`` without following a
    link, make it the account's with mode 0700 and return its descriptor. Closes
    ``parent_fd``."""
    try:
        try:
            os.mkdir(name, PRIVATE, dir_fd=parent_fd)
            made = True
        except FileExistsError:
            made = False
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
        except OSError as err:
            raise WorkspaceError(f"workspace folder {name!r} is not a folder (a link or a file is in "
                                 f"its place): {err.strerror}") from None
    finally:
        os.close(parent_fd)
    st = os.fstat(fd)
    if st.st_uid not in (account.uid, os.geteuid()):
        os.close(fd)
        # two hub names may map to one folder name; a folder is never taken from its account
        raise WorkspaceError(f"workspace folder {name!r} belongs to another system account (uid "
                             f"{st.st_uid}), not {account.name}; it is left as it is")
    if (st.st_uid, st.st_gid) != (account.uid, account.gid):
        if st.st_uid != account.uid and not made:
            _give_contents(fd, account, log)
        os.fchown(fd, account.uid, account.gid)
    if stat.S_IMODE(st.st_mode) != PRIVATE:
        os.fchmod(fd, PRIVATE)
    return fd


def _give_contents(fd: int, account: Account, log) -> None:
    """Give everything inside the folder open at ``fd`` to ``account`` (a workspace made
    when servers ran as the hub's user), never through a link, never a file with another
    hard link."""
    kept = 0
    for _path, dirs, files, dir_fd in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
        for name in (*dirs, *files):
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if st.st_uid == account.uid:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                    kept += 1
                    continue
                os.chown(name, account.uid, account.gid, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
    if log is not None:
        log.info("local: gave an older workspace to %s%s", account.name,
                 f" ({kept} hard-linked file(s) left to their owner)" if kept else "")


def unreachable(path: Path, account: Account) -> str | None:
    """Why ``account`` cannot reach ``path`` (a folder on the way it may not search, with
    its mode), or None when it can."""
    folder = Path("/")
    for part in Path(path).parts[1:]:
        try:
            st = folder.stat()
        except OSError as err:
            return f"{folder}: {err.strerror}"
        if st.st_uid == account.uid:
            bit = 0o100
        elif st.st_gid in account.groups:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return (f"{folder} has mode {stat.S_IMODE(st.st_mode):o} (owner uid {st.st_uid}), "
                    "which it may not pass through")
        folder = folder / part
    return None
