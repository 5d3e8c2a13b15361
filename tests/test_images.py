"""The images stay consistent with the package: versions, entry points, ports, and what
their builds copy: laid out as each Dockerfile says, without Docker (tests/dockerlayout.py),
the package builds, with no Node.js, into a wheel holding both of Cloudhop's extensions."""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from dockerlayout import DockerIgnore, LayoutError, Stage, lay_out, stages
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
    mapped = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    for dockerfile in (SINGLEUSER, HUB):
        copies = stages(dockerfile)[-1].copies
        copied = {c.sources[0] for c in copies if c.from_stage is None and c.dest == f"/src/cloudhop/{c.sources[0]}"}
        assert copied == mapped | {"labextension"}


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


# -- what the builds copy: both extensions reach the images ------------------------------

LAB_DEST = "share/jupyter/labextensions/@cloudhop/jupyterlab"
SERVER_CONFIG = "etc/jupyter/jupyter_server_config.d/cloudhop.json"
NODE_STAGE = "labextension"


def _setup_module():
    spec = importlib.util.spec_from_file_location("cloudhop_setup_images", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() runs only as __main__
    return module


def _built_labextension() -> Path:
    """This checkout's build of the extension (labextension/dist), built by setup.py's
    helper when missing: what the node stage's `npm run build:prod` makes."""
    setup = _setup_module()
    if not (setup.OUT / "package.json").exists():
        assert setup.ensure_labextension(setup.LAB, env={}), "labextension/ did not build"
    return setup.OUT


def _node_stage(dockerfile: str) -> Stage:
    return next(s for s in stages(dockerfile) if s.name == NODE_STAGE)


def _lay_out_image(dockerfile: str, root: Path) -> Path:
    """Lay out the node stage and the final (Python) stage under ``root`` as the
    Dockerfile does, the node stage's build standing in as this checkout's; returns the
    folder the final stage installs the package from."""
    all_stages = stages(dockerfile)
    stage_roots = {}
    node = next((s for s in all_stages if s.name == NODE_STAGE), None)
    if node is not None:
        stage_roots[NODE_STAGE] = node_root = root / "node"
        lay_out(node, node_root, ROOT)
        work = node_root / node.workdir.lstrip("/")
        out_dir = json.loads((work / "package.json").read_text())["jupyterlab"]["outputDir"]
        shutil.copytree(_built_labextension(), work / out_dir, copy_function=shutil.copy2)
    final = all_stages[-1]
    lay_out(final, root / "image", ROOT, stage_roots)
    [install] = [r for r in final.runs if "pip install" in r]
    source = re.search(r'"(/src/cloudhop)\[', install).group(1)
    return root / "image" / source.lstrip("/")


def _wheel_without_node(source: Path, out: Path) -> zipfile.ZipFile:
    """``pip wheel`` of ``source`` with nothing but this Python's folder on PATH: no node,
    no npm, as in the images' Python stage."""
    path = str(Path(sys.executable).parent)
    assert shutil.which("npm", path=path) is None and shutil.which("node", path=path) is None
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "CLOUDHOP_", "PYTHON"))}
    env["PATH"] = path
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-q", "-w", str(out), str(source)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    [wheel] = out.glob("cloudhop-*.whl")
    return zipfile.ZipFile(wheel)


def _extensions_in(wheel: zipfile.ZipFile) -> dict[str, bool]:
    data = {n.split(".data/data/", 1)[1] for n in wheel.namelist() if ".data/data/" in n}
    found = {"server extension config": SERVER_CONFIG in data,
             "labextension package.json": f"{LAB_DEST}/package.json" in data,
             "labextension install.json": f"{LAB_DEST}/install.json" in data,
             # the startup hook of cloudhop/lazy_iri.py, at the wheel's top: site-packages
             "lazy import hook": "cloudhop-lazy-iri.pth" in wheel.namelist()}
    if found["labextension package.json"]:
        name = next(n for n in wheel.namelist() if n.endswith(f"/data/{LAB_DEST}/package.json"))
        meta = json.loads(wheel.read(name))
        load = meta["jupyterlab"]["_build"]["load"]  # static/remoteEntry.<hash>.js
        found["labextension name"] = meta["name"] == "@cloudhop/jupyterlab"
        found["labextension remoteEntry"] = (re.fullmatch(r"static/remoteEntry\.\w+\.js", load) is not None
                                             and f"{LAB_DEST}/{load}" in data)
    return found


@pytest.mark.parametrize("image", ["singleuser", "hub"])
def test_the_image_build_installs_both_extensions_without_node(image, tmp_path):
    """The final stage's COPY lines, laid out through .dockerignore with the node stage's
    build, give a source tree whose wheel, built without node, carries the JupyterLab
    extension (package.json, remoteEntry, install.json) and the server extension config."""
    dockerfile = (ROOT / f"images/{image}/Dockerfile").read_text()
    source = _lay_out_image(dockerfile, tmp_path)
    wheel = _wheel_without_node(source, tmp_path / "wheel")
    found = _extensions_in(wheel)
    assert all(found.values()) and len(found) == 6, found


def test_a_build_that_leaves_out_setup_py_is_caught(tmp_path):
    """The check above fails on an image that copies the package without setup.py and
    labextension/ (the images as they were): the wheel has no JupyterLab extension."""
    dockerfile = re.sub(r"^COPY (--from=labextension|labextension /src/).*$", "", SINGLEUSER, flags=re.M).replace(" setup.py ", " ")
    assert not {"setup.py", "labextension"} & {s for c in stages(dockerfile)[-1].copies for s in c.sources}
    found = _extensions_in(_wheel_without_node(_lay_out_image(dockerfile, tmp_path), tmp_path / "wheel"))
    assert found == {"server extension config": True, "labextension package.json": False,
                     "labextension install.json": False, "lazy import hook": False}


def test_the_node_stage_builds_from_the_lock_file():
    for dockerfile in (SINGLEUSER, HUB):
        node = _node_stage(dockerfile)
        assert re.fullmatch(r"node:20\S*", node.base)
        runs = " && ".join(node.runs)
        assert "npm ci" in runs and "npm run build:prod" in runs
        assert runs.index("npm ci") < runs.index("npm run build:prod")
        # the install layer sees only the manifests and the lock file
        first = node.copies[0]
        assert sorted(Path(s).name for s in first.sources) == [".npmrc", "package-lock.json", "package.json"]
        final = stages(dockerfile)[-1]
        assert [c.sources for c in final.copies if c.from_stage == NODE_STAGE] == [[f"{node.workdir}/dist"]]


def test_the_node_stage_sees_the_sources_and_not_the_checkouts_builds(tmp_path):
    setup = _setup_module()
    lay_out(_node_stage(SINGLEUSER), tmp_path, ROOT)
    work = tmp_path / _node_stage(SINGLEUSER).workdir.lstrip("/")
    for name in setup.SOURCES:  # what the build reads
        assert (work / name).exists(), name
    for built in ("node_modules", "lib", "dist", "tsconfig.tsbuildinfo"):
        assert not (work / built).exists(), f"this checkout's labextension/{built} reaches the image"


def test_the_images_check_that_both_extensions_are_installed():
    for dockerfile in (SINGLEUSER, HUB):
        [install] = [r for r in stages(dockerfile)[-1].runs if "pip install" in r]
        assert re.search(r'&& jupyter server extension list 2>&1 \| grep -q "cloudhop\.extensions\.\*enabled"', install)
        assert re.search(r'&& jupyter labextension list 2>&1 \| grep -q "@cloudhop/jupyterlab v\.\*enabled\.\*OK"',
                         install)


def test_dockerignore_keeps_caches_and_builds_out_and_every_tracked_source_in():
    ignore = DockerIgnore.of(ROOT)
    for path in (".git/HEAD", "labextension/node_modules/typescript/package.json", "labextension/lib/index.js",
                 "labextension/dist/package.json", "labextension/tsconfig.tsbuildinfo", "hub/__pycache__/cli.pyc",
                 "spawner/ray/__pycache__/head.cpython-311.pyc", "cloudhop.egg-info/PKG-INFO", ".pytest_cache/x",
                 "build/lib/cloudhop/__init__.py", "dist/cloudhop-0.1.0.whl"):
        assert ignore.excluded(path), path
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    kept_out = [p for p in tracked.splitlines() if ignore.excluded(p)]
    assert kept_out == [], "tracked files .dockerignore leaves out of the images' context"


def test_dockerignore_rules_match_dockers():
    rules = DockerIgnore("**/__pycache__\nbuild\n*.md\n!README.md\nlab/[a-c]?\n/docs/**/*.png\n")
    assert rules.excluded("__pycache__/a.pyc") and rules.excluded("x/y/__pycache__/a.pyc")
    assert rules.excluded("build/x") and not rules.excluded("hub/build/x")  # no ** : the context's root only
    assert rules.excluded("CHANGES.md") and not rules.excluded("README.md") and not rules.excluded("docs/a.md")
    assert rules.excluded("lab/b1") and not rules.excluded("lab/d1") and not rules.excluded("lab/b12")
    assert rules.excluded("docs/x.png") and rules.excluded("docs/a/b/x.png") and not rules.excluded("x.png")


def test_a_copy_of_something_the_context_lacks_fails_as_docker_would(tmp_path):
    (tmp_path / "ctx" / "kept").mkdir(parents=True)
    (tmp_path / "ctx" / "kept" / "a.txt").write_text("a")
    (tmp_path / "ctx" / ".dockerignore").write_text("kept/a.txt\n")
    [stage] = stages("FROM scratch\nCOPY kept/a.txt /x/\n")
    with pytest.raises(LayoutError, match="not in the build context"):
        lay_out(stage, tmp_path / "root", tmp_path / "ctx")
    [stage] = stages("FROM scratch\nCOPY ../x /x/\n")
    with pytest.raises(LayoutError, match="outside the build context"):
        lay_out(stage, tmp_path / "root", tmp_path / "ctx")
