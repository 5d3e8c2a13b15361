"""End to end: move a running server between two local regions through the REST API."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "03-move-my-project.ipynb"
REGIONS = """
c.LocalProvider.regions = {"site-a": {"gpus": "none"}, "site-b": {"gpus": "none"}}
c.CloudhopMigration.stop_delay = 30
"""
# a hub whose site-b servers never start: the spawn hook refuses them
FAILING_TARGET = REGIONS + """
def _refuse_site_b(spawner):
    if spawner.user_options.get("region") == "site-b":
        raise RuntimeError("site-b is down for maintenance")
c.Spawner.pre_spawn_hook = _refuse_site_b
"""
STATE = "import numpy as np\nx = 42\narr = np.arange(12).reshape(3, 4) * 1.5\nd = {'k': [1, 2], 'name': 'run-7'}"
SHOW = "print(x, arr.tolist(), d)"


class UserAPI:
    """Calls a user's servers through the proxy with that user's own token."""

    def __init__(self, hub, user):
        hub.ensure_user(user)
        r = hub.api("POST", f"/users/{user}/tokens", json={"note": "e2e"})
        assert r.status_code == 201, r.text
        self.hub, self.user, self.token = hub, user, r.json()["token"]

    def __call__(self, method, path, server="", owner=None, **kw):
        owner = owner or self.user
        prefix = f"/user/{owner}/{server + '/' if server else ''}"
        return requests.request(method, f"{self.hub.url}{prefix}{path}", timeout=30,
                                headers={"Authorization": f"token {self.token}"}, **kw)


def start_project(hub, alice):
    hub.spawn("alice", {"provider": "local", "region": "site-a"})
    assert alice("PUT", "api/contents/data", json={"type": "directory"}).status_code in (200, 201)
    r = alice("PUT", "api/contents/data/results.csv", json={"type": "file", "format": "text", "content": "a,b\n1,2\n"})
    assert r.status_code in (200, 201), r.text
    r = alice("POST", "api/sessions", json={"path": "analysis.ipynb", "name": "analysis.ipynb", "type": "notebook",
                                            "kernel": {"name": "python3"}})
    assert r.status_code == 201, r.text
    kernel = hub.kernel("alice", kernel_id=r.json()["kernel"]["id"])
    kernel.execute(STATE)
    shown = kernel.execute(SHOW)
    kernel.close()
    return shown


def wait_migration(alice, mid, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = alice("GET", f"cloudhop/api/migrations/{mid}").json()
        if m["state"] in ("done", "failed"):
            return m
        time.sleep(0.5)
    raise TimeoutError(f"migration still {m['state']}")


@pytest.mark.e2e
def test_move_a_running_project_to_another_region(hub_factory):
    hub = hub_factory(REGIONS + "c.JupyterHub.authenticate_prometheus = False\n")  # for the metrics below
    alice = UserAPI(hub, "alice")
    shown = start_project(hub, alice)
    source_file = alice("GET", "api/contents/data/results.csv").json()["content"]

    bob = UserAPI(hub, "bob")
    r = bob("POST", "cloudhop/api/migrations", owner="alice", json={"region": "site-b"})
    assert r.status_code == 403
    r = alice("POST", "cloudhop/api/migrations", json={"provider": "local", "region": "site-b", "gpu_count": "two"})
    assert r.status_code == 400 and "gpu_count" in r.json()["message"]

    # values are checked by the hub against the offers and policy before anything is sent
    r = alice("POST", "cloudhop/api/migrations", json={"provider": "local", "region": "site-z"})
    assert r.status_code == 400 and r.json()["message"].startswith("region:") and "site-b" in r.json()["message"]
    r = alice("POST", "cloudhop/api/migrations", json={"provider": "local", "region": "site-b", "gpu": "none"})
    assert r.status_code == 202, r.text
    mid = r.json()["id"]
    assert bob("GET", f"cloudhop/api/migrations/{mid}", owner="alice").status_code == 403
    m = wait_migration(alice, mid)
    assert m["state"] == "done", (m, hub.log())
    assert m["variables"]["analysis.ipynb"] == ["arr", "d", "np", "x"]
    assert m["bytes_sent"] > 0 and m["target_url"].endswith(f"/{m['target_server']}/")
    target = m["target_server"]

    # the target: same file, same session path, same values in its kernel
    assert alice("GET", "api/contents/data/results.csv", server=target).json()["content"] == source_file
    sessions = alice("GET", "api/sessions", server=target).json()
    assert [s["path"] for s in sessions] == ["analysis.ipynb"]
    kernel = hub.kernel("alice", server=target, kernel_id=sessions[0]["kernel"]["id"])
    assert kernel.execute(SHOW) == shown == "42 [[0.0, 1.5, 3.0, 4.5], [6.0, 7.5, 9.0, 10.5], [12.0, 13.5, 15.0, 16.5]] {'k': [1, 2], 'name': 'run-7'}\n"
    kernel.close()
    model = hub.server_model("alice", target)
    assert model["user_options"]["region"] == "site-b"

    # the snapshot is alice's alone, through the hub's real token checks
    store = f"{hub.url}/services/cloudhop-store/api/users/alice/snapshots"
    mine = requests.get(store, headers={"Authorization": f"token {alice.token}"}, timeout=30)
    assert mine.status_code == 200 and [s["id"] for s in mine.json()["snapshots"]] == [m["snapshot"]]
    assert requests.get(store, headers={"Authorization": f"token {bob.token}"}, timeout=30).status_code == 403
    assert requests.get(f"{store}/{m['snapshot']}", headers={"Authorization": f"token {bob.token}"},
                        timeout=30).status_code == 403

    # and the source goes away
    deadline = time.monotonic() + 60
    while hub.server_model("alice", "") is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert hub.server_model("alice", "") is None

    # the hub's metrics count the move, its time and what it sent
    text = requests.get(f"{hub.url}/hub/metrics", timeout=30).text
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.labels.get("outcome") == "done"}
    assert samples["cloudhop_move_duration_seconds_count"] == 1
    assert samples["cloudhop_move_bytes_total"] == m["bytes_sent"]


@pytest.mark.e2e
def test_a_user_allowed_one_server_can_move_it_and_still_runs_one(hub_factory):
    """``max_servers: 1``: the move's target starts beside its source (it replaces it),
    the move is done, the source goes, and a second server is still refused."""
    hub = hub_factory(REGIONS + 'c.Policy.groups = {"default": {"max_servers": 1}}\n')
    alice = UserAPI(hub, "alice")
    shown = start_project(hub, alice)
    r = alice("POST", "cloudhop/api/migrations", json={"provider": "local", "region": "site-b", "gpu": "none"})
    assert r.status_code == 202, r.text
    m = wait_migration(alice, r.json()["id"])
    assert m["state"] == "done", (m, hub.log())
    sessions = alice("GET", "api/sessions", server=m["target_server"]).json()
    kernel = hub.kernel("alice", server=m["target_server"], kernel_id=sessions[0]["kernel"]["id"])
    assert kernel.execute(SHOW) == shown
    kernel.close()
    deadline = time.monotonic() + 60
    while hub.server_model("alice", "") is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert hub.server_model("alice", "") is None
    r = hub.api("POST", "/users/alice/servers/extra", json={"provider": "local", "region": "site-a", "gpu": "none"})
    assert r.status_code == 403 and "(max_servers)" in r.json()["message"], r.text


@pytest.mark.e2e
def test_a_target_that_fails_to_start_leaves_the_source_running_and_unchanged(hub_factory):
    hub = hub_factory(FAILING_TARGET)
    alice = UserAPI(hub, "alice")
    shown = start_project(hub, alice)
    r = alice("POST", "cloudhop/api/migrations", json={"provider": "local", "region": "site-b"})
    assert r.status_code == 202, r.text
    m = wait_migration(alice, r.json()["id"])
    assert m["state"] == "failed" and "launching" in m["error"], m
    assert "failed to start" in m["error"] or "maintenance" in m["error"]

    # the source still serves the same file and kernel; the target is gone
    assert hub.server_model("alice", "")["ready"]
    assert alice("GET", "api/contents/data/results.csv").json()["content"] == "a,b\n1,2\n"
    sessions = alice("GET", "api/sessions").json()
    kernel = hub.kernel("alice", kernel_id=sessions[0]["kernel"]["id"])
    assert kernel.execute(SHOW) == shown
    kernel.close()
    time.sleep(1)
    assert hub.server_model("alice", m["target_server"]) is None


@pytest.mark.e2e
def test_example_notebook_moves_itself_from_site_a_to_site_b(hub_factory):
    """notebooks/03 run cell by cell in a kernel of a site-a server, as a user would."""
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    hub = hub_factory(REGIONS)
    alice = UserAPI(hub, "alice")
    hub.spawn("alice", {"provider": "local", "region": "site-a"})
    r = alice("PUT", "api/contents/03-move-my-project.ipynb", json={"type": "notebook", "content": nb})
    assert r.status_code in (200, 201), r.text
    r = alice("POST", "api/sessions", json={"path": "03-move-my-project.ipynb", "type": "notebook",
                                            "name": "03-move-my-project.ipynb", "kernel": {"name": "python3"}})
    kernel = hub.kernel("alice", kernel_id=r.json()["kernel"]["id"])
    cells = [c.source for c in nb.cells if c.cell_type == "code"]
    first = kernel.execute(cells[0])
    assert first.startswith("state ready: (256, 256)")
    assert "VBox" in kernel.execute(cells[1])  # the panel: offers came from the hub
    assert "<Migration" in kernel.execute(cells[2])
    kernel.close()

    mid = alice("GET", "cloudhop/api/info").json()["migrations"][0]["id"]
    m = wait_migration(alice, mid)
    assert m["state"] == "done", (m, hub.log())
    sessions = alice("GET", "api/sessions", server=m["target_server"]).json()
    assert [s["path"] for s in sessions] == ["03-move-my-project.ipynb"]
    kernel = hub.kernel("alice", server=m["target_server"], kernel_id=sessions[0]["kernel"]["id"])
    assert kernel.execute(cells[3]) == first.replace("state ready:", "state here:")
    kernel.close()
    csv = alice("GET", "api/contents/results/summary.csv", server=m["target_server"])
    assert csv.status_code == 200 and csv.json()["content"].count("\n") == 4
