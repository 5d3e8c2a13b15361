"""The package build builds Cloudhop's JupyterLab extension too (everything else is in
pyproject.toml).

``labextension/`` holds the extension's TypeScript. Before setuptools copies the
packages (``build_py``, which a wheel, ``pip install .`` and ``pip install -e .`` all
run), :func:`ensure_labextension` builds it into ``labextension/dist`` with npm and
@jupyterlab/builder when the build is missing or older than its sources: ``npm ci``
(the versions in package-lock.json) when ``node_modules`` is missing or older than the
lock file, then ``npm run build:prod``. The built files are then installed as data files
in ``share/jupyter/labextensions/@cloudhop/jupyterlab``, where JupyterLab finds prebuilt
extensions, by every install, editable ones included
(:class:`DistributionWithEditableData`). They are listed here, not in pyproject.toml's
data-files, because setuptools expands those globs before anything is built.

Node.js 20 or later and npm must be on PATH when the extension needs building. Without
them an existing build is used as it is; with no build at all the install stops and says
so, unless ``CLOUDHOP_SKIP_LABEXTENSION=1`` (the package then installs without the
extension). A source tree without ``labextension/`` installs without it, with a warning.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = Path(__file__).resolve().parent
LAB = ROOT / "labextension"
OUT = LAB / "dist"
DEST = "share/jupyter/labextensions/@cloudhop/jupyterlab"
#: what the build reads: a change to any of these makes the build stale
SOURCES = ("package.json", "package-lock.json", "tsconfig.json", "src", "style", "scripts")
SKIP_ENV = "CLOUDHOP_SKIP_LABEXTENSION"
#: a startup hook installed into site-packages (see cloudhop/lazy_iri.py): it defers an
#: import that costs every Jupyter, Ray and hub process about a CPU-second
PTH_NAME = "cloudhop-lazy-iri.pth"
PTH_LINE = "import cloudhop.lazy_iri; cloudhop.lazy_iri.install()\n"


class LabExtensionError(RuntimeError):
    pass


def _newest(paths) -> float:
    """The newest modification time of these files and of every file below these folders."""
    newest = 0.0
    for path in paths:
        if path.is_dir():
            newest = max([newest] + [p.stat().st_mtime for p in path.rglob("*") if p.is_file()])
        elif path.exists():
            newest = max(newest, path.stat().st_mtime)
    return newest


def is_stale(lab: Path = LAB) -> bool:
    """True when the built extension is missing or older than a source file."""
    built = lab / "dist" / "package.json"
    if not built.exists():
        return True
    return _newest(lab / name for name in SOURCES) > built.stat().st_mtime


def needs_install(lab: Path = LAB) -> bool:
    """True when ``node_modules`` is missing or older than package-lock.json (npm writes
    ``node_modules/.package-lock.json`` at every install)."""
    marker = lab / "node_modules" / ".package-lock.json"
    return not marker.exists() or (lab / "package-lock.json").stat().st_mtime > marker.stat().st_mtime


def _run(cmd: list[str], cwd: Path) -> None:
    print(f"cloudhop: {' '.join(cmd)} (in {cwd.name}/)", file=sys.stderr, flush=True)
    result = subprocess.run(cmd, cwd=cwd, check=False)
    if result.returncode:
        raise LabExtensionError(f"building the JupyterLab extension failed: `{' '.join(cmd)}` exited with "
                                f"{result.returncode} (see its output above)")


def ensure_labextension(lab: Path = LAB, env=os.environ) -> bool:
    """Build the extension when it is stale; True when a build is there to install."""
    built = (lab / "dist" / "package.json").exists()
    if env.get(SKIP_ENV) == "1":
        return built
    if not (lab / "package.json").exists():
        print("cloudhop: warning: labextension/ is not in this source tree; installing without the "
              "JupyterLab extension", file=sys.stderr)
        return built
    if not is_stale(lab):
        return True
    npm = shutil.which("npm")
    if npm is None:
        if built:
            print("cloudhop: warning: npm is not on PATH; installing the JupyterLab extension as last built",
                  file=sys.stderr)
            return True
        raise LabExtensionError(
            "building Cloudhop's JupyterLab extension needs Node.js 20 or later and npm, and npm is not on "
            f"PATH: install them, or set {SKIP_ENV}=1 to install Cloudhop without the extension")
    if needs_install(lab):
        _run([npm, "ci", "--no-audit", "--no-fund"], lab)
    _run([npm, "run", "build:prod"], lab)
    return True


def data_files(lab: Path = LAB, root: Path = ROOT) -> list[tuple[str, list[str]]]:
    """``(install folder, [files])`` for every file of the built extension, plus its
    install.json (which tells JupyterLab the extension came with this Python package)."""
    out: dict[str, list[str]] = {DEST: [str((lab / "install.json").relative_to(root))]}
    for path in sorted((lab / "dist").rglob("*")):
        if path.is_file():
            sub = path.parent.relative_to(lab / "dist")
            dest = DEST if sub == Path(".") else f"{DEST}/{sub.as_posix()}"
            out.setdefault(dest, []).append(str(path.relative_to(root)))
    return list(out.items())


class BuildPyWithLabExtension(build_py):
    """``build_py`` that first builds the JupyterLab extension and adds its files to the
    distribution's data files (the list ``install_data`` installs from), and writes
    :data:`PTH_NAME` at the top of the build, which wheels and editable installs put in
    site-packages."""

    def run(self):
        try:
            have = ensure_labextension()
        except LabExtensionError as err:
            raise SystemExit(f"error: {err}") from None
        if have:
            if self.distribution.data_files is None:
                self.distribution.data_files = []
            listed = {dest for dest, _ in self.distribution.data_files}
            self.distribution.data_files.extend(d for d in data_files() if d[0] not in listed)
        super().run()
        os.makedirs(self.build_lib, exist_ok=True)
        pth = os.path.join(self.build_lib, PTH_NAME)
        with open(pth, "w") as f:
            f.write(PTH_LINE)
        if getattr(self, "editable_mode", False):
            # an editable wheel holds only its finder and the data files: the hook goes as
            # a data file into this interpreter's site-packages
            if self.distribution.data_files is None:
                self.distribution.data_files = []
            site = os.path.relpath(sysconfig.get_path("purelib"), sysconfig.get_path("data"))
            self.distribution.data_files.append((site, [os.path.abspath(pth)]))

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH_NAME)]


class DistributionWithEditableData(Distribution):
    """An editable install (``pip install -e .``) installs the data files too, as any other
    install does: setuptools' editable wheel installs them only when the distribution
    answers ``has_data()``, which setuptools' own Distribution does not define
    (pypa/setuptools#3399); it has ``has_data_files()``."""

    def has_data(self) -> bool:
        return self.has_data_files()


if __name__ == "__main__":
    setup(cmdclass={"build_py": BuildPyWithLabExtension}, distclass=DistributionWithEditableData)
