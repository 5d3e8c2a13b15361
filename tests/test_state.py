"""The server state is one format, written by the spawner and read by the reaper (another
process, through the hub API): a real spawn with Ray workers writes it, the reaper sees
every node it lists, and a reaper refuses to act on a state version it does not know."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from cloudhop.hub.reaper import Reaper, owned_nodes
from cloudhop.spawner import CloudhopSpawner
from cloudhop.spawner.options import LaunchRequest, RayRequest
from cloudhop.spawner.providers.base import TAG_REQUEST, TAG_ROLE
from cloudhop.spawner.ray import WORKER_ROLE
from cloudhop.spawner.state import (
    STATE_VERSION, Attempt, NodeRef, StateVersionError, check_version, server_nodes,
)
from instant_cloud import NAME, InstantCloud
from tests.cloudkit import HUB_ID, spec_for


def new_spawner(cloud) -> CloudhopSpawner:
    s = CloudhopSpawner(user=SimpleNamespace(name="ada", url="/user/ada/", escaped_name="ada", groups=[]),
                        providers=[NAME], hub_id="hub-state-test", node_poll_interval=0.01)
    s.provider = lambda name: cloud
    s.get_env = lambda: {"JUPYTERHUB_API_URL": "http://hub.example.org/hub/api"}
    return s


async def spawned_with_workers(workers=2):
    """A spawner after a real ``start`` with Ray workers, and its provider."""
    cloud = InstantCloud()
    s = new_spawner(cloud)
    s.user_options = {"provider": "auto", "gpu": "none", "ray": {"workers": workers, "gpu": "none"}}
    await s.start()
    return s, cloud


def as_hub_api(state: dict, stopped=False) -> list[dict]:
    """The hub API's answer to the reaper for one user with this server (state as JSON)."""
    return [{"name": "ada", "servers": {"": {"name": "", "stopped": stopped,
                                            "state": json.loads(json.dumps(state))}}}]


class HubDouble:
    def __init__(self, users):
        self._users = users

    async def users(self):
        return self._users


async def test_the_reaper_sees_every_node_a_spawn_with_ray_workers_writes():
    s, cloud = await spawned_with_workers(2)
    state = s.get_state()
    assert len(cloud.live()) == 3, "a notebook and two workers"
    roles = sorted(n["role"] for n in state["nodes"])
    assert roles == ["notebook", WORKER_ROLE, WORKER_ROLE]

    assert owned_nodes(as_hub_api(state)) == {(NAME, node_id) for node_id in cloud.live()}
    # the whole sweep: every node is owned, nothing is terminated
    reaper = Reaper({NAME: cloud}, HubDouble(as_hub_api(state)), "hub-state-test", grace=0)
    report = await reaper.sweep()
    assert report["hub_error"] is None
    assert report["providers"][NAME] == {"listed": 3, "owned": 3, "young": 0, "terminated": [], "error": None}
    assert len(cloud.live()) == 3
    await s.stop()
    assert cloud.live() == set()


async def test_the_state_format_is_the_one_existing_hubs_saved():
    """Same keys, same values: a hub upgraded in place loads what it saved before."""
    s, cloud = await spawned_with_workers(1)
    state = json.loads(json.dumps(s.get_state()))
    assert state["version"] == STATE_VERSION == 1
    assert {"version", "request", "offer", "node", "nodes", "attempts", "ray"} <= set(state)
    for entry in state["nodes"]:
        assert set(entry) == {"provider", "id", "role", "region"}
        assert NodeRef.from_dict(entry).to_dict() == entry
    notebook = next(n for n in cloud.nodes.values() if n.tags[TAG_ROLE] == "notebook")
    assert state["nodes"][0] == {"provider": NAME, "id": notebook.id, "role": "notebook", "region": "r1"}
    [attempt] = state["attempts"]
    assert set(attempt) == {"offer", "state", "started", "node", "seconds"}
    assert (attempt["offer"], attempt["state"], attempt["node"]) == (f"{NAME}/r1/cpu-2", "launched", notebook.id)
    assert Attempt.from_dict(attempt).to_dict() == attempt
    assert state["request"] == {"provider": "auto", "gpu": "none", "gpu_count": 0, "spot": False,
                                "ray": {"workers": 1, "gpu": "none", "gpu_count": 0}}
    assert state["ray"]["cluster"] == notebook.tags[TAG_REQUEST]

    t = new_spawner(cloud)
    t.load_state(state)
    assert t.request == s.request and t.nodes == s.nodes and t.attempts == s.attempts
    assert t.get_state() == state, "loaded and saved again unchanged"
    await s.stop()


def test_a_failed_attempt_keeps_the_walks_fields():
    record = {"offer": "aws/us-east-1/g4dn.xlarge", "state": "failed", "started": 1.0, "reason": "capacity",
              "error": "no capacity", "status_code": 503, "seconds": 0.25}
    assert Attempt.from_dict(record).to_dict() == record
    assert Attempt.from_dict({**record, "later_field": 1}).to_dict() == record


def test_launch_request_from_dict_round_trips_and_refuses_what_it_does_not_know():
    request = LaunchRequest(provider="aws", region="us-east-1", gpu="T4", gpu_count=1, spot=True,
                            ray=RayRequest(workers=2, gpu="T4", gpu_count=1), restore="snap-1")
    assert LaunchRequest.from_dict(request.to_dict()) == request
    assert LaunchRequest.from_dict({}) == LaunchRequest()
    with pytest.raises(TypeError, match="colour"):
        LaunchRequest.from_dict({"provider": "aws", "colour": "blue"})
    with pytest.raises(TypeError):
        LaunchRequest.from_dict({"ray": {"gpu": "T4"}})  # no worker count
    with pytest.raises(TypeError):
        LaunchRequest.from_dict(["aws"])


def test_an_unreadable_saved_request_is_logged_not_silently_dropped(caplog):
    s = new_spawner(InstantCloud())
    state = {"version": 1, "request": {"provider": "aws", "colour": "blue"},
             "nodes": [{"provider": NAME, "id": "r1/n-1", "role": "notebook", "region": "r1"}]}
    with caplog.at_level(logging.WARNING):
        s.load_state(state)
    assert s.request is None and s.nodes == state["nodes"]
    assert any("request" in r.getMessage() and "colour" in r.getMessage() for r in caplog.records)


def test_server_nodes_reads_nodes_and_the_notebook_and_checks_the_version():
    state = {"version": 1, "nodes": [{"provider": "aws", "id": "us-east-1/i-1", "role": "notebook",
                                      "region": "us-east-1"}],
             "node": {"provider": "aws", "id": "us-east-1/i-1", "region": "us-east-1", "state": "running"}}
    assert {(r.provider, r.id, r.role) for r in server_nodes(state)} == {("aws", "us-east-1/i-1", "notebook")}
    assert server_nodes({}) == [] and check_version({}) is None
    for version in (STATE_VERSION + 1, "2", 1.5, True):
        with pytest.raises(StateVersionError, match="version"):
            server_nodes({"version": version, "nodes": []}, "server ada/")


async def test_the_reaper_refuses_a_state_version_it_does_not_know(tmp_path):
    """A newer hub's state may list its nodes in a way this reaper cannot read: it must
    not take them for leaks. The sweep reaps nothing and its report says why."""
    cloud = InstantCloud()
    stray = await cloud.launch(spec_for(cloud.offers()[0], user="bob"))
    theirs = await cloud.launch(spec_for(cloud.offers()[0], user="ada"))
    newer = {"version": STATE_VERSION + 1, "machines": [{"provider": NAME, "id": theirs.id}]}
    reaper = Reaper({NAME: cloud}, HubDouble(as_hub_api(newer)), HUB_ID, grace=0,
                    report=tmp_path / "report.json")
    report = await reaper.sweep()
    assert cloud.live() == {stray.id, theirs.id}, "nothing is terminated"
    assert report["providers"] == {}
    assert f"version {STATE_VERSION + 1}" in report["hub_error"] and "ada/" in report["hub_error"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["sweeps"][0]["hub_error"] == report["hub_error"]

    # a stopped server's state does not count, whatever its version: both nodes are leaks
    reaper.hub = HubDouble(as_hub_api(newer, stopped=True))
    report = await reaper.sweep()
    assert report["hub_error"] is None
    assert sorted(report["providers"][NAME]["terminated"]) == sorted([stray.id, theirs.id])
