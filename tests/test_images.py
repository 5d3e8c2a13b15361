"""The images stay consistent with the package: versions, entry points, ports."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from cloudhop import __version__
from cloudhop.hub.cli import build_parser
from cloudhop.spawner.providers.aws import AWSProvider
from cloudhop.spawner.providers.base import LaunchSpec

ROOT = Path(__file__).resolve().parent.parent
SINGLEUSER = (ROOT / "images/singleuser/Dockerfile").read_text()
HUB = (ROOT / "images/hub/Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def arg(dockerfile: str, name: str) -> str:
    m = re.search(rf"^ARG {name}=(\S+)$", dockerfile, re.M)
    assert m, f"ARG {name} missing"
    return m.group(1)


def requirement(name: str, extra: str | None = None) -> Requirement:
    reqs = PYPROJECT["project"]["optional-dependencies"][extra] if extra else PYPROJECT["project"]["dependencies"]
    return next(Requirement(r) for r in reqs if Requirement(r).name == name)


def cmd(dockerfile: str) -> list[str]:
    return json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))


def test_jupyterhub_pins_match_the_package_and_each_other():
    pin = arg(SINGLEUSER, "JUPYTERHUB_VERSION")
    assert pin == arg(HUB, "JUPYTERHUB_VERSION")
    assert requirement("jupyterhub").specifier.contains(pin)
    assert pin == metadata.version("jupyterhub")  # what the hub here runs and was tested with


def test_ray_and_lab_pins_satisfy_the_package():
    assert requirement("ray").specifier.contains(arg(SINGLEUSER, "RAY_VERSION"))  # a plain dependency now
    assert arg(SINGLEUSER, "RAY_VERSION") == metadata.version("ray")
    assert requirement("jupyterlab").specifier.contains(arg(SINGLEUSER, "JUPYTERLAB_VERSION"))


def test_singleuser_image_is_cuda_with_the_extension_and_torch():
    assert re.search(r"^ARG CUDA_BASE=nvidia/cuda:\S+$", SINGLEUSER, re.M)
    assert "torch==${TORCH_VERSION}" in SINGLEUSER
    assert "/src/cloudhop[ray,migrate]" in SINGLEUSER  # the package with Ray and migration
    assert "cloudhop.extensions" in SINGLEUSER  # the build fails if the extension is not enabled
    config = ROOT / "extensions/jupyter-config/jupyter_server_config.d/cloudhop.json"
    enabled = json.loads(config.read_text())["ServerApp"]["jpserver_extensions"]
    assert enabled["cloudhop.extensions"] is True


def test_singleuser_entry_point_and_port_agree_with_the_spawner():
    [command] = cmd(SINGLEUSER)
    scripts = {e.name for e in metadata.entry_points(group="console_scripts")}
    assert command in scripts and command == "jupyterhub-singleuser"
    from cloudhop.spawner.spawner import CloudhopSpawner

    assert CloudhopSpawner.class_traits()["cmd"].default() == [command]  # what the spawner runs
    exposed = int(re.search(r"^EXPOSE (\d+)$", SINGLEUSER, re.M).group(1))
    port = next(f.default for f in LaunchSpec.__dataclass_fields__.values() if f.name == "port")
    assert exposed == port == 8888


def test_copied_folders_are_the_packages_folders():
    for dockerfile in (SINGLEUSER, HUB):
        copied = set(re.findall(r"^COPY (\S+) /src/cloudhop/\1$", dockerfile, re.M))
        mapped = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
        assert copied == mapped


def test_hub_image_runs_cloudhop_up_with_valid_flags():
    argv = cmd(HUB)
    assert argv[0] in PYPROJECT["project"]["scripts"]
    args = build_parser().parse_args(argv[1:])
    assert args.command == "up" and args.ip == "0.0.0.0" and args.port == 8000
    assert f"EXPOSE {args.port}" in HUB
    assert "[aws,gcp,oci,kubernetes]" in HUB


def test_default_image_tag_is_the_package_version():
    assert AWSProvider().singleuser_image == f"cloudhop/singleuser:{__version__}"
    assert f"cloudhop/singleuser:{__version__}" in SINGLEUSER
    assert __version__ == PYPROJECT["project"]["version"]
