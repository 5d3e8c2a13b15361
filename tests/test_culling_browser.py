"""The cull warning in JupyterLab, in Chromium against a real hub: a server inside its
warning window shows a notification with the hub's message and a "Keep running" button,
which reports activity to the hub. (tests/test_culling_e2e.py covers the culls.)"""

from __future__ import annotations

import pytest
from test_lab_extension import ARGS, CHROMIUM, SCREENSHOTS, _chromium_or_skip

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

# an hour's idle limit with more than an hour of warning: the warning shows at once, and
# nothing is culled while the test runs
CONFIG = """
c.Policy.groups = {"default": {"providers": ["local"], "idle_minutes": 60}}
c.CloudhopCuller.warn_minutes = 61
c.CloudhopCuller.report_seconds = 2
"""


def test_lab_warns_before_a_cull_and_keep_running_reports_activity(hub_factory):
    sync_api = _chromium_or_skip()
    hub = hub_factory(CONFIG)
    hub.spawn("wendy", {"provider": "local", "gpu": "none"})
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
            toast.wait_for(timeout=120_000)
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
