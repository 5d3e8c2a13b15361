"""Spawner state: versioned, round-trips, accepts older versions."""

from __future__ import annotations

from types import SimpleNamespace

from cloudhop.spawner import CloudhopSpawner
from cloudhop.spawner.offers import Offer
from cloudhop.spawner.options import LaunchRequest, RayRequest
from cloudhop.spawner.providers.base import Node


def new_spawner(**kw):
    return CloudhopSpawner(user=SimpleNamespace(name="ada", url="/user/ada/", escaped_name="ada"), **kw)


def test_state_round_trip():
    s = new_spawner()
    s.request = LaunchRequest(provider="local", gpu="none", ray=RayRequest(workers=1))
    s.offer = Offer("local", "local", "cpu", "none", 0, price_hour=0.0)
    s.node = Node(id="local-1", provider="local", region="local", state="running", ip="127.0.0.1", port=5555)
    s.nodes = [{"provider": "local", "id": "local-1", "role": "notebook", "region": "local"}]
    state = s.get_state()
    assert state["version"] == 1 and state["nodes"] == s.nodes

    t = new_spawner()
    t.load_state(state)
    assert t.node == s.node and t.offer == s.offer and t.request == s.request
    assert (t.ip, t.port) == ("127.0.0.1", 5555)
    t.clear_state()
    assert t.get_state() == {} and t.node is None


def test_state_without_version_is_an_empty_server():
    t = new_spawner()
    t.load_state({})
    assert t.node is None and t.nodes == []


def test_state_from_a_newer_version_keeps_what_it_knows():
    t = new_spawner()
    t.load_state({"version": 99, "nodes": [{"provider": "local", "id": "n", "role": "notebook", "region": "x"}],
                  "future_field": 1})
    assert t.nodes[0]["id"] == "n"


class _StatusDouble:
    """Answers status with a scripted node state."""

    def __init__(self, state):
        self.state = state

    async def status(self, node_id):
        return Node(id=node_id, provider="double", region="r", state=self.state)


async def test_poll_follows_the_node_state():
    import pytest

    s = new_spawner()
    assert await s.poll() == 0, "no node: not running"
    s.node = Node(id="n1", provider="double", region="r", state="running", ip="10.0.0.1", port=8888)
    for state, expected in (("pending", None), ("running", None), ("stopping", 1), ("terminated", 1), ("failed", 1)):
        s.provider = lambda name, st=state: _StatusDouble(st)
        if s.ray_cluster is not None:  # pragma: no cover - no Ray here
            pytest.fail("unexpected Ray cluster")
        assert await s.poll() == expected, state
