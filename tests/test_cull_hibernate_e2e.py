"""The idle culler's stop hibernates, end to end: one real ``cloudhop up`` hub with a
30-second idle limit, its jupyterhub-idle-culler service running (checking every 3 s) and
two ephemeral local regions (a stopped server's workspace is deleted, as a cloud VM's
disk is).

A server with a file and a notebook session holding ``x = 42`` and a NumPy array is left
idle; the culler's own ``DELETE`` stops it (nobody else does); the stop snapshots it into
the server's line with the reason ``"cull"``; the workspace is gone; and the next start,
in the other region, brings back the file, the session and the values.
"""

from __future__ import annotations

import os
import re

import psutil
import pytest
from security.test_durable_stop import assert_restored, make_session, node_of

from tests.cloudkit import wait_for

pytestmark = pytest.mark.e2e

CONFIG = """
c.LocalProvider.regions = {"site-a": {"gpus": "none", "ephemeral": True},
                           "site-b": {"gpus": "none", "ephemeral": True}}
c.CloudhopCuller.idle_minutes = 0.5   # 30 s: the hub adds the culler service for it
c.CloudhopCuller.every = 3
c.CloudhopCuller.report_seconds = 2
"""


def test_the_cullers_stop_hibernates_and_the_next_start_restores(hub_factory):
    hub = hub_factory(extra_config=CONFIG)
    names = [" ".join(p.cmdline()) for p in psutil.Process(hub.proc.pid).children(recursive=True)]
    assert any("cloudhop.hub.culling_service" in n for n in names), f"no culler service runs: {names}"

    hub.spawn("ada", {"provider": "local", "region": "site-a"})
    shown = make_session(hub, "ada")
    assert shown.startswith("42 99.0 [[0.0, 1.5"), shown
    workspace = node_of(hub, "ada")["info"]["workspace"]
    assert os.path.isfile(os.path.join(workspace, "data", "results.csv"))
    log_before = len(hub.log_path.read_text(errors="replace"))

    # nobody touches the server now: the culler stops it once it has been idle 30 s
    wait_for(lambda: hub.server_model("ada") is None, 180, "the culler's stop", hub)
    log = hub.log_path.read_text(errors="replace")[log_before:]
    assert "Culling server ada (idle" in log, "the culler's policy hook decided it"
    assert re.search(r" 20[24] DELETE /hub/api/users/ada/server \(cloudhop-idle-culler@", log), \
        "stopped by the culler's own DELETE"
    assert not re.search(r"DELETE /hub/api/users/ada/server \((?!cloudhop-idle-culler@)", log), "and by no one else"
    assert "ada: stopping (culled: its culling limit has passed): snapshotting" in log
    assert "ada: hibernated into snapshot" in log
    assert not os.path.exists(workspace), "the ephemeral region deleted the workspace"

    # the snapshot is in ada's server's line, saying it was a cull
    line = hub.api("GET", "/cloudhop/snapshots/ada?server=")
    assert line.status_code == 200, line.text
    newest = line.json()["snapshots"][0]
    assert newest["reason"] == "cull" and newest["kind"] == "hibernate", newest
    assert newest["server"] == "" and newest["source"]["region"] == "site-a", newest
    assert newest["kernels"]["paths"] == ["analysis.ipynb"], newest

    # the next start (in the other region) restores the file, the session and the values
    hub.spawn("ada", {"provider": "local", "region": "site-b"})
    assert_restored(hub, "ada", shown, workspace)
    hub.stop_server("ada")
