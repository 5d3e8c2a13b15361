"""The distribution ships every package folder and its entry points."""

from __future__ import annotations

import tomllib
from importlib.metadata import entry_points
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"cloudhop": "cloudhop", "hub": "cloudhop.hub", "spawner": "cloudhop.spawner",
           "extensions": "cloudhop.extensions", "notebooks": "cloudhop.notebooks"}


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for folder, name in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - found == set(), "these listed packages have no folder"


def test_every_package_data_pattern_matches_files():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {name: ROOT / folder for folder, name in FOLDERS.items()}
    for package, patterns in setuptools["package-data"].items():
        top, _, rest = package.partition(".")
        root = folders[f"{top}.{rest.split('.')[0]}"] if rest else folders[top]
        base = root.joinpath(*rest.split(".")[1:]) if rest else root
        for pattern in patterns:
            assert [p for p in base.glob(pattern) if p.is_file()], f"{package}: {pattern!r} matches nothing"
    assert (ROOT / "hub" / "helm" / "values.yaml").is_file()


def test_entry_points():
    assert any(ep.value == "cloudhop.hub.cli:main" for ep in entry_points(group="console_scripts", name="cloudhop"))
    (spawner,) = entry_points(group="jupyterhub.spawners", name="cloudhop")
    from cloudhop.spawner import CloudhopSpawner

    assert spawner.load() is CloudhopSpawner


def test_cli_help_lists_every_subcommand(capsys):
    import argparse

    from cloudhop.hub.cli import build_parser

    parser = build_parser()
    text = parser.format_help()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert "up" in sub.choices
    for name, subparser in sub.choices.items():
        assert name in text
        assert subparser.format_help().strip(), f"`cloudhop {name} --help` says nothing"
