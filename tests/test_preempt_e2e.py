"""Spot rescue end to end, one hub for every scenario: a spot server in one ephemeral
local region watches a loopback double of a cloud's metadata endpoint (AWS, GCP, OCI;
tests/fakes/metadata.py); the cloud's notice makes its agent snapshot it and call the
hub, which relaunches it in the next region of its failover list - same server name,
same URL - with its files and its kernel's variables, without a request from the user.
The old region's workspace is gone in between (ephemeral), so what comes back came
through the snapshot. A rescue call for another user's server is refused; a repeated
call changes nothing."""

from __future__ import annotations

import time

import pytest
import requests

from conftest import _stop_all_servers
from hubfixture import HubProcess
from tests.fakes.metadata import CLOUDS, FakeMetadata

pytestmark = pytest.mark.e2e

STATE = "import numpy as np\nx = 42\narr = np.arange(6) * 1.5"
SHOW = "print(x, arr.tolist())"
SHOWN = "42 [0.0, 1.5, 3.0, 4.5, 6.0, 7.5]\n"


def config(urls: dict) -> str:
    # server "<cloud>-spot" watches that cloud's double; each region has its own double
    # (a relaunched server is on another instance, whose metadata says nothing yet)
    return f"""
c.LocalProvider.regions = {{"site-a": {{"gpus": "none", "ephemeral": True}},
                            "site-b": {{"gpus": "none", "ephemeral": True}}}}
URLS = {urls!r}
def _cloud(spawner):
    return spawner.name.split("-")[0] if spawner.name.endswith("-spot") else ""
def _metadata(spawner):
    return URLS.get(_cloud(spawner) + "/" + str(spawner.user_options.get("region")), "")
c.Spawner.environment.update({{"CLOUDHOP_PREEMPT_CLOUD": _cloud, "CLOUDHOP_METADATA_URL": _metadata,
                               "CLOUDHOP_PREEMPT_INTERVAL": "0.2"}})
"""


@pytest.fixture(scope="module")
def metadata():
    fakes = {f"{cloud}/{region}": FakeMetadata(cloud) for cloud in CLOUDS for region in ("site-a", "site-b")}
    urls = {key: fake.start() for key, fake in fakes.items()}
    yield fakes, urls
    for fake in fakes.values():
        fake.stop()


@pytest.fixture(scope="module")
def hub(tmp_path_factory, metadata):
    hub = HubProcess(tmp_path_factory.mktemp("preempt"), extra_config=config(metadata[1])).start()
    yield hub
    _stop_all_servers(hub)
    hub.stop()


class User:
    """A user's own token: their servers through the proxy, and the hub's API."""

    def __init__(self, hub, name):
        hub.ensure_user(name)
        r = hub.api("POST", f"/users/{name}/tokens", json={"note": "e2e"})
        assert r.status_code == 201, r.text
        self.hub, self.name, self.token = hub, name, r.json()["token"]

    def server(self, method, server, path, **kw):
        return requests.request(method, f"{self.hub.url}/user/{self.name}/{server}/{path}", timeout=30,
                                headers={"Authorization": f"token {self.token}"}, **kw)

    def hub_api(self, method, path, **kw):
        return self.hub.api(method, path, token=self.token, **kw)


def start_project(hub, user: User, server: str) -> str:
    hub.spawn(user.name, {"provider": "local", "region": "site-a", "spot": True}, server=server)
    r = user.server("PUT", server, "api/contents/results.csv",
                    json={"type": "file", "format": "text", "content": f"made on {server}\n"})
    assert r.status_code in (200, 201), r.text
    r = user.server("POST", server, "api/sessions", json={"path": "analysis.ipynb", "name": "analysis.ipynb",
                                                         "type": "notebook", "kernel": {"name": "python3"}})
    assert r.status_code == 201, r.text
    kernel = hub.kernel(user.name, server, kernel_id=r.json()["kernel"]["id"])
    kernel.execute(STATE)
    assert kernel.execute(SHOW) == SHOWN
    kernel.close()
    return hub.server_model(user.name, server)["url"]


def rescues(user: User, server: str) -> list[dict]:
    r = user.hub_api("GET", f"/cloudhop/rescue/{user.name}/{server}")
    assert r.status_code == 200, r.text
    return r.json()["rescues"]


def wait_rescued(hub, user: User, server: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = rescues(user, server)
        if line and line[-1]["phase"] in ("running", "failed"):
            return line[-1]
        time.sleep(0.5)
    raise TimeoutError(f"no rescue of {server} finished: {line}\n{hub.log()}")


def test_each_clouds_notice_relaunches_the_server_elsewhere_with_its_files_and_variables(hub, metadata):
    fakes, _ = metadata
    alice = User(hub, "alice")
    servers = {cloud: f"{cloud}-spot" for cloud in CLOUDS}
    urls = {cloud: start_project(hub, alice, name) for cloud, name in servers.items()}
    workspaces = {}
    for cloud, name in servers.items():
        assert rescues(alice, name) == []
        info = alice.server("GET", name, "cloudhop/api/info").json()
        assert info["region"] == "site-a" and info["rescued_from"] is None
        workspaces[cloud] = alice.server("GET", name, "api/contents/results.csv").json()["created"]

    for cloud in CLOUDS:  # the clouds take their instances back; nobody asks for anything
        fakes[f"{cloud}/site-a"].notice()

    for cloud, name in servers.items():
        record = wait_rescued(hub, alice, name)
        assert record["phase"] == "running", (record, hub.log())
        assert record["from"] == "local/site-a/cpu" and record["target"] == "local/site-b/cpu"
        assert record["spot"] is True and record["notice"]["cloud"] == cloud
        assert 0 <= record["notice_to_snapshot_s"] < 60 and record["snapshot"]
        assert record["node_after"] != record["node"]

        model = hub.server_model("alice", name)
        assert model["ready"] and model["url"] == urls[cloud]  # the same URL: the open tab follows
        assert model["user_options"]["region"] == "site-b" and model["user_options"]["spot"] is True
        info = alice.server("GET", name, "cloudhop/api/info").json()
        assert info["region"] == "site-b" and info["rescued_from"] == "local/site-a/cpu"

        f = alice.server("GET", name, "api/contents/results.csv").json()
        assert f["content"] == f"made on {name}\n"
        assert f["created"] != workspaces[cloud], "the file came back through the snapshot"
        sessions = alice.server("GET", name, "api/sessions").json()
        assert [s["path"] for s in sessions] == ["analysis.ipynb"]
        kernel = hub.kernel("alice", name, kernel_id=sessions[0]["kernel"]["id"])
        assert kernel.execute(SHOW) == SHOWN
        kernel.close()
    log = hub.log()
    assert "Spot rescue" in log and "runs again on local/site-b/cpu" in log


def test_a_rescue_for_another_users_server_is_refused_and_a_repeated_one_changes_nothing(hub, metadata):
    metadata[0]["aws/site-a"].reset()  # a new instance there, which has no notice yet
    alice, mallory = User(hub, "ann"), User(hub, "mallory")
    start_project(hub, alice, "aws-spot")
    forged = {"snapshot": "0" * 64, "notice": {"cloud": "aws", "kind": "interruption"}}
    for who in (mallory.token, hub.token):  # another user; a service that may manage servers but not move them
        r = hub.api("POST", "/cloudhop/rescue/ann/aws-spot", token=who, json=forged)
        assert r.status_code in (403, 404), r.text
    # the kernels' token (code in a notebook) may use its server's API, not ask for a rescue
    sessions = alice.server("GET", "aws-spot", "api/sessions").json()
    kernel = hub.kernel("ann", "aws-spot", kernel_id=sessions[0]["kernel"]["id"])
    kernels_token = kernel.execute("import os; print(os.environ['JUPYTERHUB_API_TOKEN'])").strip()
    kernel.close()
    r = hub.api("POST", "/cloudhop/rescue/ann/aws-spot", token=kernels_token, json=forged)
    assert r.status_code == 404, r.text
    assert rescues(alice, "aws-spot") == []
    node = hub.api("GET", "/users/ann").json()["servers"]["aws-spot"]["state"]["node"]["id"]

    r = alice.hub_api("POST", "/cloudhop/rescue/ann/aws-spot", json={"notice": {"cloud": "aws"}, "spot": 1})
    assert r.status_code == 400 and r.json()["message"].startswith("spot: unknown field")

    metadata[0]["aws/site-a"].notice()
    first = wait_rescued(hub, alice, "aws-spot")
    assert first["phase"] == "running", (first, hub.log())
    # the same rescue again (an agent that did not hear the hub's answer): nothing more happens
    r = alice.hub_api("POST", "/cloudhop/rescue/ann/aws-spot", json={"snapshot": first["snapshot"],
                                                                     "notice": {"cloud": "aws"}})
    assert r.status_code == 200 and r.json()["id"] == first["id"]
    assert [x["id"] for x in rescues(alice, "aws-spot")] == [first["id"]]
    state = hub.api("GET", "/users/ann").json()["servers"]["aws-spot"]["state"]
    assert state["node"]["id"] == first["node_after"] != node
