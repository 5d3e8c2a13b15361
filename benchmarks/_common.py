"""What the benchmark scripts share: their command line's ``--tmp`` option and the
temporary folder a run keeps its hubs' data and files in, deleted afterwards.

A script imports it as ``from _common import ...`` (a script's own folder is first on
``sys.path``)::

    parser = bench_parser(__doc__, data="the hub's data")
    parser.add_argument("--mib", ...)
    sys.exit(run_in_scratch(parser.parse_args(), "durability", bench))
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def bench_parser(doc: str | None, *, data: str = "the benchmark's files") -> argparse.ArgumentParser:
    """A script's argument parser: its docstring as the description (laid out as
    written) and ``--tmp DIR``, the folder ``data`` goes in (default: a new temporary one)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tmp", default=None, metavar="DIR",
                        help=f"make the folder for {data} inside DIR (default: the system's temporary folder)")
    return parser


@contextmanager
def scratch_folder(name: str, parent: str | None = None) -> Iterator[Path]:
    """A new folder ``cloudhop-<name>-*`` (inside ``parent`` when given), removed with all
    it holds when the block ends, also on an error or Ctrl-C."""
    tmp = Path(tempfile.mkdtemp(prefix=f"cloudhop-{name}-", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_in_scratch(args: argparse.Namespace, name: str, bench: Callable[[argparse.Namespace, Path], None]) -> int:
    """``bench(args, tmp)`` in a :func:`scratch_folder` inside ``args.tmp``; the exit
    status 0 (a failure raises)."""
    with scratch_folder(name, args.tmp) as tmp:
        bench(args, tmp)
    return 0
