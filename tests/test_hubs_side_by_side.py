"""Two `cloudhop up` on one machine, with their own --port and --data-dir and no internal
port configured, run side by side: each picks and keeps its own hub and proxy API ports,
spawns a server on the local provider through the REST API, tags it with its own hub
id, restarts on the same ports while that server runs, and stops cleanly."""

from __future__ import annotations

import json
import socket
import time

import pytest

from cloudhop.spawner.providers.base import TAG_HUB
from ownports_hub import OwnPortsHub

LOCAL = {"provider": "local", "gpu": "none"}


def nobody_listens(port: int, timeout: float = 15) -> bool:
    """True once nothing accepts connections on the loopback ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return True
        time.sleep(0.3)
    return False


def node_hub_ids(hub) -> set[str]:
    """The hub id tags of the local nodes in this hub's data folder."""
    records = (hub.data_dir / "workspaces" / ".nodes").glob("*.json")
    return {json.loads(p.read_text())["tags"][TAG_HUB] for p in records}


@pytest.mark.e2e
def test_two_hubs_on_one_machine(tmp_path):
    a, b = OwnPortsHub(tmp_path, name="a"), OwnPortsHub(tmp_path, name="b")
    try:
        a.start()
        b.start()
        ports = a.kept_ports() + b.kept_ports()
        assert len(set(ports)) == 4 and not {8081, 8001} & set(ports), ports

        for hub in (a, b):
            hub.spawn("ada", LOCAL)
            # ada's server answers through this hub's proxy, to this hub's token, which
            # the server checks with the hub its JUPYTERHUB_API_URL names
            r = hub.server_api("GET", "ada", "api/status")
            assert r.status_code == 200, f"{r.status_code}\n{hub.log()}"
        hub_ids = {(a.data_dir / "hub_id").read_text().strip(), (b.data_dir / "hub_id").read_text().strip()}
        assert len(hub_ids) == 2
        assert node_hub_ids(a) == {"hub-" + (a.data_dir / "hub_id").read_text().strip()}
        assert node_hub_ids(b) == {"hub-" + (b.data_dir / "hub_id").read_text().strip()}

        # a restart keeps the ports: ada's running server still reaches its hub
        before = a.kept_ports()
        a.stop()
        a.start()
        assert a.kept_ports() == before
        assert a.wait_ready("ada")
        assert a.server_api("GET", "ada", "api/status").status_code == 200, a.log()

        for hub in (a, b):
            hub.stop_server("ada")
    finally:
        a.stop()
        b.stop()
    for hub in (a, b):
        assert hub.proc.returncode is not None
        assert all(nobody_listens(p) for p in hub.kept_ports()), f"a hub or proxy still listens:\n{hub.log()}"
