"""Ray end to end on the local provider, with one hub and one Ray cluster (Ray is slow
to start on small machines): a server with one worker is a Ray driver on a two-node
cluster; tasks run on the worker; the dashboard is proxied and authenticated; the
example notebook runs on the cluster; a killed worker is reported and replaced through
the server's REST API; a hub restart re-attaches; stopping the server leaves no Ray
process behind."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import nbformat
import psutil
import pytest
import requests
from nbclient import NotebookClient

from cloudhop.spawner.ray.commands import LOCAL_ONLY_ENV
from cloudhop.spawner.ray.node import read_phases
from cloudhop.spawner.ray.ports import claim_block

pytestmark = pytest.mark.e2e

SECRET = "hub-only-secret-ray-77c1"
NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "02-ray-on-gpus.ipynb"
OPTIONS = {"provider": "local", "gpu": "none", "ray": {"workers": 1, "gpu": "none", "gpu_count": 0}}


def wait_for(check, timeout: float, what: str, interval: float = 1.0, hub=None):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"{what} not seen in {timeout}s; last: {last!r}\n{node_logs(hub) if hub else ''}")


def node_logs(hub) -> str:
    """The tail of every node's log (what Ray printed), for a failure message."""
    out = []
    for path in sorted((hub.data_dir / "workspaces" / ".nodes").glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()
        out.append(f"== {path.name}\n" + "\n".join(lines[-25:]))
    return "\n".join(out)


def ray_status(hub) -> dict:
    r = hub.server_api("GET", "ada", "cloudhop/ray")
    assert r.status_code == 200, r.text
    return r.json()


def node_record(hub, node_id: str) -> dict:
    path = hub.data_dir / "workspaces" / ".nodes" / f"{node_id}.json"
    return json.loads(path.read_text())


def session_procs(sid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                out.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


def ray_procs_of(bases: set[int]) -> list[str]:
    """Command lines of live processes belonging to the Ray nodes on these port blocks."""
    marks = [f"/ray-{b}" for b in bases] + [f"--port-base={b}" for b in bases]
    found = []
    for p in psutil.process_iter(["cmdline", "name"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except psutil.Error:
            continue
        if any(m in cmd for m in marks):
            found.append(cmd[:200])
    return found


def test_ray_cluster_lifecycle(hub_factory):
    hub = hub_factory(env={"AWS_SECRET_ACCESS_KEY": SECRET})
    model = hub.spawn("ada", OPTIONS, timeout=180)
    state = model["state"]
    roles = sorted(n["role"] for n in state["nodes"])
    assert roles == ["notebook", "ray-worker"], state["nodes"]
    address = state["ray"]["address"]
    head_base = state["ray"]["port_base"]
    worker_id = next(n["id"] for n in state["nodes"] if n["role"] == "ray-worker")
    # the notebook server started once its head was up: the hub's first "ready" already
    # finds the head alive (a first-cell ray.init() works)
    first = ray_status(hub)
    assert any(n["head"] and n["state"] == "ALIVE" for n in first["nodes"]), first
    notebook_id = next(n["id"] for n in state["nodes"] if n["role"] == "notebook")
    phases = read_phases(Path(node_record(hub, notebook_id)["log"]).read_text(errors="replace"))
    assert phases["launcher"][0] <= phases["ray_start"][0] <= phases["ray_up"][0] <= phases["server_process"][0]
    worker_phases = read_phases(Path(node_record(hub, worker_id)["log"]).read_text(errors="replace"))
    assert worker_phases["ray_start"][0] <= worker_phases["head_seen"][0], worker_phases

    status = wait_for(lambda: (s := ray_status(hub))["alive"] == 2 and s, 240, "2 alive Ray nodes", hub=hub)
    assert status["address"] == address
    assert status["hub"]["alive"] == 1 and status["hub"]["workers"][0]["id"] == worker_id
    assert sorted(n["head"] for n in status["nodes"]) == [False, True]

    # the kernel is a driver on the cluster: two alive nodes, tasks land on the worker
    k = hub.kernel("ada")
    out = k.execute("import ray\nray.init()\nprint(len([n for n in ray.nodes() if n['Alive']]))", timeout=180)
    assert out.strip().splitlines()[-1] == "2"
    out = k.execute(
        "@ray.remote(resources={'cloudhop_worker': 0.01})\n"
        "def where():\n    return ray.get_runtime_context().get_node_id()\n"
        "here = ray.get_runtime_context().get_node_id()\n"
        "ids = set(ray.get([where.remote() for _ in range(4)]))\n"
        "print(len(ids), here in ids)", timeout=180)
    assert out.strip() == "1 False", "remote tasks run on the worker node, not the notebook's"
    # the panel's data, read in the kernel with the server's own token (hub) and Ray's API
    out = k.execute(
        "import cloudhop\nfrom cloudhop.extensions.ray_panel import cluster_summary\n"
        "s = cluster_summary()\npanel = cloudhop.ray_panel()\n"
        "print(sum(n['state'] == 'ALIVE' for n in s['nodes']), s['hub']['alive'], s['errors'], "
        "'Ray dashboard' in panel.children[0].value)", timeout=60)
    assert out.strip() == "2 1 [] True", out
    k.close()

    # the dashboard, through the server's URL, for the server's users only
    r = hub.server_api("GET", "ada", "ray-dashboard/")
    assert r.status_code == 200 and "Ray Dashboard" in r.text
    anon = requests.get(f"{hub.url}/user/ada/ray-dashboard/", allow_redirects=False, timeout=30)
    assert anon.status_code in (302, 403) and "Ray Dashboard" not in anon.text

    # the worker's environment: no hub token, no credential of the hub
    worker_rec = node_record(hub, worker_id)
    env = psutil.Process(worker_rec["pid"]).environ()
    assert "JUPYTERHUB_API_TOKEN" not in env and SECRET not in json.dumps(env)
    worker_bases = _bases_of(worker_rec["pid"])
    assert worker_bases and head_base not in worker_bases
    # on this machine the worker's Ray listens on loopback only, like the head's
    exposed = [(p.pid, c.laddr) for p in session_procs(worker_rec["pid"]) for c in _listening(p)
               if c.laddr.ip not in ("127.0.0.1", "::ffff:127.0.0.1")]
    assert not exposed, exposed

    # the example notebook runs on this cluster (its driver here joins through RAY_ADDRESS,
    # with the cluster's token, as the server's kernels do)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    old = dict(os.environ)
    os.environ.update({"RAY_ADDRESS": address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": state["ray"]["token"],
                       **LOCAL_ONLY_ENV})
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3").execute(cwd=str(NOTEBOOK.parent))
    finally:
        os.environ.clear()
        os.environ.update(old)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "2 node(s) alive" in text and "pi ~ 3.1" in text
    assert "ran on 1 worker node(s), none on the notebook's node: True" in text and "devices: cpu" in text

    # a worker dies: reported in the server's status, the server stays, scaling replaces it
    for p in session_procs(worker_rec["pid"]):
        p.send_signal(signal.SIGKILL)
    status = wait_for(lambda: (s := ray_status(hub))["hub"]["dead"] == 1 and s, 60, "the dead worker", hub=hub)
    assert status["hub"]["alive"] == 0
    assert status["hub"]["workers"][0]["state"] == "dead" and status["hub"]["workers"][0]["detail"]
    assert hub.server_model("ada")["ready"], "a dead worker does not stop the server"

    # the hub's Ray API: bad values name the field; other users see nothing
    for body, field in (({"workers": -1}, "workers"), ({"workers": 1, "gpu": "A100"}, "gpu"), ({}, "workers")):
        r = hub.api("POST", "/cloudhop/ray/ada", json=body)
        assert r.status_code == 400 and r.json()["message"].startswith(field), r.text
    hub.ensure_user("eve")
    eve = hub.api("POST", "/users/eve/tokens", json={}).json()["token"]
    assert hub.api("GET", "/cloudhop/ray/ada", token=eve).status_code == 404
    assert hub.api("POST", "/cloudhop/ray/ada", token=eve, json={"workers": 0}).status_code == 404
    assert hub.api("GET", "/cloudhop/ray/ada", token="not-a-token").status_code == 403

    # the server's resize route is the owner's (an admin resizes through the hub's API)
    ada = hub.api("POST", "/users/ada/tokens", json={}).json()["token"]

    def resize(body):
        return requests.post(f"{hub.url}/user/ada/cloudhop/ray/workers", json=body,
                             headers={"Authorization": f"token {ada}"}, timeout=120)

    assert hub.server_api("POST", "ada", "cloudhop/ray/workers", json={"workers": 1}).status_code == 403
    bad = resize({"workers": "many"})
    assert bad.status_code == 400 and "workers" in bad.json()["message"]
    r = resize({"workers": 1})
    assert r.status_code == 200, r.text
    assert r.json()["alive"] == 1 and r.json()["dead"] == 0
    new_id = r.json()["workers"][0]["id"]
    assert new_id != worker_id
    wait_for(lambda: ray_status(hub)["alive"] == 2, 240, "the replacement worker in Ray", hub=hub)

    # the hub restarts: it re-attaches to the worker from its state, nothing is relaunched
    hub.stop()
    hub.start()
    hub.wait_ready("ada")
    r = hub.api("GET", "/cloudhop/ray/ada")
    assert r.status_code == 200, r.text
    assert [w["id"] for w in r.json()["workers"] if w["state"] == "running"] == [new_id]
    nodes = hub.server_model("ada")["state"]["nodes"]
    assert sorted(n["role"] for n in nodes) == ["notebook", "ray-worker"]

    # stop: no Ray process of this server is left, and its port blocks are free again
    bases = {head_base} | worker_bases | _bases_of(node_record(hub, new_id)["pid"])
    hub.stop_server("ada")
    wait_for(lambda: not ray_procs_of(bases), 30, "no Ray process of the server")
    assert not [p for p in psutil.process_iter(["name"]) if p.info["name"] == "raylet"
                and any(f"/ray-{b}" in " ".join(_cmdline(p)) for b in bases)]
    claim_block(head_base).release()


def _cmdline(p) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


def _listening(p: psutil.Process) -> list:
    try:
        return [c for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    except psutil.Error:
        return []


def _bases_of(pid: int) -> set[int]:
    out = set()
    for p in session_procs(pid):
        for a in _cmdline(p):
            if a.startswith("--temp-dir=") and "/ray-" in a:
                out.add(int(a.rsplit("/ray-", 1)[1]))
    return out
