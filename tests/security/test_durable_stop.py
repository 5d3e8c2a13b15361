"""Nothing a user made is lost by a stop, through one real hub with ephemeral local regions
(a stopped server's workspace is deleted, as a cloud VM's disk is).

- A server with a file and a notebook session holding ``x = 42`` and a NumPy array is
  stopped through the REST API and started again in another region: the file, the
  session and the values are back, and its workspace really was deleted in between;
  ``"restore": "none"`` starts empty.
- A restore of a snapshot that is not the user's server's: 404.
- A stop whose snapshot fails (the quota full, the store down) keeps the node and its
  files, says why in the hub's log and on the Home page, and the reaper spares the node.
- A chunk corrupt in the store fails the next start naming the file; nothing of it is
  written in the workspace; the snapshot stays, and the failed start takes no snapshot.
- The hub SIGKILLed while a stop takes its snapshot: the node is not terminated; the
  restarted hub finds the server running, and the next stop hibernates it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from hubfixture import HubProcess
from test_e2e_form_providers import login

from tests.cloudkit import wait_for

from cloudhop.hub.store_backends import LocalBackend

pytestmark = pytest.mark.e2e

CONFIG = """
c.LocalProvider.regions = {{"site-a": {{"gpus": "none", "ephemeral": True}},
                            "site-b": {{"gpus": "none", "ephemeral": True}},
                            "site-c": {{"gpus": "none"}}}}
c.CloudhopStore.quota_gib = 0.02  # about 20 MiB per user
c.Spawner.environment = {{"CLOUDHOP_MOVE_HOLD": {hold!r}}}
c.CloudhopReaper.interval = 1
c.CloudhopReaper.grace = 5  # short, but past the moment a launch's node is recorded
"""
STATE = "import numpy as np\nx = 42\narr = np.arange(12).reshape(3, 4) * 1.5"
SHOW = "print(x, arr.sum(), arr.tolist())"
SITE = {"provider": "local", "region": "site-a"}


@pytest.fixture(scope="module")
def holds():
    folder = Path(tempfile.mkdtemp(prefix="cloudhop-holds-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def hub(tmp_path_factory, holds):
    hub = HubProcess(tmp_path_factory.mktemp("durable"), extra_config=CONFIG.format(hold=str(holds)))
    hub.start()
    kept: list[int] = []
    hub.kept_pids = kept  # nodes a test's stop kept: ended here, they outlive the hub
    yield hub
    if hub.proc.poll() is not None:
        hub.start()
    for user in hub.api("GET", "/users").json():
        for name in user.get("servers", {}):
            hub.api("DELETE", f"/users/{user['name']}/servers/{name}")
    wait_for(lambda: not any(u.get("servers") for u in hub.api("GET", "/users").json()), 90, "every server stopped")
    hub.stop()
    for pid in kept:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def user_api(hub, user):
    def call(method, path, server="", **kw):
        r = hub.server_api(method, user, path, server, **kw)
        return r
    return call


def node_of(hub, user, server=""):
    """The local node's record as the server's state holds it (pid, workspace)."""
    state = hub.api("GET", f"/users/{user}").json()["servers"][server]["state"]
    return state["node"]


def stopped_state(hub, user, server=""):
    r = hub.api("GET", f"/users/{user}?include_stopped_servers=1")
    return r.json()["servers"][server]["state"]


def server_tokens(hub, user) -> list[str]:
    """The ids of ``user``'s servers' own tokens (JupyterHub notes them "Server at ...")."""
    tokens = hub.api("GET", f"/users/{user}/tokens").json()["api_tokens"]
    return [t["id"] for t in tokens if (t.get("note") or "").startswith("Server at")]


def make_session(hub, user, server=""):
    """A file and a notebook session whose kernel holds x and a NumPy array; what it shows."""
    api = user_api(hub, user)
    assert api("PUT", "api/contents/data", server, json={"type": "directory"}).status_code in (200, 201)
    r = api("PUT", "api/contents/data/results.csv", server, json={"type": "file", "format": "text",
                                                                   "content": "a,b\n1,2\n"})
    assert r.status_code in (200, 201), r.text
    r = api("POST", "api/sessions", server, json={"path": "analysis.ipynb", "name": "analysis.ipynb",
                                                    "type": "notebook", "kernel": {"name": "python3"}})
    assert r.status_code == 201, r.text
    kernel = hub.kernel(user, server, kernel_id=r.json()["kernel"]["id"])
    kernel.execute(STATE)
    shown = kernel.execute(SHOW)
    kernel.close()
    return shown


def assert_restored(hub, user, shown: str, old_workspace: str) -> None:
    """``user``'s server, started again in a new workspace, has back what
    :func:`make_session` made: the file, the notebook's session, and its kernel showing
    ``shown``."""
    api = user_api(hub, user)
    assert node_of(hub, user)["info"]["workspace"] != old_workspace
    assert api("GET", "api/contents/data/results.csv").json()["content"] == "a,b\n1,2\n"
    sessions = api("GET", "api/sessions").json()
    assert [s["path"] for s in sessions] == ["analysis.ipynb"]
    kernel = hub.kernel(user, kernel_id=sessions[0]["kernel"]["id"])
    try:
        assert kernel.execute(SHOW) == shown
    finally:
        kernel.close()


def snapshots(hub, user) -> list[dict]:
    backend = LocalBackend(str(hub.data_dir / "snapshots"))
    out = []
    for name in backend.list_objects(user, ".json"):
        if name.endswith(".report.json") or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name[:-5]):
            continue
        try:
            out.append(dict(json.loads(backend.get_object(user, name)), id=name[:-5]))
        except ValueError:
            continue
    return sorted(out, key=lambda m: m.get("created") or 0)


def hibernated_id(hub, user) -> str:
    return re.findall(rf"{user}: hibernated into snapshot (\S+)", hub.log())[-1]


# -- the "done when" -----------------------------------------------------------------

def test_stop_and_start_in_another_region_bring_back_files_session_and_variables(hub):
    hub.spawn("ada", SITE)
    shown = make_session(hub, "ada")
    assert shown.startswith("42 99.0 [[0.0, 1.5")
    workspace = node_of(hub, "ada")["info"]["workspace"]
    assert os.path.isfile(os.path.join(workspace, "data", "results.csv"))

    hub.stop_server("ada")  # REST DELETE
    assert not os.path.exists(workspace), "the ephemeral region deleted the workspace"
    [snap] = [s for s in snapshots(hub, "ada") if s["id"] == hibernated_id(hub, "ada")]
    assert snap["meta"]["kind"] == "hibernate" and snap["meta"]["server"] == ""
    assert snap["meta"]["source"]["region"] == "site-a"
    assert [k["path"] for k in snap["meta"]["kernels"]] == ["analysis.ipynb"]

    hub.spawn("ada", {"provider": "local", "region": "site-b"})
    assert_restored(hub, "ada", shown, workspace)
    assert "Restoring" in hub.log() and "from your last session" in hub.log()

    hub.stop_server("ada")
    hub.spawn("ada", dict(SITE, restore="none"))
    api = user_api(hub, "ada")
    assert api("GET", "api/contents/data/results.csv").status_code == 404, "restore none starts empty"
    assert api("GET", "api/sessions").json() == []
    hub.stop_server("ada")


def test_a_snapshot_of_another_users_server_is_not_found(hub):
    theirs = hibernated_id(hub, "ada")
    hub.ensure_user("mallory")
    for sid in (theirs, "0123456789abcdef0123456789abcdef"):
        r = hub.api("POST", "/users/mallory/server", json=dict(SITE, restore=sid))
        assert r.status_code == 404, r.text
        assert r.json()["message"].startswith("restore: no snapshot"), r.text
        assert hub.server_model("mallory") is None
    assert not snapshots(hub, "mallory")


# -- a stop whose snapshot fails keeps the node ---------------------------------------------

def test_a_full_quota_keeps_the_node_and_says_why(hub):
    hub.spawn("bob", SITE)
    kernel = hub.kernel("bob")
    kernel.execute("import os\nfor i in range(6):\n    open(f'big{i}.bin', 'wb').write(os.urandom(5 << 20))")
    kernel.close()
    node = node_of(hub, "bob")
    hub.kept_pids.append(node["info"]["pid"])
    [token] = server_tokens(hub, "bob")
    hub.stop_server("bob")
    assert server_tokens(hub, "bob") == [token], "the kept node's token stays valid for a retry"

    assert psutil.pid_exists(node["info"]["pid"]), "the node was not terminated"
    assert os.path.getsize(os.path.join(node["info"]["workspace"], "big5.bin")) == 5 << 20
    [kept] = stopped_state(hub, "bob")["kept"]
    assert "snapshot quota full (used" in kept["reason"], kept
    assert [n["id"] for n in kept["nodes"]] == [node["id"]]
    assert re.search(r"bob: stopped WITHOUT terminating node \S+ on local: the snapshot failed: "
                     r".*snapshot quota full \(used", hub.log())
    home = login(hub, "bob").get(f"{hub.url}/hub/home", timeout=30).text
    assert "its node was kept" in home and "snapshot quota full (used" in home
    # the reaper's sweeps (every second, 5 s of grace) leave the kept node alone
    report = hub.data_dir / "reaper-report.json"
    wait_for(lambda: time.time() - psutil.Process(node["info"]["pid"]).create_time() > 6, 90,
             "the node is past the reaper's grace")
    swept = time.time()
    wait_for(lambda: report.exists() and report.stat().st_mtime > swept + 1, 90, "a reaper sweep after that")
    assert psutil.pid_exists(node["info"]["pid"])

    # an admin decides: the CLI lists the kept node, then discards it
    env = dict(os.environ, JUPYTERHUB_API_TOKEN=hub.token)
    cli = [sys.executable, "-m", "cloudhop.hub.cli", "nodes"]
    listed = subprocess.run([*cli, "list", "--url", hub.url], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and node["id"] in listed.stdout and "bob/(default)" in listed.stdout, listed
    r = hub.api("POST", f"/cloudhop/kept/{node['id']}", json={"action": "retry"})
    assert r.status_code == 502 and "snapshot quota full (used" in r.json()["message"], r.text
    gone = subprocess.run([*cli, "terminate", node["id"], "--discard", "--url", hub.url], env=env,
                          capture_output=True, text=True, timeout=120)
    assert gone.returncode == 0 and "terminated without a snapshot" in gone.stdout, gone
    wait_for(lambda: not psutil.pid_exists(node["info"]["pid"]), 90, "the discarded node is gone")
    hub.kept_pids.remove(node["info"]["pid"])
    assert not stopped_state(hub, "bob").get("kept")
    assert server_tokens(hub, "bob") == [], "the discarded node's token went with it"
    assert hub.api("POST", f"/cloudhop/kept/{node['id']}", json={"action": "discard"}).status_code == 404


def test_a_corrupt_chunk_fails_the_start_naming_the_file_and_writes_nothing(hub):
    hub.spawn("dan", {"provider": "local", "region": "site-c"})
    kernel = hub.kernel("dan")
    kernel.execute("import os\nos.makedirs('data', exist_ok=True)\nopen('data/b.bin', 'wb').write(os.urandom(300000))")
    kernel.close()
    workspace = Path(node_of(hub, "dan")["info"]["workspace"])
    hub.stop_server("dan")
    [snap] = snapshots(hub, "dan")
    (workspace / "data" / "b.bin").unlink()  # the workspace as a fresh node would have it
    before = sorted(str(p.relative_to(workspace)) for p in workspace.rglob("*"))
    backend = LocalBackend(str(hub.data_dir / "snapshots"))
    entry = next(f for f in snap["files"] if f["path"] == "data/b.bin")
    with open(backend._chunk_path("dan", entry["chunks"][-1][0]), "r+b") as f:
        f.write(b"\0\1\2\3")

    r = hub.api("POST", "/users/dan/server", json={"provider": "local", "region": "site-c"})
    assert r.status_code in (201, 202, 500), r.text
    wait_for(lambda: hub.server_model("dan") is None, 90, "the start failed")
    assert re.search(r"Restoring your last session failed: data/b\.bin: could not be restored", hub.log())
    after = {str(p.relative_to(workspace)) for p in workspace.rglob("*")}
    # the server's own start-up files aside, nothing of the snapshot was written
    assert not (after - set(before)) & {f["path"] for f in snap["files"]}, "nothing of the restore written"
    assert not (workspace / "data" / "b.bin").exists() and not [p for p in after if ".cloudhop-" in p]
    assert [s["id"] for s in snapshots(hub, "dan")] == [snap["id"]], "the snapshot stays; no other was taken"


# -- the hub killed while a stop takes its snapshot ----------------------------------------

def test_a_hub_killed_mid_snapshot_never_terminates_the_node(hub, holds):
    hub.spawn("eve", SITE)
    api = user_api(hub, "eve")
    assert api("PUT", "api/contents/keep.txt", json={"type": "file", "format": "text",
                                                      "content": "keep\n"}).status_code in (200, 201)
    node = node_of(hub, "eve")
    (holds / "hibernate").touch()
    try:
        assert hub.api("DELETE", "/users/eve/server").status_code in (202, 204)
        wait_for(lambda: "eve: stopping: snapshotting" in hub.log(), 90, "the stop's snapshot began")
        time.sleep(1)
        hub.kill()
    finally:
        (holds / "hibernate").unlink()
    assert psutil.pid_exists(node["info"]["pid"])
    hub.start()
    wait_for(lambda: (hub.server_model("eve") or {}).get("ready"), 90, "eve's server runs again")
    assert psutil.pid_exists(node["info"]["pid"])
    assert api("GET", "api/contents/keep.txt").json()["content"] == "keep\n"
    hub.stop_server("eve")
    assert not psutil.pid_exists(node["info"]["pid"]) and not os.path.exists(node["info"]["workspace"])
    assert snapshots(hub, "eve")[-1]["id"] == hibernated_id(hub, "eve")


def test_a_store_that_is_down_keeps_the_node(hub):
    hub.spawn("fay", SITE)
    node = node_of(hub, "fay")
    hub.kept_pids.append(node["info"]["pid"])
    store = [p for p in psutil.Process(hub.proc.pid).children(recursive=True)
             if "cloudhop.hub.snapshot_store" in " ".join(p.cmdline())]
    assert len(store) == 1
    store[0].kill()
    wait_for(lambda: not store[0].is_running() or store[0].status() == psutil.STATUS_ZOMBIE, 90, "the store is gone")
    hub.stop_server("fay")
    assert psutil.pid_exists(node["info"]["pid"])
    [kept] = stopped_state(hub, "fay")["kept"]
    assert "snapshot store unreachable" in kept["reason"], kept
