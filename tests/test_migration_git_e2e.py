"""End to end: a project with a git repository holding unpushed commits, a virtualenv,
``node_modules`` and one file over the size limit moves between two local regions. The
repository and the environments arrive whole; the big file is listed, so the source keeps
running until the user accepts."""

from __future__ import annotations

import inspect
import json
import time

import pytest
from project_double import look_at, make_project
from test_migration_e2e import REGIONS, UserAPI

LIMIT = 1 << 20
BIG = 2 << 20
# the servers' own settings, written in the hub's config: the hub passes them on to each
# server (the big file below is left out only if they reach it)
CONFIG = REGIONS + f"""
c.CloudhopMigration.max_file_bytes = {LIMIT}
c.CloudhopMigration.stop_delay = 0
"""
SOURCE = inspect.getsource(make_project) + inspect.getsource(look_at) + "import json, os\n"


def poll(alice, mid, states=("awaiting-accept", "done", "failed"), timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = alice("GET", f"cloudhop/api/migrations/{mid}").json()
        if m["state"] in states:
            return m
        time.sleep(0.5)
    raise TimeoutError(f"migration still {m['state']}")


@pytest.mark.e2e
def test_a_git_repository_venv_and_node_modules_move_and_the_source_waits_for_the_users_accept(hub_factory):
    hub = hub_factory(CONFIG)
    alice = UserAPI(hub, "alice")
    hub.spawn("alice", {"provider": "local", "region": "site-a"})
    r = alice("POST", "api/sessions", json={"path": "work.ipynb", "name": "work.ipynb", "type": "notebook",
                                            "kernel": {"name": "python3"}})
    assert r.status_code == 201, r.text
    kernel = hub.kernel("alice", kernel_id=r.json()["kernel"]["id"])
    # made by the server's own user, with real git and venv, in its workspace
    before = json.loads(kernel.execute(SOURCE + f"print(json.dumps(make_project(os.getcwd(), {BIG})))",
                                       timeout=120))
    kernel.close()
    assert before["ahead"] == "3" and before["status"] == [0, ""]

    r = alice("POST", "cloudhop/api/migrations", json={"provider": "local", "region": "site-b"})
    assert r.status_code == 202, r.text
    mid = r.json()["id"]
    m = poll(alice, mid)
    assert m["state"] == "awaiting-accept", (m, hub.log())
    assert m["left_out"] == "1 file (2 MiB)"
    assert [s for s in m["skipped"] if not s.get("cache") and "kind" in s] == [
        {"path": "data/big.bin", "kind": "regular file", "size": BIG, "reason": "over the size limit of 1 MiB",
         "cache": False}]
    assert {"path": "lib/__pycache__", "kind": "directory", "size": 100, "reason": "cache", "cache": True} \
        in m["skipped"]
    target = m["target_server"]

    # both run; the source does not stop on its own (stop_delay is 0 here)
    time.sleep(3)
    assert poll(alice, mid)["state"] == "awaiting-accept"
    assert hub.server_model("alice", "")["ready"] and hub.server_model("alice", target)["ready"]

    # the target: the same commits, still 3 ahead of origin, a clean tree, fsck ok; the venv
    # and node_modules with their links
    kernel = hub.kernel("alice", server=target)
    after = json.loads(kernel.execute(SOURCE + "print(json.dumps(look_at(os.getcwd())))", timeout=120))
    kernel.close()
    assert after["log"] == before["log"] and len(after["log"]) == 4
    assert after["status"] == [0, ""] and after["ahead"] == "3" and after["fsck"] == 0
    assert after["empty_ref_dirs"] == ["refs/heads", "refs/tags"] and after["train_mode"] == "0o755"
    assert after["venv_links"] == before["venv_links"] and after["venv_prefix_is_here"]
    assert after["node_link"] == before["node_link"] and after["node_script"] == before["node_script"]
    assert after["empty_pkg"]
    assert alice("GET", "api/contents/data/big.bin", server=target).status_code == 404

    # only the owner may accept, and only a move that exists
    bob = UserAPI(hub, "bob")
    assert bob("POST", f"cloudhop/api/migrations/{mid}/accept", owner="alice", json={}).status_code == 403
    assert alice("POST", "cloudhop/api/migrations/ffffffffffff/accept", json={}).status_code == 404
    assert hub.server_model("alice", "")["ready"]

    r = alice("POST", f"cloudhop/api/migrations/{mid}/accept", json={})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "done" and r.json()["move_options"] == {"accept_skipped": True}
    deadline = time.monotonic() + 60
    while hub.server_model("alice", "") is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert hub.server_model("alice", "") is None
    assert hub.server_model("alice", target)["ready"]
