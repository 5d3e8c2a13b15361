"""Through a real hub: REST spawns on AWS against a moto server (no real VM: nothing
serves Jupyter at the instance's address), stopping terminates the instance, and a hub
killed mid-launch leaves nothing untracked once it is back (re-attached, or reaped)."""

from __future__ import annotations

import base64
import signal

import boto3
import psutil
import pytest
from moto.server import ThreadedMotoServer

from hubfixture import free_port
from tests.cloudkit import wait_for

pytestmark = pytest.mark.e2e

SSM_IMAGE = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64"
KEY, SECRET = "AKIAE2EHUBONLY000001", "e2e/hub/only/secret/0001"
REQUEST = {"provider": "aws", "region": "us-east-1", "gpu": "T4", "gpu_count": 1}


@pytest.fixture
def moto_url():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def config(moto_url: str) -> str:
    return f"""
c.CloudhopSpawner.providers = ["local", "aws"]
c.CloudhopSpawner.hibernate = False  # nothing of Jupyter serves at a fake instance
c.AWSProvider.endpoint_url = {moto_url!r}
c.AWSProvider.image_ssm_parameter = {SSM_IMAGE!r}
c.AWSProvider.regions = ["us-east-1"]
c.AWSProvider.status_cache_seconds = 1
c.AWSProvider.hub_connect_url = "https://hub.example.org"
c.CloudhopReaper.interval = 2
c.CloudhopReaper.grace = 4
"""


def hub_env():
    # the hub's own credentials, in its environment only
    return {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true"}


def ec2(moto_url):
    return boto3.client("ec2", region_name="us-east-1", endpoint_url=moto_url,
                        aws_access_key_id=KEY, aws_secret_access_key=SECRET)


def instances(moto_url) -> list[dict]:
    return [i for r in ec2(moto_url).describe_instances()["Reservations"] for i in r["Instances"]]


def live(moto_url):
    return [i for i in instances(moto_url) if i["State"]["Name"] in ("pending", "running")]


def test_spawn_on_aws_launches_one_tagged_g4dn_and_stop_terminates_it(moto_url, hub_factory):
    hub = hub_factory(config(moto_url), env=hub_env())
    hub.ensure_user("alice")
    r = hub.api("POST", "/users/alice/server", json=REQUEST)
    assert r.status_code in (201, 202), r.text
    [inst] = wait_for(lambda: live(moto_url), what="instance")
    assert inst["InstanceType"] == "g4dn.xlarge"
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags["cloudhop-user"] == "alice" and tags["cloudhop-hub"].startswith("hub-")
    attr = ec2(moto_url).describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="userData")
    user_data = base64.b64decode(attr["UserData"]["Value"]).decode()
    assert "jupyterhub-singleuser" in user_data or "jupyterhub.singleuser" in user_data
    assert "JUPYTERHUB_API_URL=https://hub.example.org/hub/api" in user_data
    assert KEY not in user_data and SECRET not in user_data and "AWS_" not in user_data
    assert hub.server_model("alice") is not None
    assert len(instances(moto_url)) == 1  # one launch, however long the hub polls

    r = hub.api("DELETE", "/users/alice/server")
    assert r.status_code in (202, 204), r.text
    wait_for(lambda: hub.server_model("alice") is None, what="stopped server")
    state = wait_for(lambda: [i["State"]["Name"] for i in instances(moto_url)
                              if i["State"]["Name"] in ("shutting-down", "terminated")], what="terminated instance")
    assert len(state) == 1 and live(moto_url) == []


def _reap_orphans(processes) -> None:
    """End the killed hub's services that outlive it (JupyterHub starts them in their
    own sessions), so the test leaves no process behind."""
    for proc in processes:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=10)


def owned(hub) -> set[str]:
    """Instance ids the hub's active servers own, from their state (hub API)."""
    out = set()
    for user in hub.api("GET", "/users").json():
        for server in (user.get("servers") or {}).values():
            for node in (server.get("state") or {}).get("nodes") or []:
                out.add(node["id"].split("/")[-1])
    return out


def test_hub_killed_mid_launch_leaves_no_untracked_instance(moto_url, hub_factory):
    # the spawner checks the new node only every 30 s: the kill lands mid-launch
    # (and gives up on a server that does not answer after 10 s)
    slow = config(moto_url) + "c.CloudhopSpawner.node_poll_interval = 30\nc.Spawner.http_timeout = 10\n"
    hub = hub_factory(slow, env=hub_env())
    hub.ensure_user("bob")
    assert hub.api("POST", "/users/bob/server", json=REQUEST).status_code in (201, 202)
    [inst] = wait_for(lambda: live(moto_url), what="instance")
    hub_tag = {t["Key"]: t["Value"] for t in inst["Tags"]}["cloudhop-hub"]
    services = psutil.Process(hub.proc.pid).children(recursive=True)
    hub.stop(sig=signal.SIGKILL)  # mid-launch: the spawn had not finished
    _reap_orphans(services)

    again = hub_factory(slow, env=hub_env(), data_dir=hub.data_dir)
    # a node with this hub's tag that no server owns (a launch whose hub died before
    # it could record it); the reaper must take it
    planted = ec2(moto_url).run_instances(
        ImageId="ami-12345678", InstanceType="g4dn.xlarge", MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [
            {"Key": "cloudhop-hub", "Value": hub_tag}, {"Key": "cloudhop-user", "Value": "mallory"},
            {"Key": "cloudhop-request", "Value": "planted"}]}],
    )["Instances"][0]["InstanceId"]

    def settled():
        model = again.server_model("bob")
        if model and model.get("pending"):
            return False
        alive = {i["InstanceId"] for i in live(moto_url)}
        return planted not in alive and alive <= owned(again)

    # every live instance ends up owned by an active server (re-attached) or gone
    # (the restarted hub stopped the server that never answered, or the reaper took it)
    wait_for(settled, timeout=90, what="no untracked instance")
    assert planted in (again.data_dir / "reaper-report.json").read_text()
