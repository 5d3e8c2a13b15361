"""The ``cloudhop`` command. Each subcommand lives in its own module, which provides
``add_parser(subparsers)``; this file only lists them."""

from __future__ import annotations

import argparse
import importlib
import sys

#: modules that add a subcommand, in the order ``--help`` lists them
SUBCOMMANDS = [
    "cloudhop.hub.up",
    "cloudhop.hub.offers_cli",
    "cloudhop.hub.catalog_cli",
]


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
