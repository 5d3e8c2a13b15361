"""What a workspace snapshot holds and what it leaves out, each left-out path reported.

A snapshot holds regular files, symbolic links (not followed) and folders with nothing
else to hold. By default it leaves out only caches their tools rebuild without asking
anyone (:data:`CACHE_PATTERNS`); a git repository, a virtualenv or ``node_modules`` are
the user's and are kept. Everything left out is listed in :attr:`Excludes.skipped` as a
:class:`Skipped` (path, what it is, size, reason, whether it is a cache), never dropped
silently:

- a path matching a pattern: ``"cache"`` for :data:`CACHE_PATTERNS`, else
  ``"excluded by c.CloudhopMigration.exclude ('<pattern>')"``;
- a regular file larger than ``max_file_bytes``: ``"over the size limit of 10 GiB"``;
- a device, FIFO or socket: ``"not a regular file (a FIFO)"``;
- a link whose relative target leads out of the workspace (it would point elsewhere on
  the target): ``"the link target '../x' leads out of the workspace"``;
- a folder that cannot be read: ``"not readable (Permission denied)"``.

Patterns are shell globs matched against every path component and against the whole
relative path. A folder left out is one entry, with the size of the regular files below
it.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import asdict, dataclass, field
from typing import Iterator

from .manifest import ManifestError, check_link, file_kind

#: caches their tools rebuild by themselves: the default exclusions
CACHE_PATTERNS = (
    "__pycache__", ".ipynb_checkpoints", ".cache", ".pytest_cache", ".mypy_cache", ".ruff_cache",
    ".npm",
    # JupyterLab's layout, which Lab rewrites as the user clicks (a move would race it)
    ".jupyter/lab/workspaces",
    # the running server's own runtime files (its connection files and cookie secret, its
    # kernels' connection files): each server writes its own at start
    ".local/share/jupyter/runtime",
    # IPython's command history (HOME is the workspace on a local node): a kernel opens it
    # as it starts, and a restored copy renamed over the open database leaves that kernel's
    # SQLite unable to write ("attempt to write a readonly database"); each kernel makes its own
    ".ipython/profile_*/history.sqlite*",
)
#: the default of ``c.CloudhopMigration.exclude``
DEFAULT_PATTERNS = CACHE_PATTERNS
#: 10 GiB: larger files are left out, and listed.
DEFAULT_MAX_FILE_BYTES = 10 << 30
#: the setting a pattern that is not a cache comes from, as reasons name it
EXCLUDE_SETTING = "c.CloudhopMigration.exclude"


def human_bytes(n: int) -> str:
    """``n`` bytes in words: ``"1 MiB"``, ``"1.5 GiB"``, ``"700 bytes"``."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class Skipped:
    """One path a snapshot left out. ``kind`` is what it is (``"regular file"``,
    ``"directory"``, ``"symbolic link"``, ``"FIFO"``...), ``size`` its bytes (a folder's:
    the regular files below it; None when unknown), ``cache`` whether its tool rebuilds it
    (nothing of the user's is lost)."""

    path: str
    kind: str
    size: int | None
    reason: str
    cache: bool = False

    def to_json(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class Found:
    """One path a snapshot holds: ``kind`` ``"file"``, ``"link"`` (``link`` its text) or
    ``"dir"`` (a folder nothing else below it is kept for); ``stat`` not followed."""

    path: str
    stat: os.stat_result
    kind: str = "file"
    link: str | None = None


def tree_bytes(path: str) -> int:
    """The bytes of the regular files at or below ``path``, links not followed; folders
    that cannot be read count as empty."""
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size if stat.S_ISREG(st.st_mode) else 0
    total, stack = 0, [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for e in entries:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif e.is_file(follow_symlinks=False):
                        total += e.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total


@dataclass
class Excludes:
    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    #: patterns whose matches are reported as caches (the others as the setting's)
    caches: tuple[str, ...] = CACHE_PATTERNS
    #: filled by :meth:`walk`: every path left out, in walk order
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """:attr:`skipped` as lines, ``"<path>: <reason>"``."""
        return [str(s) for s in self.skipped]

    def matching(self, relpath: str) -> str | None:
        """The first pattern ``relpath`` (or one of its components) matches, or None."""
        parts = relpath.split("/")
        for pat in self.patterns:
            if fnmatch.fnmatchcase(relpath, pat) or any(fnmatch.fnmatchcase(p, pat) for p in parts):
                return pat
        return None

    def excluded(self, relpath: str) -> bool:
        return self.matching(relpath) is not None

    def _skip(self, rel: str, kind: str, size: int | None, reason: str, cache: bool = False) -> None:
        self.skipped.append(Skipped(rel, kind, size, reason, cache))

    def walk(self, root: str | os.PathLike) -> Iterator[Found]:
        """Yield a :class:`Found` for every path to snapshot, in a stable (sorted) order:
        regular files, symbolic links (never followed), and folders none of whose
        entries is kept otherwise (so an empty folder, or one whose files were all left
        out, still exists on the target). Each path left out goes to :attr:`skipped`."""
        root = os.fspath(root)
        self.skipped = []
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            try:
                entries = sorted(os.scandir(os.path.join(root, rel_dir)), key=lambda e: e.name)
            except OSError as err:
                self._skip(rel_dir or ".", "directory", None, f"not readable ({err.strerror})")
                continue
            subdirs, kept = [], 0
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                found = self._look(entry, rel)
                if found == "dir":
                    subdirs.append(rel)
                elif found is not None:
                    yield found
                if found is not None:
                    kept += 1
            if not kept and rel_dir:
                try:
                    yield Found(rel_dir, os.lstat(os.path.join(root, rel_dir)), "dir")
                except OSError as err:
                    self._skip(rel_dir, "directory", None, f"not readable ({err.strerror})")
            stack.extend(reversed(subdirs))

    def _look(self, entry: os.DirEntry, rel: str) -> Found | str | None:
        """What to do with one folder entry: a :class:`Found`, ``"dir"`` (walk into it) or
        None (left out, and listed in :attr:`skipped`)."""
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as err:
            self._skip(rel, "file", None, f"not readable ({err.strerror})")
            return None
        kind = file_kind(st.st_mode)
        pattern = self.matching(rel)
        if pattern is not None:
            cache = pattern in self.caches
            self._skip(rel, kind, tree_bytes(entry.path), "cache" if cache else f"excluded by {EXCLUDE_SETTING} "
                       f"({pattern!r})", cache)
            return None
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(entry.path)
                return Found(rel, st, "link", check_link(rel, target))
            except ManifestError as err:  # "the link target '../x' leads out of the workspace"
                self._skip(rel, kind, st.st_size, str(err).removeprefix(f"{rel}: "))
            except OSError as err:
                self._skip(rel, kind, None, f"not readable ({err.strerror})")
            return None
        if stat.S_ISDIR(st.st_mode):
            return "dir"
        if not stat.S_ISREG(st.st_mode):
            self._skip(rel, kind, None, f"not a regular file (a {kind})")
            return None
        if st.st_size > self.max_file_bytes:
            self._skip(rel, kind, st.st_size, f"over the size limit of {human_bytes(self.max_file_bytes)}")
            return None
        return Found(rel, st)


#: how :func:`summary` names each kind of path
_NOUNS = {"regular file": "file", "directory": "folder", "symbolic link": "link"}


def summary(skipped: list[dict]) -> str:
    """``"2 files and 1 folder (1.2 GiB)"``: what a list of :meth:`Skipped.to_json`
    entries holds, in words; ``""`` for none."""
    counts: dict[str, int] = {}
    for s in skipped:
        noun = _NOUNS.get(s.get("kind"), "other file")
        counts[noun] = counts.get(noun, 0) + 1
    if not counts:
        return ""
    words = [f"{n} {noun}{'' if n == 1 else 's'}" for noun, n in counts.items()]
    text = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return f"{text} ({human_bytes(sum(s.get('size') or 0 for s in skipped))})"
