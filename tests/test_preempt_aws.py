"""A spot server on the AWS provider (moto for EC2, the metadata double for the instance's
IMDSv2) gets the two-minute interruption notice and is running again on the next offer
of its failover list, with its files and variables, without a request from the user.

moto runs no instance, so each instance's server runs on this machine beside it
(tests/moto_host.py: the real AWS provider's EC2 calls, plus a local process per
instance whose disk goes with it)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from moto_host import install_snippet
from test_e2e_aws import config as aws_config, ec2, hub_env, instances, moto_url, wait_for  # noqa: F401
from tests.fakes.metadata import FakeMetadata

pytestmark = pytest.mark.e2e

REQUEST = {"provider": "aws", "region": "us-east-1", "instance_type": "g4dn.xlarge", "gpu": "T4",
           "gpu_count": 1, "spot": True}
STATE = "import numpy as np\nx = 42\narr = np.arange(6) * 1.5"
SHOW = "print(x, arr.tolist())"


@pytest.fixture
def imds():
    """The first instance's metadata (it will be interrupted) and every later one's."""
    first, later = FakeMetadata("aws"), FakeMetadata("aws")
    first.url, later.url = first.start(), later.start()
    yield first, later
    first.stop()
    later.stop()


def config(moto: str, first: str, later: str) -> str:
    return aws_config(moto) + install_snippet(str(Path(__file__).parent)) + f"""
def _metadata(spawner):
    return {first!r} if spawner.user_options.get("instance_type") == "g4dn.xlarge" else {later!r}
c.Spawner.environment.update({{"CLOUDHOP_METADATA_URL": _metadata, "CLOUDHOP_PREEMPT_INTERVAL": "0.2",
                               # the instance's server reaches the store as a local one does
                               "CLOUDHOP_STORE_URL": lambda spawner: spawner.environment["CLOUDHOP_STORE_LOCAL_URL"]}})
"""


def test_a_spot_server_on_aws_runs_again_on_the_next_offer_after_an_interruption_notice(moto_url, imds,  # noqa: F811
                                                                                          hub_factory):
    hub = hub_factory(config(moto_url, imds[0].url, imds[1].url), env=hub_env())
    hub.ensure_user("alice")
    token = hub.api("POST", "/users/alice/tokens", json={"note": "e2e"}).json()["token"]

    def server(method, path, **kw):
        return requests.request(method, f"{hub.url}/user/alice/{path}", timeout=30,
                                headers={"Authorization": f"token {token}"}, **kw)

    model = hub.spawn("alice", REQUEST, timeout=180)
    [first] = [i for i in instances(moto_url) if i["State"]["Name"] == "running"]
    assert first["InstanceType"] == "g4dn.xlarge" and first.get("InstanceLifecycle") == "spot"
    assert server("PUT", "api/contents/results.csv",
                  json={"type": "file", "format": "text", "content": "a,b\n1,2\n"}).status_code in (200, 201)
    r = server("POST", "api/sessions", json={"path": "analysis.ipynb", "name": "analysis.ipynb",
                                             "type": "notebook", "kernel": {"name": "python3"}})
    assert r.status_code == 201, r.text
    kernel = hub.kernel("alice", kernel_id=r.json()["kernel"]["id"])
    kernel.execute(STATE)
    shown = kernel.execute(SHOW)
    kernel.close()

    started = time.monotonic()
    imds[0].notice("terminate")  # AWS will take the instance back in two minutes

    def rescued():
        line = hub.api("GET", "/cloudhop/rescue/alice", token=token).json()["rescues"]
        return line[-1] if line and line[-1]["phase"] in ("running", "failed") else None

    record = wait_for(rescued, timeout=240, what="rescue")
    assert record["phase"] == "running", (record, hub.log())
    print(f"notice to snapshot {record['notice_to_snapshot_s']:.1f} s; notice to running again "
          f"{time.monotonic() - started:.1f} s")
    assert record["from"] == "aws/us-east-1/g4dn.xlarge" and record["spot"] is True
    assert record["target"].startswith("aws/") and record["target"] != record["from"]
    assert record["notice"]["kind"] == "interruption" and record["notice_to_snapshot_s"] < 120

    # EC2: the interrupted instance terminated, one spot instance of the next offer runs
    by_id = {i["InstanceId"]: i for i in instances(moto_url)}
    assert by_id[first["InstanceId"]]["State"]["Name"] in ("shutting-down", "terminated")
    [second] = [i for i in by_id.values() if i["State"]["Name"] == "running"]
    assert second["InstanceType"] == record["target"].split("/")[-1] and second.get("InstanceLifecycle") == "spot"
    assert record["node_after"].endswith(second["InstanceId"])

    again = hub.server_model("alice")
    assert again["ready"] and again["url"] == model["url"]
    assert server("GET", "api/contents/results.csv").json()["content"] == "a,b\n1,2\n"
    sessions = server("GET", "api/sessions").json()
    assert [s["path"] for s in sessions] == ["analysis.ipynb"]
    kernel = hub.kernel("alice", kernel_id=sessions[0]["kernel"]["id"])
    assert kernel.execute(SHOW) == shown == "42 [0.0, 1.5, 3.0, 4.5, 6.0, 7.5]\n"
    kernel.close()
    assert server("GET", "cloudhop/api/info").json()["rescued_from"] == "aws/us-east-1/g4dn.xlarge"
