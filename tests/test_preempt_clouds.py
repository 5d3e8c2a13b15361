"""Spot servers on the AWS provider (moto for EC2, the IMDSv2 double for the instance) and
on the GCP provider (the Compute double, the GCP metadata double) get their cloud's
interruption notice and are running again on the next offer of their failover list,
with their files and variables and the same URL, without a request from the user.

The doubles run no instance, so each instance's server runs on this machine beside it
(tests/hosted_cloud.py: the real providers' cloud calls, plus a local process per
instance whose disk goes with it). OCI is not here: its catalog has no preemptible
prices, so no OCI spot server can be started (its notice is tested on a local server in
tests/test_preempt_e2e.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from hosted_cloud import install_snippet
from test_e2e_aws import config as aws_config, hub_env, instances, moto_url, wait_for  # noqa: F401
from tests.fakes.gcp_compute import FakeCompute
from tests.fakes.metadata import FakeMetadata

pytestmark = pytest.mark.e2e

REQUESTS = {
    "aws-spot": {"provider": "aws", "region": "us-east-1", "instance_type": "g4dn.xlarge", "gpu": "T4",
                 "gpu_count": 1, "spot": True},
    "gcp-spot": {"provider": "gcp", "region": "us-central1", "instance_type": "g2-standard-4", "gpu": "L4",
                 "gpu_count": 1, "spot": True},
}
STATE = "import numpy as np\nx = 42\narr = np.arange(6) * 1.5"
SHOW = "print(x, arr.tolist())"
SHOWN = "42 [0.0, 1.5, 3.0, 4.5, 6.0, 7.5]\n"


@pytest.fixture
def clouds(moto_url):  # noqa: F811
    """The Compute double, and per cloud the metadata of the first instance (which the
    cloud interrupts) and of every later one (quiet)."""
    compute = FakeCompute()
    compute.url = compute.start()
    imds = {(cloud, which): FakeMetadata(cloud) for cloud in ("aws", "gcp") for which in ("first", "later")}
    for fake in imds.values():
        fake.url = fake.start()
    yield compute, imds
    for fake in imds.values():
        fake.stop()
    compute.stop()


def config(moto: str, compute: str, imds: dict) -> str:
    first = {REQUESTS[f"{c}-spot"]["instance_type"]: imds[(c, "first")].url for c in ("aws", "gcp")}
    later = {c: imds[(c, "later")].url for c in ("aws", "gcp")}
    return aws_config(moto) + install_snippet(str(Path(__file__).parent)) + f"""
c.CloudhopSpawner.providers = ["local", "aws", "gcp"]
c.GCPProvider.api_endpoint = {compute!r}
c.GCPProvider.anonymous_credentials = True
c.GCPProvider.project = "e2e-project"
c.GCPProvider.status_cache_seconds = 1
c.CloudProvider.hub_connect_url = "https://hub.example.org"
FIRST, LATER = {first!r}, {later!r}
def _metadata(spawner):
    options = spawner.user_options
    return FIRST.get(options.get("instance_type")) or LATER.get(options.get("provider"), "")
c.Spawner.environment.update({{"CLOUDHOP_METADATA_URL": _metadata, "CLOUDHOP_PREEMPT_INTERVAL": "0.2",
                               # the instance's server reaches the store as a local one does
                               "CLOUDHOP_STORE_URL": lambda spawner: spawner.environment["CLOUDHOP_STORE_LOCAL_URL"]}})
"""


def test_spot_servers_on_aws_and_gcp_run_again_on_the_next_offer_after_the_notice(moto_url, clouds,  # noqa: F811
                                                                                 hub_factory):
    compute, imds = clouds
    hub = hub_factory(config(moto_url, compute.url, imds), env=hub_env())
    hub.ensure_user("alice")
    token = hub.api("POST", "/users/alice/tokens", json={"note": "e2e"}).json()["token"]

    def server(method, name, path, **kw):
        return requests.request(method, f"{hub.url}/user/alice/{name}/{path}", timeout=30,
                                headers={"Authorization": f"token {token}"}, **kw)

    urls = {}
    for name, request in REQUESTS.items():
        urls[name] = hub.spawn("alice", request, server=name, timeout=180)["url"]
        assert server("PUT", name, "api/contents/results.csv",
                      json={"type": "file", "format": "text", "content": f"made on {name}\n"}).status_code in (200, 201)
        r = server("POST", name, "api/sessions", json={"path": "analysis.ipynb", "name": "analysis.ipynb",
                                                       "type": "notebook", "kernel": {"name": "python3"}})
        assert r.status_code == 201, r.text
        kernel = hub.kernel("alice", name, kernel_id=r.json()["kernel"]["id"])
        kernel.execute(STATE)
        assert kernel.execute(SHOW) == SHOWN
        kernel.close()
    [first_aws] = [i for i in instances(moto_url) if i["State"]["Name"] == "running"]
    assert first_aws["InstanceType"] == "g4dn.xlarge" and first_aws.get("InstanceLifecycle") == "spot"
    [first_gcp] = list(compute.instances.values())
    assert first_gcp["scheduling"]["provisioningModel"] == "SPOT"

    started = time.monotonic()
    imds[("aws", "first")].notice("terminate")  # AWS takes its instance back in two minutes
    imds[("gcp", "first")].notice()  # GCP preempts its VM (30 s)

    def rescued(name):
        def check():
            line = hub.api("GET", f"/cloudhop/rescue/alice/{name}", token=token).json()["rescues"]
            return line[-1] if line and line[-1]["phase"] in ("running", "failed") else None
        return check

    records = {name: wait_for(rescued(name), timeout=240, what=f"rescue of {name}") for name in REQUESTS}
    for name, record in records.items():
        assert record["phase"] == "running", (record, hub.log())
        cloud = name.split("-")[0]
        print(f"{cloud}: notice to snapshot {record['notice_to_snapshot_s']:.1f} s; notice to running again "
              f"within {time.monotonic() - started:.1f} s; {record['from']} -> {record['target']}")
        assert record["from"] == "/".join((cloud, REQUESTS[name]["region"], REQUESTS[name]["instance_type"]))
        assert record["spot"] is True and record["target"] != record["from"]
        assert record["notice"]["cloud"] == cloud and record["notice_to_snapshot_s"] < 30

        model = hub.server_model("alice", name)
        assert model["ready"] and model["url"] == urls[name]  # the same URL: the open tab follows
        assert server("GET", name, "api/contents/results.csv").json()["content"] == f"made on {name}\n"
        sessions = server("GET", name, "api/sessions").json()
        assert [s["path"] for s in sessions] == ["analysis.ipynb"]
        kernel = hub.kernel("alice", name, kernel_id=sessions[0]["kernel"]["id"])
        assert kernel.execute(SHOW).splitlines()[-1:] == SHOWN.splitlines()
        kernel.close()
        assert server("GET", name, "cloudhop/api/info").json()["rescued_from"] == record["from"]

    # EC2: the interrupted instance terminated, one spot instance of the next offer runs
    by_id = {i["InstanceId"]: i for i in instances(moto_url)}
    assert by_id[first_aws["InstanceId"]]["State"]["Name"] in ("shutting-down", "terminated")
    [second] = [i for i in by_id.values() if i["State"]["Name"] == "running"]
    assert second["InstanceType"] == records["aws-spot"]["target"].split("/")[-1]
    assert second.get("InstanceLifecycle") == "spot" and records["aws-spot"]["node_after"].endswith(second["InstanceId"])
    # Compute: the preempted VM deleted, a spot VM of the next offer in its place
    [second] = list(compute.instances.values())
    assert second["name"] != first_gcp["name"] and second["scheduling"]["provisioningModel"] == "SPOT"
    assert second["machineType"].endswith("/" + records["gcp-spot"]["target"].split("/")[-1])
