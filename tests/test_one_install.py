"""The README's one install gives a working Cloudhop, and a server whose Cloudhop
extension cannot load says why.

- The install test makes a fresh virtual environment, runs the quick start's install
  command exactly as the README has it, starts ``cloudhop up`` from that environment,
  spawns a server and reads the server's ``/cloudhop/api/info``; it also imports what
  moves, Ray and the clouds need there.
- A server missing one of the extension's packages logs that package and the pip
  command that adds it, and answers the Cloudhop API with 503 saying the same (before,
  the log blamed ``cloudhop.extensions.server could not be found`` and the API was 404).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent

#: what the quick start's one install must make importable
MODULES = ["blake3", "pyfastcdc", "dill", "ray", "jupyter_server_proxy", "boto3",
           "google.cloud.compute_v1", "oci", "azure.mgmt.compute", "azure.mgmt.network", "azure.identity",
           "pydo", "cryptography", "kubespawner", "yaml", "cloudhop.extensions.server"]


# -- what the package declares ---------------------------------------------------------------


def _name(requirement: str) -> str:
    import re

    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_default_hubs_needs_are_plain_dependencies_and_the_old_extras_add_nothing():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needs = {"pyfastcdc", "blake3", "dill", "ray", "jupyter-server-proxy", "boto3",
             "google-cloud-compute", "oci", "jupyterhub-kubespawner", "pyyaml",
             "azure-mgmt-compute", "azure-mgmt-network", "azure-identity", "pydo", "cryptography"}
    assert needs <= {_name(r) for r in project["dependencies"]}
    assert any(r.startswith("ray[default]") for r in project["dependencies"])  # the dashboard
    extras = project["optional-dependencies"]
    # kept, empty, so `pip install "cloudhop[aws,ray]"` of images and scripts still works
    for old in ("aws", "gcp", "oci", "kubernetes", "ray", "migrate", "all"):
        assert extras[old] == [], old
    assert not any(_name(r) == "cloudhop" for r in extras["test"])


# -- the extension's stand-in, without a server ------------------------------------------


def test_a_missing_package_is_named_with_the_pip_command():
    from cloudhop.extensions.unavailable import explain

    message = explain(ModuleNotFoundError("No module named 'blake3'", name="blake3"))
    assert "'blake3>=" in message and "(module 'blake3')" in message
    assert f"{sys.executable} -m pip install -e {ROOT}" in message  # this checkout, this Python
    assert f"{sys.executable} -m pip install 'blake3>=" in message
    # Ray comes with its extra, as Cloudhop requires it
    assert "pip install 'ray[default]>=" in explain(ModuleNotFoundError("No module named 'ray'", name="ray"))


def test_cloudhops_own_import_error_is_not_blamed_on_a_package():
    from cloudhop.extensions.unavailable import explain, missing_package

    err = ImportError("cannot import name 'Gone' from 'cloudhop.extensions.handlers'",
                      name="cloudhop.extensions.handlers")
    assert missing_package(err) is None
    assert "importing it failed: ImportError: cannot import name 'Gone'" in explain(err)
    assert missing_package(ModuleNotFoundError("x", name="cloudhop.extensions.nope")) is None


def test_the_extension_point_is_the_server_when_it_imports():
    import cloudhop.extensions

    assert cloudhop.extensions._jupyter_server_extension_points() == [{"module": "cloudhop.extensions.server"}]


# -- a real server missing a package -------------------------------------------------------


#: a jupyter server in which ``blake3`` cannot be imported
BLOCKED = ("import sys; sys.modules['blake3'] = None; "
           "from jupyter_server.serverapp import main; sys.exit(main())")


@pytest.mark.e2e
def test_a_server_missing_a_package_logs_it_and_its_api_says_so(tmp_path):
    from hubfixture import free_port

    port, token = free_port(), "t" * 32
    log_path = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "CLOUDHOP_"))}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", BLOCKED, f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
             "--ServerApp.open_browser=False", "--allow-root",
             "--ServerApp.jpserver_extensions=cloudhop.extensions=True"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/cloudhop/api/info"
        deadline, r = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = requests.get(url, headers={"Authorization": f"token {token}"}, timeout=5)
                break
            except requests.ConnectionError:
                time.sleep(0.5)
        assert r is not None, log_path.read_text(errors="replace")
        assert r.status_code == 503
        assert r.reason == "Cloudhop server extension not loaded"
        message = r.json()["message"]
        assert "(module 'blake3')" in message and "-m pip install -e " in message
        # without the token: no word of it
        assert requests.get(url, timeout=5).status_code in (401, 403)
    finally:
        proc.terminate()
        proc.wait(30)
    log = log_path.read_text(errors="replace")
    assert "The Cloudhop server extension is not loaded: the Python package 'blake3" in log
    assert "-m pip install -e " in log
    assert "could not be found" not in log


# -- the README's install in a fresh virtual environment -------------------------------------


@pytest.mark.e2e
@pytest.mark.install
def test_the_readme_install_has_everything_the_default_hub_needs(fresh_venv):
    python = fresh_venv / "bin" / "python"
    r = subprocess.run([str(python), "-c", "import " + ", ".join(MODULES)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(fresh_venv / "bin" / "cloudhop"), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "offers" in r.stdout


@pytest.mark.e2e
@pytest.mark.install
def test_a_server_started_from_the_readme_install_answers_cloudhops_api(fresh_venv, hub_factory):
    # the fresh environment is in a private temporary folder: other accounts cannot run
    # its Python, so the servers run as the hub's account here
    hub = hub_factory(python=str(fresh_venv / "bin" / "python"),
                      extra_config='c.LocalProvider.isolation = "none"\n')
    hub.spawn("alice", {"provider": "local", "gpu": "none"})
    r = hub.api("POST", "/users/alice/tokens", json={"note": "one install test"})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    r = requests.get(f"{hub.url}/user/alice/cloudhop/api/info", headers={"Authorization": f"token {token}"},
                     timeout=60)
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["user"] == "alice" and info["provider"] == "local"
    # the server runs on the fresh environment's Python
    k = hub.kernel("alice")
    try:
        assert k.execute("import sys; print(sys.prefix)").strip() == str(fresh_venv)
    finally:
        k.close()
