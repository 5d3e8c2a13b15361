"""A move cut off by a fault leaks nothing (docs/migration.md, "Faults").

One real hub with two local regions serves every test; each test moves its own user's
running server from site-a to site-b, holds the move at a phase (the source waits while
``$CLOUDHOP_MOVE_HOLD/<phase>`` exists, :func:`cloudhop.extensions.migrate.hold`; a
target server waits to start while ``target-start`` exists, by a Jupyter config file in
that folder), kills a process with SIGKILL there - the hub, the source server or the
target server - then checks the outcome: either the move finished, or the source runs unchanged (its
file and a kernel variable) and no target is left (not in the hub's API, no process of
it alive). After each, a second move of the same server succeeds.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests
from hubfixture import HubProcess
from test_migration_e2e import UserAPI, wait_migration

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

CONFIG = """
c.LocalProvider.regions = {{"site-a": {{"gpus": "none"}}, "site-b": {{"gpus": "none"}}}}
c.Spawner.poll_interval = 2  # a killed server is noticed within seconds
c.Spawner.environment = {{"CLOUDHOP_MOVE_HOLD": {hold!r}, "JUPYTER_CONFIG_PATH": {hold!r}}}
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 1}}  # a spawn request answers while it is pending
c.JupyterHub.init_spawners_timeout = 1  # a restarted hub answers while it checks a target still starting
c.CloudhopMoves.interval = 1
c.CloudhopMoves.finish_after = 3
"""
SITE_B = {"provider": "local", "region": "site-b"}
FILE = "keep me\n"
SHOW = "print(x, name)"
#: read by every server at start: a move's target (every named server here) waits while
#: ``target-start`` is there
TARGET_START = """
import os, time
while os.environ.get("JUPYTERHUB_SERVER_NAME") and os.path.exists({hold!r}):
    time.sleep(0.1)
"""


@pytest.fixture(scope="module")
def holds():
    """The folder a move's source looks in for holds (every account may look in it)."""
    folder = Path(tempfile.mkdtemp(prefix="cloudhop-holds-"))
    folder.chmod(0o755)
    (folder / "jupyter_server_config.py").write_text(TARGET_START.format(hold=str(folder / "target-start")))
    (folder / "jupyter_server_config.py").chmod(0o644)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def hub(tmp_path_factory, holds):
    hub = HubProcess(tmp_path_factory.mktemp("faults"), extra_config=CONFIG.format(hold=str(holds)))
    hub.start()
    yield hub
    if hub.proc.poll() is not None:
        hub.start()  # a test left it killed: start it to stop the servers
    stop_all(hub)
    hub.stop()


def stop_all(hub) -> None:
    """Stop every server at once, then wait until none runs."""
    users = hub.api("GET", "/users").json()
    for user in users:
        for name in user.get("servers", {}):
            hub.api("DELETE", f"/users/{user['name']}/servers/{name}")
    wait_for("every server stopped", lambda: not any(u.get("servers") for u in hub.api("GET", "/users").json()),
             timeout=120)


@contextlib.contextmanager
def held(holds: Path, *phases: str):
    """Moves wait at each of ``phases`` until the block ends."""
    for phase in phases:
        (holds / phase).touch()
    try:
        yield
    finally:
        for phase in phases:
            (holds / phase).unlink(missing_ok=True)


def wait_for(what, check, timeout=90, hub=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise TimeoutError(f"{what} after {timeout}s" + (f"\n{hub.log()}" if hub else ""))


def record(me: UserAPI) -> dict | None:
    """The hub's record of the last move of ``me``'s default server."""
    r = requests.get(f"{me.hub.url}/hub/api/cloudhop/moves/{me.user}", timeout=30,
                     headers={"Authorization": f"token {me.token}"})
    assert r.status_code == 200, r.text
    moves = r.json()["moves"]
    return moves[-1] if moves else None


def start_project(hub, user: str) -> UserAPI:
    """``user``'s server on site-a, a file in its workspace and ``x`` and ``name`` in a
    notebook's kernel."""
    me = UserAPI(hub, user)
    hub.spawn(user, {"provider": "local", "region": "site-a"})
    r = me("PUT", "api/contents/keep.txt", json={"type": "file", "format": "text", "content": FILE})
    assert r.status_code in (200, 201), r.text
    r = me("POST", "api/sessions", json={"path": "work.ipynb", "name": "work.ipynb", "type": "notebook",
                                         "kernel": {"name": "python3"}})
    assert r.status_code == 201, r.text
    kernel = hub.kernel(user, kernel_id=r.json()["kernel"]["id"])
    kernel.execute(f"x = 42\nname = {user!r}")
    kernel.close()
    return me


def show(hub, me: UserAPI, server: str = "") -> str:
    """``x`` and ``name`` as the kernel of ``me``'s notebook on ``server`` prints them."""
    sessions = me("GET", "api/sessions", server=server).json()
    assert [s["path"] for s in sessions] == ["work.ipynb"], sessions
    kernel = hub.kernel(me.user, server=server, kernel_id=sessions[0]["kernel"]["id"])
    try:
        return kernel.execute(SHOW)
    finally:
        kernel.close()


def move(me: UserAPI) -> str:
    r = me("POST", "cloudhop/api/migrations", json=SITE_B)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def processes(hub, user: str, server: str) -> list[psutil.Process]:
    """The server's process and every process it started (its kernels)."""
    model = hub.server_model(user, server)
    root = psutil.Process(model["state"]["node"]["info"]["pid"])
    return [root, *root.children(recursive=True)]


def assert_gone(hub, me: UserAPI, target: str, procs: list[psutil.Process]) -> None:
    """No server ``target`` in the hub's API, not even a stopped one, and none of its
    processes alive."""
    servers = hub.api("GET", f"/users/{me.user}?include_stopped_servers=1").json()["servers"]
    assert target not in servers and set(servers) <= {""}, (servers, hub.log())
    _gone, alive = psutil.wait_procs(procs, timeout=30)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], [p.cmdline() for p in alive]


def assert_source_unchanged(hub, me: UserAPI) -> None:
    assert hub.server_model(me.user, "")["ready"]
    assert me("GET", "api/contents/keep.txt").json()["content"] == FILE
    assert show(hub, me) == f"42 {me.user}\n"


def assert_a_second_move_succeeds(hub, me: UserAPI) -> None:
    m = wait_migration(me, move(me))
    assert m["state"] == "done", (m["error"], m, hub.log())
    assert list(m["timeline"]) == ["snapshotting", "launching", "restoring", "verifying", "done"]
    assert me("GET", "api/contents/keep.txt", server=m["target_server"]).json()["content"] == FILE
    assert show(hub, me, m["target_server"]) == f"42 {me.user}\n"
    assert record(me)["phase"] == "done"


def settled(me: UserAPI) -> dict | None:
    rec = record(me)
    return rec if rec and rec["settled"] else None


# -- the hub killed in each phase ---------------------------------------------------------


@pytest.mark.parametrize("phase", ["snapshotting", "launching", "restoring", "verifying"])
def test_a_hub_killed_mid_move_rolls_the_move_back_on_restart(hub, holds, phase):
    """At launching the target's process runs but its server has not answered yet: the
    hub is killed mid-spawn. In the later phases the target runs."""
    me = start_project(hub, f"hub-{phase[:5]}")
    with held(holds, phase, *(["target-start"] if phase == "launching" else [])):
        mid = move(me)
        wait_for(f"the move reaching {phase}", lambda: (record(me) or {}).get("phase") == phase, hub=hub)
        target = record(me)["target"]
        procs = []
        if phase == "launching":  # the hub answered the spawn request (then the source holds)
            wait_for("the spawn pending", lambda: f"202 POST /hub/api/users/{me.user}/servers/{target}" in hub.log(),
                     hub=hub)
            assert hub.server_model(me.user, target)["pending"] == "spawn"
            procs = processes(hub, me.user, target)
        elif phase != "snapshotting":
            procs = processes(hub, me.user, target)
        hub.kill()
        (holds / "target-start").unlink(missing_ok=True)  # the target comes up while the hub is away
        hub.start()
        rec = wait_for("the reconciler settling the move", lambda: settled(me), hub=hub)
        assert rec["phase"] == "failed" and rec["error"] == f"the hub restarted while the move was {phase}"
        assert_gone(hub, me, target, procs)
    m = wait_migration(me, mid)  # released: the source learns the move was ended
    assert m["state"] == "failed" and m["error"].startswith(f"{phase}:"), m
    assert m["timeline"]["snapshotting"] <= m["timeline"][phase] <= m["timeline"]["failed"]
    assert_source_unchanged(hub, me)
    assert_gone(hub, me, target, procs)  # nothing came back once the source went on
    assert_a_second_move_succeeds(hub, me)


def test_a_hub_killed_once_the_move_was_done_finishes_it_on_restart(hub, holds):
    """The hub recorded ``done`` and died before the source stopped itself: the
    reconciler finishes the move (stops the source); the target keeps everything."""
    me = start_project(hub, "hub-done")
    with held(holds, "done"):
        move(me)
        wait_for("the move done", lambda: (record(me) or {}).get("phase") == "done", hub=hub)
        target = record(me)["target"]
        source = processes(hub, me.user, "")
        hub.kill()
        hub.start()
        rec = wait_for("the reconciler finishing the move", lambda: settled(me), hub=hub)
        assert rec["phase"] == "done" and rec["note"] == "finished: the source has stopped"
        assert hub.server_model(me.user, "") is None, "the source stopped"
        _gone, alive = psutil.wait_procs(source, timeout=30)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert hub.server_model(me.user, target)["ready"]
    assert me("GET", "api/contents/keep.txt", server=target).json()["content"] == FILE
    assert show(hub, me, target) == f"42 {me.user}\n"


# -- a server killed mid-move -------------------------------------------------------------


def test_a_source_killed_mid_move_leaves_no_target_and_its_files_intact(hub, holds):
    me = start_project(hub, "src-killed")
    with held(holds, "restoring"):
        move(me)
        wait_for("the move restoring", lambda: (record(me) or {}).get("phase") == "restoring", hub=hub)
        target = record(me)["target"]
        procs = processes(hub, me.user, target)
        source = processes(hub, me.user, "")
        source[0].send_signal(signal.SIGKILL)
        rec = wait_for("the reconciler settling the move", lambda: settled(me), hub=hub)
        assert rec["phase"] == "failed" and rec["error"] == "the source server stopped while the move was restoring"
        assert_gone(hub, me, target, procs)
    assert hub.server_model(me.user, "") is None, "the source stopped"
    # the source's workspace is intact: started again, it has its file; a second move works
    hub.spawn(me.user, {"provider": "local", "region": "site-a"})
    assert me("GET", "api/contents/keep.txt").json()["content"] == FILE
    kernel = hub.kernel(me.user, kernel_id=me("POST", "api/sessions", json={
        "path": "work.ipynb", "name": "work.ipynb", "type": "notebook", "kernel": {"name": "python3"}}).json()["kernel"]["id"])
    kernel.execute(f"x = 42\nname = {me.user!r}")
    kernel.close()
    assert_a_second_move_succeeds(hub, me)


def test_a_target_killed_mid_move_fails_the_move_and_leaves_the_source_unchanged(hub, holds):
    me = start_project(hub, "tgt-killed")
    with held(holds, "restoring"):
        mid = move(me)
        wait_for("the move restoring", lambda: (record(me) or {}).get("phase") == "restoring", hub=hub)
        target = record(me)["target"]
        procs = processes(hub, me.user, target)
        procs[0].send_signal(signal.SIGKILL)
        wait_for("the hub seeing the target stop",
                 lambda: (hub.server_model(me.user, target) or {"stopped": True})["stopped"], hub=hub)
    m = wait_migration(me, mid)
    assert m["state"] == "failed" and m["error"].startswith(("restoring:", "verifying:")), m
    rec = wait_for("the move settled", lambda: settled(me), hub=hub)
    assert rec["phase"] == "failed"
    assert_gone(hub, me, target, procs)
    assert_source_unchanged(hub, me)
    assert_a_second_move_succeeds(hub, me)


# -- the records' API ---------------------------------------------------------------------


def test_only_the_owner_reads_and_reports_a_moves_record_and_only_the_reconciler_settles(hub):
    ada, eve = UserAPI(hub, "rec-ada"), UserAPI(hub, "rec-eve")
    hub.spawn("rec-ada", {"provider": "local", "region": "site-a"})
    url = f"{hub.url}/hub/api/cloudhop/moves"

    def call(method, path, token, body=None):
        return requests.request(method, f"{url}{path}", json=body, timeout=30,
                                headers={"Authorization": f"token {token}"})

    grant = call("POST", "/rec-ada", ada.token, {"target": "site-b-rec"})
    assert grant.status_code == 201, grant.text
    mid = grant.json()["move"]
    assert call("GET", "/rec-ada", ada.token).json()["moves"][0]["phase"] == "snapshotting"
    # another user: as if there were no such server; no list of every move
    assert call("GET", "/rec-ada", eve.token).status_code == 404
    assert call("PATCH", "/rec-ada", eve.token, {"move": mid, "phase": "failed"}).status_code == 404
    assert call("GET", "", eve.token).status_code == 403
    assert call("GET", "", ada.token).status_code == 403
    # the owner reports progress, may not settle, and cannot go back or be done without a target
    assert call("PATCH", "/rec-ada", ada.token, {"move": mid, "phase": "launching"}).json()["phase"] == "launching"
    r = call("PATCH", "/rec-ada", ada.token, {"move": mid, "settled": True})
    assert r.status_code == 403 and r.json()["message"].startswith("settled:")
    r = call("PATCH", "/rec-ada", ada.token, {"move": mid, "phase": "snapshotting"})
    assert r.status_code == 409 and r.json()["message"].startswith("phase:")
    r = call("PATCH", "/rec-ada", ada.token, {"move": mid, "phase": "done"})
    assert r.status_code == 409 and "not running" in r.json()["message"]
    r = call("PATCH", "/rec-ada", ada.token, {"move": "nope", "phase": "failed"})
    assert r.status_code == 404 and r.json()["message"].startswith("move:")
    # failing it revokes the move's token
    token = grant.json()["token"]
    assert call("PATCH", "/rec-ada", ada.token, {"move": mid, "phase": "failed", "error": "x"}).status_code == 200
    assert requests.get(f"{hub.url}/hub/api/user", headers={"Authorization": f"token {token}"},
                        timeout=30).status_code == 403
    wait_for("the reconciler settling the failed move", lambda: settled(ada), hub=hub)
    hub.stop_server("rec-ada")
