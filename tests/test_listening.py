"""The spawner's wait for a starting server's port (spawner/listening.py)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from jupyterhub.spawner import SpawnException

from cloudhop.spawner.listening import wait_listening


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_returns_once_a_late_server_listens():
    port, accepted = free_port(), []

    async def serve_later():
        await asyncio.sleep(0.4)
        return await asyncio.start_server(lambda r, w: (accepted.append(True), w.close()), "127.0.0.1", port)

    server_task = asyncio.ensure_future(serve_later())
    assert await wait_listening("127.0.0.1", port, every=0.05, listen_timeout=30) is True
    server = await server_task
    await asyncio.sleep(0.05)
    assert accepted, "the wait ended on a real connection to the server"
    server.close()
    await server.wait_closed()


async def test_nothing_listening_past_http_timeout_fails_naming_node_and_port():
    port = free_port()
    with pytest.raises(SpawnException) as err:
        await wait_listening("127.0.0.1", port, every=0.05, listen_timeout=0.3, node="local-abc")
    assert f"port {port}" in str(err.value) and "local-abc" in str(err.value)
    assert err.value.reason == "server-timeout"


async def test_gives_the_wait_back_to_jupyterhub_before_start_timeout():
    """Near the spawn's own time limit it stops quietly: JupyterHub's check takes over,
    so no spawn fails that did not fail before."""
    port = free_port()
    t0 = time.monotonic()
    assert await wait_listening("127.0.0.1", port, every=0.05, listen_timeout=60, give_up_at=t0 + 0.3) is False


async def test_a_spawn_returns_only_once_its_server_listens(monkeypatch):
    """start() of a real spawner, whose node's server listens a moment after the node runs."""
    from test_scale import CountingCloud, counting_spawner

    port = free_port()
    cloud = CountingCloud()
    launch = cloud.launch

    async def launch_on_loopback(spec):
        node = await launch(spec)
        cloud.nodes[node.id] = node = type(node)(**{**node.__dict__, "ip": "127.0.0.1", "port": port})
        return node

    monkeypatch.setattr(cloud, "launch", launch_on_loopback)
    s, saves = counting_spawner(cloud)
    s.listen_poll_interval = 0.05
    started = asyncio.ensure_future(s.start())
    for _ in range(200):  # until start reaches the wait (the state is written before it)
        if started.done() or (saves and saves[-1].get("serving") is True):
            break
        await asyncio.sleep(0.05)
    assert saves and saves[-1].get("serving") is True, "the state is written before the wait, not after it"
    await asyncio.sleep(0.3)
    assert not started.done(), "start returned before anything listened on the server's port"
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
    assert (await asyncio.wait_for(started, 30)) == f"http://127.0.0.1:{port}"
    server.close()
    await s.stop()


async def test_a_local_spawn_records_its_spend_once_it_serves(monkeypatch):
    """A launch without a cloud timeline (the local provider's) leaves its row to
    JupyterHub's commit, but the spend ledger still follows the served nodes, Ray
    workers included, before start returns."""
    from cloudhop.spawner import spawner as spawner_module, spend
    from test_scale import CountingCloud, counting_spawner

    monkeypatch.setattr(spawner_module, "Timeline", lambda requested: None)  # as a local launch
    recorded = []
    record = spend.record
    monkeypatch.setattr(spend, "record", lambda s: (recorded.append(s.serving), record(s))[1])
    cloud = CountingCloud()
    s, saves = counting_spawner(cloud)
    monkeypatch.setattr(spawner_module, "wait_listening", lambda *a, **k: asyncio.sleep(0, True))
    await s.start()
    assert s.timeline is None
    assert recorded and recorded[-1] is True, recorded
    assert all(save.get("serving") is not True for save in saves), "no extra row commit for a local launch"
    await s.stop()
