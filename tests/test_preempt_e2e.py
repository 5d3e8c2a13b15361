"""Spot rescue end to end, one hub for every scenario.

A spot server gets its cloud's interruption notice from a loopback double of the cloud's
metadata endpoint (tests/fakes/metadata.py); its agent snapshots it and calls the hub,
which relaunches it on the next offer of its failover list - same server name, same URL -
with its files and its kernel's variables, without a request from the user:

* on the AWS provider (moto for EC2) and the GCP provider (the Compute double), whose
  instances' servers run on this machine beside them (tests/hosted_cloud.py);
* OCI's notice (its instance's lifecycle state) on a local server: OCI's catalog has no
  preemptible prices, so no OCI spot server can be started. Its local region is
  ephemeral, so the workspace is gone in between and what comes back came through the
  snapshot.

Then: a rescue call for another user's server, or with the kernels' token, is refused;
a repeated call changes nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from moto.server import ThreadedMotoServer

from conftest import _stop_all_servers
from hosted_cloud import install_snippet
from hubfixture import HubProcess, free_port
from test_e2e_aws import config as aws_config, hub_env, instances
from tests.fakes.gcp_compute import FakeCompute
from tests.fakes.metadata import FakeMetadata

pytestmark = pytest.mark.e2e

REQUESTS = {
    "aws-spot": {"provider": "aws", "region": "us-east-1", "instance_type": "g4dn.xlarge", "gpu": "T4",
                 "gpu_count": 1, "spot": True},
    "gcp-spot": {"provider": "gcp", "region": "us-central1", "instance_type": "g2-standard-4", "gpu": "L4",
                 "gpu_count": 1, "spot": True},
    "oci-spot": {"provider": "local", "region": "site-a", "spot": True},
}
STATE = "import numpy as np\nx = 42\narr = np.arange(6) * 1.5"
SHOW = "print(x, arr.tolist())"
SHOWN = "42 [0.0, 1.5, 3.0, 4.5, 6.0, 7.5]\n"


def config(moto: str, compute: str, imds: dict) -> str:
    # the metadata a server reads: on a cloud, its first instance's (interrupted) or a
    # later one's (quiet); on the local provider, the double named by the server's name
    # ("oci-spot": OCI's) and its region
    first = {REQUESTS[f"{c}-spot"]["instance_type"]: imds[f"{c}/first"].url for c in ("aws", "gcp")}
    urls = {key: fake.url for key, fake in imds.items()}
    return aws_config(moto) + install_snippet(str(Path(__file__).parent)) + f"""
c.CloudhopSpawner.providers = ["local", "aws", "gcp"]
c.GCPProvider.api_endpoint = {compute!r}
c.GCPProvider.anonymous_credentials = True
c.GCPProvider.project = "e2e-project"
c.GCPProvider.status_cache_seconds = 1
c.CloudProvider.hub_connect_url = "https://hub.example.org"
c.LocalProvider.regions = {{"site-a": {{"gpus": "none", "ephemeral": True}},
                            "site-b": {{"gpus": "none", "ephemeral": True}}}}
FIRST, URLS = {first!r}, {urls!r}
def _cloud(spawner):
    if spawner.user_options.get("provider") != "local":
        return ""  # the server's own provider
    return spawner.name.split("-")[0] if spawner.name.endswith("-spot") else ""
def _metadata(spawner):
    options = spawner.user_options
    if options.get("provider") == "local":
        return URLS.get(_cloud(spawner) + "/" + str(options.get("region")), "")
    return FIRST.get(options.get("instance_type")) or URLS.get(str(options.get("provider")) + "/later", "")
c.Spawner.environment.update({{"CLOUDHOP_PREEMPT_CLOUD": _cloud, "CLOUDHOP_METADATA_URL": _metadata,
                               "CLOUDHOP_PREEMPT_INTERVAL": "0.2",
                               # a cloud instance's server reaches the store as a local one does
                               "CLOUDHOP_STORE_URL": lambda spawner: spawner.environment["CLOUDHOP_STORE_LOCAL_URL"]}})
"""


@pytest.fixture(scope="module")
def clouds():
    """moto's URL, the Compute double, and the metadata doubles: per cloud its first
    instance's (which the cloud interrupts) and every later one's; per local region OCI's
    and AWS's."""
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    compute = FakeCompute()
    compute.url = compute.start()
    imds = {f"{c}/{which}": FakeMetadata(c) for c in ("aws", "gcp") for which in ("first", "later")}
    imds.update({f"{c}/{region}": FakeMetadata(c) for c in ("aws", "oci") for region in ("site-a", "site-b")})
    for fake in imds.values():
        fake.url = fake.start()
    yield f"http://127.0.0.1:{port}", compute, imds
    for fake in imds.values():
        fake.stop()
    compute.stop()
    moto.stop()


@pytest.fixture(scope="module")
def hub(tmp_path_factory, clouds):
    moto, compute, imds = clouds
    hub = HubProcess(tmp_path_factory.mktemp("preempt"), extra_config=config(moto, compute.url, imds),
                     env=hub_env()).start()
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
    hub.spawn(user.name, REQUESTS[server], server=server, timeout=180)
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


def test_each_clouds_notice_relaunches_the_server_on_the_next_offer_with_its_files_and_variables(hub, clouds):
    moto, compute, imds = clouds
    alice = User(hub, "alice")
    urls = {name: start_project(hub, alice, name) for name in REQUESTS}
    [first_aws] = [i for i in instances(moto) if i["State"]["Name"] == "running"]
    assert first_aws["InstanceType"] == "g4dn.xlarge" and first_aws.get("InstanceLifecycle") == "spot"
    [first_gcp] = list(compute.instances.values())
    assert first_gcp["scheduling"]["provisioningModel"] == "SPOT"
    created = alice.server("GET", "oci-spot", "api/contents/results.csv").json()["created"]
    for name in REQUESTS:
        assert rescues(alice, name) == []
        assert alice.server("GET", name, "cloudhop/api/info").json()["rescued_from"] is None

    # the clouds take their instances back; nobody asks for anything
    started = time.monotonic()
    imds["aws/first"].notice("terminate")
    imds["gcp/first"].notice()
    imds["oci/site-a"].notice()

    records = {name: wait_rescued(hub, alice, name) for name in REQUESTS}
    for name, record in records.items():
        assert record["phase"] == "running", (record, hub.log())
        request, cloud = REQUESTS[name], name.split("-")[0]
        print(f"{name}: notice to snapshot {record['notice_to_snapshot_s']:.1f} s; running again within "
              f"{time.monotonic() - started:.1f} s; {record['from']} -> {record['target']}")
        place = "/".join((request["provider"], request["region"], request.get("instance_type", "cpu")))
        assert record["from"] == place and record["target"] != record["from"]
        assert record["spot"] is True and record["notice"]["cloud"] == cloud and record["snapshot"]
        assert 0 <= record["notice_to_snapshot_s"] < 30 and record["node_after"] != record["node"]

        model = hub.server_model("alice", name)
        assert model["ready"] and model["url"] == urls[name]  # the same URL: the open tab follows
        assert model["user_options"]["spot"] is True and model["user_options"]["restore"] == record["snapshot"]
        assert alice.server("GET", name, "cloudhop/api/info").json()["rescued_from"] == record["from"]
        f = alice.server("GET", name, "api/contents/results.csv").json()
        assert f["content"] == f"made on {name}\n"
        sessions = alice.server("GET", name, "api/sessions").json()
        assert [s["path"] for s in sessions] == ["analysis.ipynb"]
        kernel = hub.kernel("alice", name, kernel_id=sessions[0]["kernel"]["id"])
        assert kernel.execute(SHOW).splitlines()[-1:] == SHOWN.splitlines()
        kernel.close()
    assert records["oci-spot"]["target"] == "local/site-b/cpu"
    assert alice.server("GET", "oci-spot", "api/contents/results.csv").json()["created"] != created, \
        "the file came back through the snapshot (the ephemeral region deleted the workspace)"
    # EC2: the interrupted instance terminated, one spot instance of the next offer runs
    by_id = {i["InstanceId"]: i for i in instances(moto)}
    assert by_id[first_aws["InstanceId"]]["State"]["Name"] in ("shutting-down", "terminated")
    [second] = [i for i in by_id.values() if i["State"]["Name"] == "running"]
    assert second["InstanceType"] == records["aws-spot"]["target"].split("/")[-1]
    assert second.get("InstanceLifecycle") == "spot" and records["aws-spot"]["node_after"].endswith(second["InstanceId"])
    # Compute: the preempted VM deleted, a spot VM of the next offer in its place
    [second] = list(compute.instances.values())
    assert second["name"] != first_gcp["name"] and second["scheduling"]["provisioningModel"] == "SPOT"
    assert second["machineType"].endswith("/" + records["gcp-spot"]["target"].split("/")[-1])
    log = hub.log()
    assert "Spot rescue" in log and "runs again on local/site-b/cpu" in log


def test_a_rescue_for_another_users_server_is_refused_and_a_repeated_one_changes_nothing(hub, clouds):
    imds = clouds[2]
    alice, mallory = User(hub, "ann"), User(hub, "mallory")
    hub.spawn("ann", {"provider": "local", "region": "site-a", "spot": True}, server="aws-spot")
    forged = {"snapshot": "0" * 64, "notice": {"cloud": "aws", "kind": "interruption"}}
    for who in (mallory.token, hub.token):  # another user; a service that may manage servers but not move them
        r = hub.api("POST", "/cloudhop/rescue/ann/aws-spot", token=who, json=forged)
        assert r.status_code in (403, 404), r.text
    # the kernels' token (code in a notebook) may use its server's API, not ask for a rescue
    r = alice.server("POST", "aws-spot", "api/sessions", json={"path": "a.ipynb", "name": "a.ipynb",
                                                              "type": "notebook", "kernel": {"name": "python3"}})
    kernel = hub.kernel("ann", "aws-spot", kernel_id=r.json()["kernel"]["id"])
    kernels_token = kernel.execute("import os; print(os.environ['JUPYTERHUB_API_TOKEN'])").strip().splitlines()[-1]
    kernel.close()
    r = hub.api("POST", "/cloudhop/rescue/ann/aws-spot", token=kernels_token, json=forged)
    assert r.status_code == 404, r.text
    assert rescues(alice, "aws-spot") == []
    node = hub.api("GET", "/users/ann").json()["servers"]["aws-spot"]["state"]["node"]["id"]

    r = alice.hub_api("POST", "/cloudhop/rescue/ann/aws-spot", json={"notice": {"cloud": "aws"}, "spot": 1})
    assert r.status_code == 400 and r.json()["message"].startswith("spot: unknown field")

    imds["aws/site-a"].notice()
    first = wait_rescued(hub, alice, "aws-spot")
    assert first["phase"] == "running", (first, hub.log())
    # the same rescue again (an agent that did not hear the hub's answer): nothing more happens
    r = alice.hub_api("POST", "/cloudhop/rescue/ann/aws-spot", json={"snapshot": first["snapshot"],
                                                                     "notice": {"cloud": "aws"}})
    assert r.status_code == 200 and r.json()["id"] == first["id"]
    assert [x["id"] for x in rescues(alice, "aws-spot")] == [first["id"]]
    state = hub.api("GET", "/users/ann").json()["servers"]["aws-spot"]["state"]
    assert state["node"]["id"] == first["node_after"] != node
