"""The reaper terminates nodes no active server owns, after a grace period."""

from __future__ import annotations

import dataclasses
import json
import time

import boto3
import pytest
from moto import mock_aws
from traitlets.config import Config

from cloudhop.hub.reaper import (
    SCOPES,
    SERVICE_NAME,
    SETTINGS_ENV,
    Reaper,
    build,
    owned_nodes,
    reaper_service_config,
)
from cloudhop.spawner.providers.aws import AWSProvider
from cloudhop.spawner.providers.base import TAG_HUB
from cloudhop.spawner.providers.gcp import GCPProvider
from tests.cloudkit import cheapest, spec_for
from tests.fakes.gcp_compute import FakeCompute

SSM_IMAGE = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64"


class HubDouble:
    """Answers ``users()`` as the hub API does for the reaper's token."""

    def __init__(self, servers=None, fail=False):
        self.servers = servers or {}
        self.fail = fail

    def serve(self, user, name, nodes, stopped=False):
        state = {"version": 1, "nodes": [{"provider": n.provider, "id": n.id, "role": "notebook",
                                          "region": n.region} for n in nodes]}
        self.servers.setdefault(user, {})[name] = {"name": name, "stopped": stopped, "state": state}

    async def users(self):
        if self.fail:
            raise ConnectionError("hub down")
        return [{"name": u, "servers": s} for u, s in self.servers.items()]


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield AWSProvider(image_ssm_parameter=SSM_IMAGE, regions=["us-east-1"])


@pytest.fixture
def gcp():
    fake = FakeCompute()
    url = fake.start()
    yield GCPProvider(api_endpoint=url, anonymous_credentials=True, project="p")
    fake.stop()


def ec2_states():
    ec2 = boto3.client("ec2", region_name="us-east-1")
    return {i["InstanceId"]: i["State"]["Name"]
            for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}


def later(seconds):
    return lambda: time.time() + seconds


async def test_untracked_node_is_reaped_tracked_and_young_are_not(aws, gcp, tmp_path):
    t4 = cheapest("aws", "us-east-1", "T4", 1)
    tracked = await aws.launch(spec_for(t4, user="alice"))
    planted = await aws.launch(spec_for(t4, user="mallory"))
    stopped = await aws.launch(spec_for(t4, user="bob"))
    l4 = await gcp.launch(spec_for(cheapest("gcp", "us-central1", "L4", 1), user="alice", server="l4"))
    other_hub = await aws.launch(dataclasses.replace(spec_for(t4), tags={TAG_HUB: "someone-elses-hub"}))
    hub = HubDouble()
    hub.serve("alice", "", [tracked])
    hub.serve("alice", "l4", [l4])
    hub.serve("bob", "", [stopped], stopped=True)  # a stopped server's leftovers are not owned

    # young: nothing is reaped inside the grace period
    young = Reaper({"aws": aws, "gcp": gcp}, hub, "hub-test-1", grace=600, report=tmp_path / "r.json")
    first = await young.sweep()
    assert first["providers"]["aws"]["young"] == 2 and first["providers"]["aws"]["terminated"] == []

    old = Reaper({"aws": aws, "gcp": gcp}, hub, "hub-test-1", grace=600, report=tmp_path / "r.json",
                 clock=later(700))
    report = await old.sweep()
    assert sorted(report["providers"]["aws"]["terminated"]) == sorted([planted.id, stopped.id])
    assert report["providers"]["aws"]["owned"] == 1
    assert report["providers"]["gcp"] == {"listed": 1, "owned": 1, "young": 0, "terminated": [], "error": None}
    states = ec2_states()
    assert states[tracked.id.split("/")[1]] == "running"
    assert states[other_hub.id.split("/")[1]] == "running"
    assert states[planted.id.split("/")[1]] in ("shutting-down", "terminated")
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["hub_id"] == "hub-test-1"
    assert written["sweeps"][0]["providers"]["aws"]["terminated"] == report["providers"]["aws"]["terminated"]


async def test_nothing_is_reaped_when_the_hub_cannot_be_read(aws):
    planted = await aws.launch(spec_for(cheapest("aws", "us-east-1", "T4", 1)))
    report = await Reaper({"aws": aws}, HubDouble(fail=True), "hub-test-1", grace=0,
                          clock=later(700)).sweep()
    assert "hub down" in report["hub_error"] and report["providers"] == {}
    assert ec2_states()[planted.id.split("/")[1]] == "running"


async def test_without_a_launch_time_age_counts_from_first_sight(aws):
    class NoLaunchTime:
        def __init__(self, inner):
            self.inner = inner

        async def list_nodes(self, tags):
            return [dataclasses.replace(n, info={}) for n in await self.inner.list_nodes(tags)]

        async def terminate(self, node_id):
            await self.inner.terminate(node_id)

    await aws.launch(spec_for(cheapest("aws", "us-east-1", "T4", 1)))
    now = [time.time()]
    reaper = Reaper({"aws": NoLaunchTime(aws)}, HubDouble(), "hub-test-1", grace=600, clock=lambda: now[0])
    assert (await reaper.sweep())["providers"]["aws"]["young"] == 1
    now[0] += 601
    assert len((await reaper.sweep())["providers"]["aws"]["terminated"]) == 1


def test_owned_nodes_reads_active_servers_only():
    users = [{"name": "a", "servers": {
        "": {"stopped": False, "state": {"nodes": [{"provider": "aws", "id": "us-east-1/i-1"},
                                                   {"provider": "aws", "id": "us-east-1/i-2"}]}},
        "old": {"stopped": True, "state": {"nodes": [{"provider": "aws", "id": "us-east-1/i-3"}]}},
        "fresh": {"stopped": False, "state": {}},
    }}]
    assert owned_nodes(users) == {("aws", "us-east-1/i-1"), ("aws", "us-east-1/i-2")}


def test_service_config_adds_the_service_and_a_narrow_role(tmp_path):
    c = Config()
    c.JupyterHub.services = [{"name": "other"}]
    c.CloudhopSpawner.providers = ["local", "aws"]
    c.CloudhopSpawner.hub_id = "hub-abc"
    c.AWSProvider.endpoint_url = "http://127.0.0.1:5000"
    c.CloudhopReaper.grace = 30
    env = {"AWS_ACCESS_KEY_ID": "AKIAX", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "UNRELATED": "x"}
    service = reaper_service_config(c, data_dir=str(tmp_path), env=env)
    assert [s["name"] for s in c.JupyterHub.services] == ["other", SERVICE_NAME]
    assert service["command"][-1] == "cloudhop.hub.reaper"
    assert service["environment"]["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"  # to the reaper only
    assert "UNRELATED" not in service["environment"]
    settings = json.loads(service["environment"][SETTINGS_ENV])
    assert settings["hub_id"] == "hub-abc" and settings["providers"] == ["local", "aws"]
    assert settings["grace"] == 30 and settings["config"]["AWSProvider"]["endpoint_url"] == "http://127.0.0.1:5000"
    assert "s3cr3t" not in json.dumps(settings)
    [role] = [r for r in c.JupyterHub.load_roles if r["name"] == SERVICE_NAME]
    assert set(role["scopes"]) == set(SCOPES) and "admin:users" not in role["scopes"]
    # the settings rebuild the providers with the hub's config
    reaper, interval = build(settings, "http://127.0.0.1:1/hub/api", "t")
    assert reaper.providers["aws"].endpoint_url == "http://127.0.0.1:5000" and interval == 300


def test_service_can_be_disabled(tmp_path):
    c = Config()
    c.CloudhopReaper.enabled = False
    assert reaper_service_config(c, data_dir=str(tmp_path)) == {}
    assert "services" not in c.JupyterHub


@pytest.mark.parametrize("key,value", [("interval", "soon"), ("grace", -5), ("interval", 0)])
def test_bad_timing_names_the_setting(tmp_path, key, value):
    c = Config()
    c.CloudhopReaper[key] = value
    with pytest.raises(ValueError, match=f"c.CloudhopReaper.{key}"):
        reaper_service_config(c, data_dir=str(tmp_path))
