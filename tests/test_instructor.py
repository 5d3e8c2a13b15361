"""The instructor's page (hub/instructor.py): its rows and refusals on their own, then a
real hub on the fake NVML where students run on MIG slices and a time-shared GPU, the
page lists them, hands out a notebook, refuses a helper without the permission (naming
it), and stops the whole group in one action."""

from __future__ import annotations

import datetime
import getpass
import json
import os
import re
from pathlib import Path

import pytest

from cloudhop.extensions.hubclient import HubError
from cloudhop.hub.instructor import SERVICE_NAME, refusal, render, running_rows, seats
from fakes.nvml import fake_env, mig_gpu
from test_lab_extension import ARGS, CHROMIUM, NOTEBOOK, SCREENSHOTS
from test_sharing import login

NOW = datetime.datetime(2026, 5, 4, 12, 0, tzinfo=datetime.timezone.utc)
TESTS = str(Path(__file__).parent)


def _user(name, groups, **servers):
    return {"name": name, "groups": groups, "servers": servers}


def _server(offer, started="2026-05-04T11:00:00Z", active="2026-05-04T11:45:00Z", **more):
    return {"started": started, "last_activity": active, "stopped": False,
            "state": {"offer": offer, "request": {}}, "user_options": {}, **more}


def test_rows_name_the_slice_idle_minutes_and_spend():
    mig = {"provider": "local", "region": "mig", "gpu": "A100-80GB-MIG-1g.10gb", "gpu_count": 1, "price_hour": 0.5}
    shared = {"provider": "local", "region": "shared", "gpu": "L4-shared", "gpu_count": 1, "price_hour": 0.2,
              "gpu_shared_by": 4}
    users = [_user("s2", ["students"], **{"": _server(shared)}),
             _user("s1", ["students"], **{"": _server(mig), "old": {"stopped": True}}),
             _user("t", [], **{"cpu": _server({"provider": "aws", "region": "us-east-1", "gpu": "none",
                                               "gpu_count": 0, "price_hour": None})})]
    rows = running_rows(users, NOW)
    assert [(r.user, r.server, r.gpu) for r in rows] == [
        ("s1", "", "1 x A100-80GB 1g.10gb"), ("s2", "", "1 x L4 (shared by up to 4)"), ("t", "cpu", "none")]
    assert rows[0].idle_minutes == 15 and rows[0].spend == 0.5 and rows[0].started == "2026-05-04 11:00 UTC"
    assert rows[2].spend is None, "an unknown price is no spend, not $0"
    assert seats({"name": "students", "properties": {"seats": 30}}, rows) == (2, 30)
    assert seats({"name": "students", "properties": {}}, rows, {}) == (2, None)
    assert seats({"name": "students", "properties": {}}, rows, {"students": 30}) == (2, 30), "a workshop's seats"


def test_refusals_name_the_missing_permission():
    assert refusal("stop", HubError(403, "Action is not authorized"), "group 'students'") == \
        "you lack 'admin:servers' on group 'students' (needed to stop servers)"
    assert refusal("copy", HubError(403, "x")).startswith("you lack 'access:servers'")
    assert refusal("stop", HubError(404, "No access to resources or resources not found")).startswith(
        "you lack 'admin:servers'")
    assert refusal("list", HubError(None, "connection refused")) == \
        "could not list users: hub unreachable: connection refused"


def test_the_page_escapes_what_users_name():
    rows = running_rows([_user("<b>x</b>", ["g"], **{"<i>": _server({"gpu": "none"})})], NOW)
    page = render({"rows": rows, "groups": [{"name": "<g>", "used": 1, "seats": None, "members": 1}], "errors": []},
                  ["<script>"], "")
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<script>" not in page and "<g>" not in page and "1 of unlimited" in page


HUB_CONFIG = f"""
c.LocalProvider.nvml_module = "fakes.nvml"
c.LocalProvider.regions = {{"mig": {{"gpus": "0"}}, "shared": {{"gpus": "1", "share_gpus": 4}}}}
c.Spawner.default_url = "/lab"
c.JupyterHub.load_roles.append({{"name": "helper", "users": ["ta"], "scopes": [
    "access:services!service={SERVICE_NAME}", "list:users", "list:groups", "read:groups",
    "read:servers!group=students"]}})
"""
STUDENTS = {"s1": {"region": "mig", "gpu": "A100-80GB-MIG-1g.10gb"}, "s2": {"region": "mig", "gpu": "A100-80GB-MIG-1g.10gb"},
            "s3": {"region": "shared", "gpu": "L4-shared"}}


@pytest.mark.e2e
@pytest.mark.browser
def test_instructor_lists_slices_hands_out_a_notebook_and_stops_a_group(hub_factory, tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package to run browser tests")
    sync_api = pytest.importorskip("playwright.sync_api")
    l4 = {"name": "NVIDIA L4", "memory_gib": 22.5, "uuid": "GPU-fake-0001"}
    hub = hub_factory(HUB_CONFIG, env={**fake_env(mig_gpu(0), l4), "PYTHONPATH": TESTS})
    for name in [*STUDENTS, "ta"]:
        hub.ensure_user(name)
    assert hub.api("POST", "/groups/students", json={"users": list(STUDENTS)}).status_code == 201
    assert hub.api("PUT", "/groups/students/properties", json={"seats": 30}).status_code == 200
    for name, where in STUDENTS.items():
        hub.spawn(name, {"provider": "local", "gpu_count": 1, **where})
    notebook = tmp_path / "week1.ipynb"
    notebook.write_text(json.dumps(NOTEBOOK))
    user_password = (hub.data_dir / "user_password").read_text().strip()
    admin_password = (hub.data_dir / "admin_password").read_text().strip()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    url = f"{hub.url}/services/{SERVICE_NAME}/"

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            # a helper who may look but not stop: the refusal names the permission
            ta = login(browser, hub, "ta", user_password)
            ta.goto(url)
            authorize(ta)
            ta.locator("#ch-servers").wait_for(timeout=60_000)
            assert ta.locator("#ch-servers tr").count() == 1 + 3, ta.content()[:2000]
            ta.locator("tr.ch-group[data-group=students] .ch-stop-group").click()
            ta.locator("#ch-messages").wait_for(timeout=30_000)
            assert "you lack 'admin:servers' on group 'students' (needed to stop servers)" in \
                ta.locator("#ch-messages").inner_text()
            assert all(hub.server_model(s)["ready"] for s in STUDENTS), "nothing was stopped"

            # the instructor (an admin); the spawn form names the slices with their memory
            teacher = login(browser, hub, getpass.getuser(), admin_password)
            teacher.goto(f"{hub.url}/hub/spawn/{getpass.getuser()}/look")
            teacher.wait_for_selector("#ch-offer-rows tr")
            teacher.select_option("#ch-provider", "local")
            labels = teacher.eval_on_selector_all("#ch-gpu option", "els => els.map(e => e.textContent)")
            assert "A100-80GB 1g.10gb (9.8 GiB)" in labels and "L4 (shared by up to 4, 22.5 GiB)" in labels, labels

            # the instructor's page, from the hub's navigation
            teacher.goto(f"{hub.url}/hub/home")
            teacher.locator(".dropdown-toggle", has_text="Services").click()
            teacher.locator(f"a.dropdown-item[href*='/services/{SERVICE_NAME}/']").click()
            authorize(teacher)
            teacher.wait_for_url(re.compile(f".*/services/{SERVICE_NAME}/.*"), timeout=60_000)
            table = teacher.locator("#ch-servers").inner_text()
            assert table.count("A100-80GB 1g.10gb") == 2 and "L4 (shared by up to 4)" in table, table
            assert "3 of 30" in teacher.locator("tr.ch-group[data-group=students] .ch-seats").inner_text()
            teacher.screenshot(path=str(SCREENSHOTS / "instructor.png"), full_page=True)

            row = teacher.locator("tr.ch-group[data-group=students]")
            row.locator("input[type=file]").set_input_files(str(notebook))
            row.locator(".ch-copy").click()
            teacher.wait_for_function(
                "() => (document.querySelector('#ch-messages')?.textContent.match(/copied/g) || []).length === 3",
                timeout=60_000)
            r = hub.server_api("GET", "s3", "api/contents/week1.ipynb")
            assert r.status_code == 200 and "x = 6 * 7" in json.dumps(r.json()["content"])

            teacher.locator("tr.ch-group[data-group=students] .ch-stop-group").click()
            teacher.wait_for_function(
                "() => (document.querySelector('#ch-messages')?.textContent.match(/stopping/g) || []).length === 3",
                timeout=60_000)
        finally:
            browser.close()
    for name in STUDENTS:
        _wait_gone(hub, name)


def authorize(page):
    """Confirm, once, that the instructor's page may act for the user (JupyterHub asks)."""
    page.wait_for_url(re.compile(r".*(/hub/api/oauth2/authorize|/services/).*"), timeout=60_000)
    if "/oauth2/authorize" in page.url:
        page.locator("button[type=submit]", has_text="Authorize").click()
    page.wait_for_url(re.compile(f".*/services/{SERVICE_NAME}/.*"), timeout=60_000)


def _wait_gone(hub, user, timeout=120):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if hub.server_model(user) is None:
            return
        time.sleep(0.5)
    raise AssertionError(f"{user}'s server did not stop")
