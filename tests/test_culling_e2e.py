"""Culling and metrics end to end, on one hub with a 1-minute idle policy: a server whose
kernel is busy and one whose (fake) GPU is busy are kept while an idle one is culled (and
an idle T4 server, whose GPU type has a longer limit, is kept too); a
server about to be culled is warned and "keep running" counts as activity; and
``/hub/metrics`` parses with prometheus_client and holds every Cloudhop family after the
spawns. In Chromium, JupyterLab shows the warning with its "Keep running" button (a
server of the "lab" group, whose hour-long limit is inside the warning window from the
start, so its open tab's own requests do not hide the warning)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import _stop_all_servers
from hubfixture import HubProcess
from prometheus_client.parser import text_string_to_metric_families
from test_lab_extension import ARGS, CHROMIUM, SCREENSHOTS, _chromium_or_skip

from tests.cloudkit import wait_for

pytestmark = pytest.mark.e2e
TESTS = str(Path(__file__).parent)
GPUS = [{"name": "Tesla T4", "memory_gib": 15, "uuid": "GPU-fake-0000", "utilization": 85},
        {"name": "Tesla T4", "memory_gib": 15, "uuid": "GPU-fake-0001", "utilization": 0}]
FAMILIES = {
    "cloudhop_spawn_duration_seconds", "cloudhop_launch_duration_seconds", "cloudhop_failover_attempts",
    "cloudhop_running_nodes", "cloudhop_spend_rate_usd_per_hour", "cloudhop_spend_usd",
    "cloudhop_move_duration_seconds", "cloudhop_move_bytes", "cloudhop_store_bytes",
    "cloudhop_server_gpu_utilization_percent", "cloudhop_server_gpu_memory_used_bytes",
    "cloudhop_server_gpu_memory_total_bytes",
}


def user_token(hub, user: str) -> str:
    r = hub.api("POST", f"/users/{user}/tokens", json={"note": "test"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def activity(hub, user: str, token: str, method: str = "GET") -> dict:
    r = requests.request(method, f"{hub.url}/user/{user}/cloudhop/api/activity",
                         headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


CONFIG = f"""
c.LocalProvider.nvml_module = "fakes.nvml"
c.Policy.groups = {{"default": {{"providers": ["local"], "idle_minutes": {{"none": 1, "T4": 10}}}},
                    "lab": {{"providers": ["local"], "idle_minutes": 60}}}}
c.CloudhopCuller.every = 5
c.CloudhopCuller.report_seconds = 5
c.CloudhopCuller.warn_minutes = 61
c.Spawner.environment = {{"CLOUDHOP_NVML_MODULE": "fakes.nvml", "PYTHONPATH": {TESTS!r},
                          "CLOUDHOP_FAKE_GPUS": {json.dumps(GPUS)!r}}}
c.JupyterHub.authenticate_prometheus = False
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = HubProcess(tmp_path_factory.mktemp("culling"), extra_config=CONFIG,
                     env={"CLOUDHOP_FAKE_GPUS": json.dumps(GPUS), "PYTHONPATH": TESTS}, name="culling")
    try:
        yield hub.start()
    finally:
        _stop_all_servers(hub)
        hub.stop()


@pytest.mark.browser
def test_lab_warns_before_a_cull_and_keep_running_reports_activity(hub):
    _chromium_or_skip()
    hub.ensure_user("wendy")
    assert hub.api("POST", "/groups/lab", json={"users": ["wendy"]}).status_code == 201
    hub.spawn("wendy", {"provider": "local", "gpu": "none"})
    try:
        lab_warns(hub)
    finally:
        hub.stop_server("wendy")


def lab_warns(hub) -> None:
    sync_api = _chromium_or_skip()
    password = (hub.data_dir / "user_password").read_text().strip()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{hub.url}/hub/login")
            page.fill("#username_input", "wendy")
            page.fill("#password_input", password)
            page.click("#login_submit")
            page.goto(f"{hub.url}/user/wendy/lab")
            toast = page.locator(".Toastify__toast", has_text="will be stopped")
            try:  # JupyterLab loads slowly on a busy machine
                toast.wait_for(timeout=240_000)
            except Exception:
                page.screenshot(path=str(SCREENSHOTS / "lab-cull-warning-missing.png"))
                raise
            assert "Use it, or choose Keep running." in toast.inner_text()
            toast.screenshot(path=str(SCREENSHOTS / "lab-cull-warning.png"))
            before = hub.server_model("wendy")["last_activity"]
            # (JupyterLab adds a cache-busting query to the URL)
            with page.expect_response(lambda r: "/cloudhop/api/activity?" in r.url
                                      and r.request.method == "POST") as answer:
                toast.get_by_role("button", name="Keep running").click()
            assert answer.value.status == 200, answer.value.text()
            assert answer.value.json()["error"] is None
            assert hub.server_model("wendy")["last_activity"] > before
        finally:
            browser.close()


def test_busy_servers_are_kept_while_an_idle_one_is_culled(hub):
    hub.spawn("busy", {"provider": "local", "gpu": "none"})
    kernel = hub.kernel("busy")

    def train():  # a long step sends no messages: only the kernel's "busy" state says it works
        try:
            kernel.execute("import time; time.sleep(600)", 660)
        except Exception:  # noqa: BLE001 - the connection closed at the end of the test
            pass
    threading.Thread(target=train, daemon=True).start()
    hub.spawn("gpu", {"provider": "local", "gpu": "T4", "gpu_count": 1})  # the busy GPU
    hub.spawn("t4idle", {"provider": "local", "gpu": "T4", "gpu_count": 1})  # the idle one
    # the 1-minute servers last, so none is culled before the checks below
    hub.spawn("keeper", {"provider": "local", "gpu": "none"})
    hub.spawn("idle", {"provider": "local", "gpu": "none"})

    # the metrics after the spawns: every family, in a text prometheus_client parses
    r = requests.get(f"{hub.url}/hub/metrics", timeout=30)
    assert r.status_code == 200, r.text
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert FAMILIES <= set(families), FAMILIES - set(families)
    spawns = [s for s in families["cloudhop_spawn_duration_seconds"].samples
              if s.name.endswith("_count") and s.labels == {"provider": "local", "status": "ready"}]
    assert spawns and spawns[0].value >= 5
    nodes = {(s.labels["gpu"], s.value) for s in families["cloudhop_running_nodes"].samples}
    assert nodes == {("none", 3), ("T4", 2)}, nodes

    # a warning before the cull (here the window is longer than the limit: at once), and
    # "keep running" puts the cull off
    token = user_token(hub, "keeper")
    warned = wait_for(lambda: activity(hub, "keeper", token)["cull"], 60, "a warning", hub)
    assert warned["action"] == "warn" and warned["reason"] == "idle" and warned["extendable"]
    assert "Keep running" in warned["message"] and "1 minute" in warned["message"]
    before = hub.server_model("keeper")["last_activity"]
    kept = activity(hub, "keeper", token, "POST")
    assert kept["error"] is None and kept["cull"]["cull_at"] > warned["cull_at"], (warned, kept)
    assert hub.server_model("keeper")["last_activity"] > before

    # the GPU server's readings reach the hub's metrics
    def gpu_reading():
        text = requests.get(f"{hub.url}/hub/metrics", timeout=30).text
        for family in text_string_to_metric_families(text):
            if family.name == "cloudhop_server_gpu_utilization_percent":
                return [s.value for s in family.samples if s.labels["user"] == "gpu"]
        return None
    assert wait_for(gpu_reading, 30, "a GPU reading", hub) == [85.0]

    started = time.monotonic()
    wait_for(lambda: hub.server_model("idle") is None, 150, "the idle server's cull", hub)
    assert time.monotonic() - started < 150
    assert "Culling server idle (idle" in hub.log_path.read_text(errors="replace")
    for user in ("busy", "gpu", "t4idle"):
        assert hub.server_model(user) is not None, f"{user}'s server was culled:\n{hub.log()}"
        assert (hub.server_model(user) or {}).get("ready")
    kernel.close()
