"""The README's install in a fresh virtual environment, made once per test session and
shared by the tests that start Cloudhop the way a new user does (tests/test_one_install.py,
tests/test_lab_extension.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_install_command() -> str:
    """The install step of the README's quick start (``pip install -e . && cloudhop up``)."""
    from test_readme import _code_lines

    line = next(x for x in _code_lines((ROOT / "README.md").read_text()) if x.endswith("cloudhop up"))
    return line.split("&&")[0].strip()


def make_fresh_venv(folder: Path) -> Path:
    """A new virtual environment in ``folder`` with the README's install command run in the
    checkout, as a new user runs it."""
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "CLOUDHOP_", "PYTHON"))}
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    command = readme_install_command()
    assert command == "pip install -e ."
    started = time.monotonic()
    r = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    print(f"\n`{command}` into a fresh virtual environment: {time.monotonic() - started:.0f} s")
    return venv
