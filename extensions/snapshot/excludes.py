"""Which files a workspace snapshot leaves out.

Defaults skip caches and editor/Jupyter leftovers that the target rebuilds itself;
files larger than ``max_file_bytes``, symbolic links, devices, FIFOs and sockets are left
out too, each reported as a warning, never dropped silently (a restore writes regular
files only). Patterns are shell globs matched against every path component and against
the whole relative path.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass, field
from typing import Iterator

from .manifest import file_kind

DEFAULT_PATTERNS = (
    ".ipynb_checkpoints", "__pycache__", "*.pyc", ".cache", ".pytest_cache", ".mypy_cache",
    ".ruff_cache", ".git", ".venv", "venv", "node_modules", ".Trash-*", ".local",
    ".jupyter", ".ipython", ".npm", ".conda",
)
#: 10 GiB: larger files are left out with a warning.
DEFAULT_MAX_FILE_BYTES = 10 << 30


@dataclass
class Excludes:
    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    #: filled by :meth:`walk`: one line per file left out for its size or type
    warnings: list[str] = field(default_factory=list)

    def excluded(self, relpath: str) -> bool:
        parts = relpath.split("/")
        for pat in self.patterns:
            if fnmatch.fnmatchcase(relpath, pat) or any(fnmatch.fnmatchcase(p, pat) for p in parts):
                return True
        return False

    def walk(self, root: str | os.PathLike) -> Iterator[tuple[str, os.stat_result]]:
        """Yield ``(relative posix path, stat)`` for every regular file to snapshot,
        in a stable (sorted) order. Symlinks are not followed (and not kept); devices,
        FIFOs and sockets are left out; each one left out is listed in :attr:`warnings`."""
        root = os.fspath(root)
        self.warnings = []
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            try:
                entries = sorted(os.scandir(os.path.join(root, rel_dir)), key=lambda e: e.name)
            except OSError as err:
                self.warnings.append(f"{rel_dir or '.'}: not readable ({err.strerror})")
                continue
            subdirs = []
            for entry in entries:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if self.excluded(rel):
                    continue
                if entry.is_symlink():
                    self.warnings.append(f"{rel}: symbolic link left out")
                    continue
                if entry.is_dir():
                    subdirs.append(rel)
                    continue
                st = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    self.warnings.append(f"{rel}: {file_kind(st.st_mode)} left out (a snapshot holds "
                                         "regular files only)")
                    continue
                if st.st_size > self.max_file_bytes:
                    self.warnings.append(
                        f"{rel}: {st.st_size} bytes is over the {self.max_file_bytes}-byte "
                        "limit; left out"
                    )
                    continue
                yield rel, st
            stack.extend(reversed(subdirs))
