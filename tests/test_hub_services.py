"""Hub-managed services: the idle culler stops idle servers (and their processes),
and every Cloudhop service ends with the hub that started it."""

from __future__ import annotations

import time

import psutil
import pytest
from traitlets.config import Config

from cloudhop.hub.services import CULLER_SCOPES, add_idle_culler, add_service


def test_culler_config_keeps_the_operators_services():
    c = Config()
    c.JupyterHub.services = [{"name": "mine", "api_token": "x"}]
    c.JupyterHub.load_roles = [{"name": "mine", "scopes": ["read:users"], "services": ["mine"]}]
    service = add_idle_culler(c, timeout=3600)
    assert "--timeout=3600" in service["command"] and "--cull-every=300" in service["command"]
    assert [s["name"] for s in c.JupyterHub.services] == ["mine", "cloudhop-idle-culler"]
    (role,) = [r for r in c.JupyterHub.load_roles if r["name"] == "cloudhop-idle-culler"]
    assert role["scopes"] == CULLER_SCOPES and "admin:users" not in role["scopes"]
    add_service(c, {"name": "cloudhop-idle-culler", "command": ["x"]})
    assert len(c.JupyterHub.services) == 2, "adding again replaces, never duplicates"


def test_cull_idle_is_the_hubs_limit_too():
    """`cloudhop up --cull-idle N`: the hub's cull warnings and a stop's reason use the
    same default limit as the culler service (not the config's, nor none)."""
    from cloudhop.hub.culling import CullSettings

    c = Config()
    c.CloudhopCuller.idle_minutes = 120
    add_idle_culler(c, timeout=600)
    assert CullSettings.from_config(c).idle_minutes == 10
    c = Config()
    add_idle_culler(c)  # no --cull-idle: the config's own limit stays
    assert CullSettings.from_config(c).idle_minutes is None


@pytest.mark.parametrize("bad", [0, -1, "60", 1.5, True])
def test_culler_timeout_must_be_positive_seconds(bad):
    with pytest.raises(ValueError, match="timeout"):
        add_idle_culler(Config(), timeout=bad)


def test_a_service_that_outlived_its_hub_before_it_looked_knows_the_hub_is_gone(monkeypatch):
    import os

    from cloudhop.hub.services import HUB_PID_ENV, hub_is_gone, hub_pid

    c = Config()
    add_service(c, {"name": "svc", "command": ["true"]})
    (svc,) = c.JupyterHub.services
    assert svc["environment"][HUB_PID_ENV] == str(os.getpid()), "the hub writes its own pid"
    monkeypatch.setenv(HUB_PID_ENV, str(os.getppid()))
    assert not hub_is_gone(hub_pid())
    # the hub died and this process was re-parented before it first asked: still gone
    monkeypatch.setenv(HUB_PID_ENV, "999999999")
    assert hub_is_gone(hub_pid())


@pytest.mark.e2e
def test_an_idle_server_is_culled_and_its_processes_end(hub_factory):
    hub = hub_factory("from cloudhop.hub.services import add_idle_culler\nadd_idle_culler(c, timeout=5, every=2)\n")
    model = hub.spawn("idle", {"provider": "local", "gpu": "none"})
    pid = model["state"]["node"]["info"]["pid"]
    deadline = time.monotonic() + 60
    while hub.server_model("idle") is not None and time.monotonic() < deadline:
        time.sleep(1)
    assert hub.server_model("idle") is None, f"the idle server was not culled:\n{hub.log()}"
    assert "cloudhop-idle-culler" in hub.log()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.e2e
def test_services_end_with_a_hub_killed_outright(hub_factory):
    import signal

    hub = hub_factory()
    hub_proc = psutil.Process(hub.proc.pid)
    services = [p for p in hub_proc.children(recursive=True)
                if any(m in " ".join(p.cmdline()) for m in ("cloudhop.hub.snapshot_store", "cloudhop.hub.reaper",
                                                            "cloudhop.hub.move_reconciler"))]
    assert len(services) == 3, [p.cmdline() for p in hub_proc.children(recursive=True)]
    hub.proc.send_signal(signal.SIGKILL)  # the hub alone; services live in their own sessions
    hub.proc.wait(10)
    _gone, alive = psutil.wait_procs(services, timeout=15)
    for p in alive:
        p.kill()
    assert not alive, f"still running after the hub died: {[p.cmdline() for p in alive]}"
    # the proxy the hub started is the hub's business: clean it up for the next test
    for p in psutil.process_iter(["cmdline"]):
        if str(hub.proxy_api_port) in " ".join(p.info["cmdline"] or []):
            p.kill()
