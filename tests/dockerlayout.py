"""A Dockerfile's stages laid out on disk without Docker, for tests/test_images.py.

Docker is not needed to check what an image's build sees: :func:`stages` reads a
Dockerfile's stages (``FROM``, ``WORKDIR``, ``COPY``, ``RUN``), :class:`DockerIgnore`
applies ``.dockerignore`` as Docker does, and :func:`lay_out` copies exactly what a
stage's ``COPY`` lines copy, from the build context or from an earlier stage's folder,
to where they put it under a folder standing for the stage's ``/``. ``RUN`` lines are
not run; the caller stands in for their output.

Only the ``COPY`` forms the images use are understood (sources and a destination, the
JSON form, ``--from``, ``--chown``, ``--chmod``, ``--link``); any other flag, an ``ADD``,
a source outside the context, or one the context lacks (or ``.dockerignore`` leaves out)
raises :class:`LayoutError`, as ``docker build`` would fail.
"""

from __future__ import annotations

import json
import posixpath
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

_IGNORED_FLAGS = ("--chown=", "--chmod=", "--link")


class LayoutError(ValueError):
    pass


@dataclass
class Copy:
    sources: list[str]
    dest: str  #: absolute, after the stage's WORKDIR
    from_stage: str | None


@dataclass
class Stage:
    base: str
    name: str | None
    steps: list[tuple[str, object]] = field(default_factory=list)  #: ("COPY", Copy), ("RUN", str), ("WORKDIR", str)

    @property
    def copies(self) -> list[Copy]:
        return [s for kind, s in self.steps if kind == "COPY"]

    @property
    def runs(self) -> list[str]:
        return [s for kind, s in self.steps if kind == "RUN"]

    @property
    def workdir(self) -> str:
        return next((s for kind, s in reversed(self.steps) if kind == "WORKDIR"), "/")


def instructions(text: str) -> list[tuple[str, str]]:
    """``(KEYWORD, arguments)`` per instruction: continuation lines joined, comment lines
    (also those inside a continued instruction) dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, args = whole.partition(" ")
        out.append((keyword.upper(), args.strip()))
    if pending:
        raise LayoutError("the Dockerfile ends inside a continued line")
    return out


def _copy(args: str, workdir: str) -> Copy:
    tokens = args.split()
    from_stage = None
    while tokens and tokens[0].startswith("--"):
        flag = tokens.pop(0)
        if flag.startswith("--from="):
            from_stage = flag.split("=", 1)[1]
        elif not flag.startswith(_IGNORED_FLAGS):
            raise LayoutError(f"COPY flag {flag} is not understood here")
    rest = " ".join(tokens)
    parts = json.loads(rest) if rest.startswith("[") else rest.split()
    if len(parts) < 2:
        raise LayoutError(f"COPY needs a source and a destination: {args!r}")
    *sources, dest = parts
    absolute = posixpath.join(workdir, dest)
    if dest.endswith("/") or dest in (".", "./"):
        absolute = absolute.rstrip("/") + "/"
    return Copy(sources, absolute, from_stage)


def stages(text: str) -> list[Stage]:
    """The Dockerfile's stages in order (global ``ARG`` lines before the first ``FROM``
    are skipped)."""
    out: list[Stage] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            if not m:
                raise LayoutError(f"FROM not understood: {args!r}")
            out.append(Stage(m.group(1), m.group(2)))
        elif not out:
            if keyword != "ARG":
                raise LayoutError(f"{keyword} before the first FROM")
        elif keyword == "WORKDIR":
            out[-1].steps.append(("WORKDIR", posixpath.join(out[-1].workdir, args)))
        elif keyword == "COPY":
            out[-1].steps.append(("COPY", _copy(args, out[-1].workdir)))
        elif keyword == "ADD":
            raise LayoutError("ADD is not understood here: use COPY")
        elif keyword == "RUN":
            out[-1].steps.append(("RUN", args))
    return out


def _pattern_regex(pattern: str) -> re.Pattern:
    """Docker's .dockerignore pattern (Go's filepath.Match plus ``**``) as a regex over a
    slash-separated path relative to the context."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                out += "(?:.*/)?"
                i += 1
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise LayoutError(f".dockerignore pattern {pattern!r}: unclosed [")
            body = pattern[i + 1:end]
            out += "[" + ("^" + body[1:] if body.startswith("^") else body) + "]"
            i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out)


class DockerIgnore:
    """``.dockerignore``'s rules as Docker applies them: each line is a pattern relative to
    the context (``!`` re-includes), the last pattern matching a path or one of its parent
    folders decides."""

    def __init__(self, text: str = ""):
        self.patterns: list[tuple[bool, re.Pattern]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negated = line.startswith("!")
            line = posixpath.normpath(line[1:].strip() if negated else line).lstrip("/")
            self.patterns.append((negated, _pattern_regex(line)))

    @classmethod
    def of(cls, context: Path) -> DockerIgnore:
        path = context / ".dockerignore"
        return cls(path.read_text() if path.exists() else "")

    def excluded(self, relpath: str) -> bool:
        parts = relpath.split("/")
        candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        out = False
        for negated, regex in self.patterns:
            if any(regex.fullmatch(c) for c in candidates):
                out = not negated
        return out


def _sources(root: Path, source: str, ignore: DockerIgnore | None) -> list[Path]:
    rel = posixpath.normpath(source.lstrip("/"))
    if rel == ".." or rel.startswith("../"):
        raise LayoutError(f"COPY source {source!r} is outside the build context")
    matched = sorted(root.glob(rel)) if any(ch in rel for ch in "*?[") else [root / rel]
    kept = [p for p in matched if p.exists()
            and not (ignore and p != root and ignore.excluded(p.relative_to(root).as_posix()))]
    if not kept:
        where = "the build context (or .dockerignore leaves it out)" if ignore else "that stage"
        raise LayoutError(f"COPY source {source!r} is not in {where}")
    return kept


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)  # Docker's COPY keeps modification times too


def lay_out(stage: Stage, root: Path, context: Path, stage_roots: dict[str, Path] | None = None) -> None:
    """Copy what ``stage``'s ``COPY`` lines copy into ``root`` (the stage's ``/``): from
    ``context`` through its .dockerignore, or ``--from`` a stage whose folder
    ``stage_roots`` names. A folder's contents are copied, not the folder itself."""
    ignore = DockerIgnore.of(context)
    for copy in stage.copies:
        if copy.from_stage is None:
            src_root, rules = context, ignore
        elif stage_roots and copy.from_stage in stage_roots:
            src_root, rules = stage_roots[copy.from_stage], None
        else:
            raise LayoutError(f"COPY --from={copy.from_stage}: no such stage laid out")
        sources = [p for s in copy.sources for p in _sources(src_root, s, rules)]
        dest = root / copy.dest.lstrip("/")
        into_folder = copy.dest.endswith("/") or len(sources) > 1 or dest.is_dir()
        for src in sources:
            if src.is_dir():
                for path in sorted(src.rglob("*")):
                    rel = path.relative_to(src_root).as_posix()
                    if path.is_file() and not (rules and rules.excluded(rel)):
                        _copy_file(path, dest / path.relative_to(src))
                dest.mkdir(parents=True, exist_ok=True)
            else:
                _copy_file(src, dest / src.name if into_folder else dest)
