"""End to end on a real `cloudhop up` hub: the hub's snapshot API (the owner and an admin
list a line, another user gets 404, only the owner deletes), class snapshots (publishing
needs a publisher, an existing name needs replace, students in the group see the class
and start a server from it with the files there; a student outside the group is refused
with 404), all in one hub."""

from __future__ import annotations

import random

import pytest
import requests

from cloudhop.extensions.snapshot import StoreClient, take_snapshot

pytestmark = pytest.mark.e2e

CONFIG = """
c.CloudhopStore.class_publishers = ["teachers"]
c.CloudhopStore.keep_snapshots = 2
"""


def token_of(hub, user: str) -> str:
    hub.ensure_user(user)
    reply = hub.api("POST", f"/users/{user}/tokens", json={"note": "snapshot line test"})
    assert reply.status_code == 201, reply.text
    return reply.json()["token"]


def store_key(hub) -> str:
    """The hub's key, read from its store service's environment (the tests run as root)."""
    import psutil

    for proc in psutil.process_iter():
        try:
            if "cloudhop.hub.snapshot_store" in " ".join(proc.cmdline()):
                env = proc.environ()
                if str(hub.data_dir) in env.get("CLOUDHOP_STORE_DIR", ""):
                    return env["CLOUDHOP_STORE_HUB_KEY"]
        except (psutil.Error, KeyError):
            continue
    raise AssertionError("the hub's store service was not found")


def snapshot(hub, user, token, ws, meta):
    return take_snapshot(ws, StoreClient(f"{hub.url}/services/cloudhop-store/", user, token), meta=meta)[0]


def test_snapshot_api_and_class_snapshots(hub_factory, tmp_path):
    hub = hub_factory(extra_config=CONFIG)
    tokens = {u: token_of(hub, u) for u in ("ada", "ben", "teacher", "stu", "out")}
    for group, users in (("teachers", ["teacher"]), ("students", ["stu"])):
        reply = hub.api("POST", f"/groups/{group}", json={"users": users})
        assert reply.status_code == 201, reply.text

    ws = tmp_path / "ada"
    ws.mkdir()
    (ws / "notes.txt").write_text("ada's notes\n")
    ids = [snapshot(hub, "ada", tokens["ada"], ws, {"kind": "migration", "server": ""}) for _ in range(3)]

    # the owner lists her default server's line: newest first, kept to keep_snapshots
    line = hub.api("GET", "/cloudhop/snapshots/ada?server=", token=tokens["ada"])
    assert line.status_code == 200, line.text
    assert [s["id"] for s in line.json()["snapshots"]] == [ids[2], ids[1]]
    assert line.json()["snapshots"][0]["kind"] == "migration"
    assert hub.api("GET", "/cloudhop/snapshots/ada").status_code == 200  # an admin
    other = hub.api("GET", "/cloudhop/snapshots/ada", token=tokens["ben"])
    assert other.status_code == 404
    # only the owner deletes
    assert hub.api("DELETE", f"/cloudhop/snapshots/ada/{ids[2]}", token=tokens["ben"]).status_code == 404
    assert hub.api("DELETE", f"/cloudhop/snapshots/ada/{ids[2]}", token=tokens["ada"]).status_code == 204
    left = hub.api("GET", "/cloudhop/snapshots/ada", token=tokens["ada"]).json()["snapshots"]
    assert [s["id"] for s in left] == [ids[1]]

    # class snapshots: a teacher publishes, students in the group start from it
    lesson = tmp_path / "lesson"
    lesson.mkdir()
    (lesson / "lesson.txt").write_text("week 3: gradients\n")
    (lesson / "data.bin").write_bytes(random.Random(1).randbytes(300_000))
    prepared = snapshot(hub, "teacher", tokens["teacher"], lesson, {"kind": "hibernate", "server": "lab"})
    body = {"snapshot": prepared, "name": "week3", "share": "group:students"}
    refused = hub.api("POST", "/cloudhop/classes", token=tokens["ada"], json={**body, "snapshot": ids[1]})
    assert refused.status_code == 403 and "class_publishers" in refused.json()["message"]
    assert hub.api("POST", "/cloudhop/classes", token=tokens["teacher"], json=body).status_code == 201
    again = hub.api("POST", "/cloudhop/classes", token=tokens["teacher"], json=body)
    assert again.status_code == 409 and "replace" in again.json()["message"]
    assert [c["name"] for c in hub.api("GET", "/cloudhop/classes", token=tokens["stu"]).json()["classes"]] == ["week3"]
    assert hub.api("GET", "/cloudhop/classes", token=tokens["out"]).json()["classes"] == []

    hub.spawn("stu", {"provider": "local", "gpu": "none", "restore": "class:week3"})
    got = hub.server_api("GET", "stu", "api/contents/lesson.txt")
    assert got.status_code == 200 and got.json()["content"] == "week 3: gradients\n"
    mine = hub.api("GET", "/cloudhop/snapshots/stu", token=tokens["stu"]).json()["snapshots"]
    assert [(s["kind"], s["class"], s["server"]) for s in mine] == [("class", "week3", "")]

    outsider = hub.api("POST", "/users/out/server", json={"provider": "local", "gpu": "none",
                                                          "restore": "class:week3"})
    assert outsider.status_code == 404, outsider.text
    assert "week3" in outsider.json()["message"]

    # an instructor's running server publishes itself (the server's snapshot endpoint)
    hub.spawn("teacher", {"provider": "local", "gpu": "none", "restore": "none"})
    auth = {"Authorization": f"token {tokens['teacher']}"}
    put = requests.put(f"{hub.url}/user/teacher/api/contents/week4.txt", headers=auth, timeout=30,
                       json={"type": "file", "format": "text", "content": "week 4\n"})
    assert put.status_code in (200, 201), put.text
    session = requests.post(f"{hub.url}/user/teacher/api/sessions", headers=auth, timeout=60,
                            json={"path": "warm.ipynb", "name": "warm.ipynb", "type": "notebook",
                                  "kernel": {"name": "python3"}})
    assert session.status_code == 201, session.text
    kernel = hub.kernel("teacher", kernel_id=session.json()["kernel"]["id"])
    kernel.execute("import numpy as np\nx = 42\nw = np.arange(5.0)")
    kernel.close()
    published = requests.post(f"{hub.url}/user/teacher/cloudhop/api/snapshots", headers=auth, timeout=120,
                              json={"name": "week4", "share": "all", "kernels": True})
    assert published.status_code == 200, published.text
    assert published.json()["class"]["name"] == "week4"
    assert "week4" in [c["name"] for c in hub.api("GET", "/cloudhop/classes", token=tokens["ada"]).json()["classes"]]
    again = requests.post(f"{hub.url}/user/teacher/cloudhop/api/snapshots", headers=auth, timeout=120,
                          json={"name": "week4", "share": "all", "kernels": False})
    assert again.status_code == 409 and "replace" in again.json()["message"]
    # a student starting from it has the files and the warm variables, in their own server
    hub.spawn("ada", {"provider": "local", "gpu": "none", "restore": "class:week4"})
    assert hub.server_api("GET", "ada", "api/contents/week4.txt").json()["content"] == "week 4\n"
    sessions = hub.server_api("GET", "ada", "api/sessions").json()
    assert [s["path"] for s in sessions] == ["warm.ipynb"]
    kernel = hub.kernel("ada", kernel_id=sessions[0]["kernel"]["id"])
    assert kernel.execute("print(x, w.sum())").strip().splitlines()[-1] == "42 10.0"
    # the hub's key to the store is in the store's environment only: not in a user's
    # server or kernel, not in the hub's log
    key = store_key(hub)
    env = kernel.execute("import os; print(sorted(os.environ.items()))")
    assert key not in env and "CLOUDHOP_STORE_HUB_KEY" not in env
    assert key not in hub.log_path.read_text(errors="replace")
    kernel.close()
