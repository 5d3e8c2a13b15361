"""The ``cloudhop`` command. Each subcommand lives in its own module, which provides
``add_parser(subparsers)``; this file only lists them."""

from __future__ import annotations

import argparse
import importlib
import re
import sys

#: modules that add a subcommand, in the order ``--help`` lists them
SUBCOMMANDS = [
    "cloudhop.hub.up",
    "cloudhop.hub.offers_cli",
    "cloudhop.hub.catalog_cli",
    "cloudhop.hub.usage_cli",
    "cloudhop.hub.nodes_cli",
]


def plain(doc: str | None) -> str:
    """A docstring as ``--help`` shows it: reST markup made plain text (double and single
    backquotes dropped, ``:mod:`a.b``` -> a.b, ``:class:`~a.B``` -> B, a ``::`` that
    opens a literal block -> ``:``)."""

    def role(m: re.Match) -> str:
        return m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2)

    text = re.sub(r":[a-z]+:`(~?)([^`]+)`", role, doc or "")
    text = re.sub(r"``([^`]+)``", r"\1", text)
    text = re.sub(r"`([^`]+)`", r"\1", text)
    text = re.sub(r"[ \t]*::$", ":", text, flags=re.M)
    return text.strip() + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloudhop",
        description="Cloudhop: a self-service GPU workbench on JupyterHub.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args) or 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
