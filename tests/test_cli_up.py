"""`cloudhop up` refuses bad flags with a message naming the flag, before starting anything."""

from __future__ import annotations

import subprocess
import sys

import pytest


def up(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cloudhop.hub.cli", "up", *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize("args, flag", [
    (["--port", "abc"], "--port"),
    (["--port", "0"], "--port"),
    (["--port", "70000"], "--port"),
    (["--ip", "not an ip!"], "--ip"),
    (["--cull-idle", "soon"], "--cull-idle"),
    (["--cull-idle", "-5"], "--cull-idle"),
])
def test_bad_flag_values(args, flag):
    r = up(*args)
    assert r.returncode == 2
    assert flag in r.stderr


def test_data_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = up("--data-dir", str(f))
    assert r.returncode == 2 and "--data-dir" in r.stderr
    assert f.read_text() == "x", "nothing is lost"


def test_missing_config_file(tmp_path):
    r = up("--data-dir", str(tmp_path / "d"), "--config", str(tmp_path / "nope.py"))
    assert r.returncode == 2 and "--config" in r.stderr


def test_help_documents_every_subcommand():
    r = subprocess.run([sys.executable, "-m", "cloudhop.hub.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "up" in r.stdout
    r = up("--help")
    assert all(flag in r.stdout for flag in ("--ip", "--port", "--data-dir", "--config", "--cull-idle"))
