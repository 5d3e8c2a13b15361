"""Shared fixtures. ``hub_factory`` starts real ``cloudhop up`` hubs (see hubfixture)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests import their helpers by name

from hubfixture import HubProcess  # noqa: E402


@pytest.fixture
def hub_factory(tmp_path):
    """Start hubs with ``hub_factory(extra_config="...")``; all are stopped, and their
    users' servers deleted, at the end of the test."""
    hubs: list[HubProcess] = []

    def make(extra_config: str = "", **kw) -> HubProcess:
        hub = HubProcess(tmp_path, extra_config=extra_config, name=f"hub{len(hubs)}", **kw)
        hubs.append(hub)
        return hub.start()

    yield make
    for hub in hubs:
        _stop_all_servers(hub)
        hub.stop()


@pytest.fixture
def compute():
    """A local double of the Compute REST API (``tests/fakes/gcp_compute.py``) that the
    real google-cloud-compute client talks to; ``compute.url`` is its endpoint."""
    from tests.fakes.gcp_compute import FakeCompute

    fake = FakeCompute()
    fake.url = fake.start()
    yield fake
    fake.stop()


def _stop_all_servers(hub: HubProcess) -> None:
    if not hub.proc or hub.proc.poll() is not None:
        return
    try:
        users = hub.api("GET", "/users").json()
    except Exception:
        return
    for user in users:
        for name in list(user.get("servers", {})):
            try:
                hub.stop_server(user["name"], name)
            except Exception:
                pass
