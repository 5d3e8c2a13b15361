"""Attacks on the usage API (cloudhop.hub.usage_api, docs/security.md "Spend"): a user
reads another user's spend, a group's, everyone's, or the budgets, or raises a budget.
Each is refused (404 for another user's usage, so names are not disclosed; 403 for the
admins' calls) while the owner and an admin get their answers, on a real hub whose
ledger holds spend for both users.
"""

from __future__ import annotations

import getpass
import time

import pytest
import requests

from cloudhop.spawner.ledger import Ledger, Wanted

pytestmark = pytest.mark.e2e

CONFIG = """
c.Policy.groups = {"default": {"providers": ["local"], "budget": {"usd": 100, "period": "month"}}}
"""


def spend(hub, user: str, usd_hour: float, seconds: float) -> None:
    """Put ``seconds`` of a node at ``usd_hour`` into the hub's ledger for ``user``."""
    ledger = Ledger(str(hub.data_dir / "ledger.sqlite"))
    now = time.time()
    ledger.sync_server(user, "", ["default"], [Wanted("local", f"{user}-node", "notebook", "local",
                                                      "local/local/cpu", usd_hour, now - seconds)], now=now - seconds)
    ledger.sync_server(user, "", ["default"], [], now=now)
    ledger.close()


def test_only_the_owner_and_admins_read_usage_and_only_admins_change_budgets(hub_factory):
    hub = hub_factory(CONFIG)
    for name in ("vera", "mallory"):
        hub.ensure_user(name)
    spend(hub, "vera", 3600.0, 42)
    mallory = hub.api("POST", "/users/mallory/tokens", json={"expires_in": 600}).json()["token"]
    vera = hub.api("POST", "/users/vera/tokens", json={"expires_in": 600}).json()["token"]

    # the owner and an admin read vera's spend
    own = hub.api("GET", "/cloudhop/usage/vera", token=vera)
    assert own.status_code == 200 and own.json()["usd"] == pytest.approx(42.0, abs=0.01), own.text
    assert own.json()["budget"]["budgets"][0]["usd"] == 100
    assert hub.api("GET", "/cloudhop/usage/vera").json()["usd"] == pytest.approx(42.0, abs=0.01)

    # another user: the same 404 as for a user that does not exist, nothing of vera's
    theirs = hub.api("GET", "/cloudhop/usage/vera", token=mallory)
    nobody = hub.api("GET", "/cloudhop/usage/nobody-here", token=mallory)
    assert theirs.status_code == nobody.status_code == 404
    assert "42" not in theirs.text
    assert hub.api("GET", "/cloudhop/usage/vera", token=mallory, params={"since": "2000-01-01"}).status_code == 404
    assert requests.get(f"{hub.url}/hub/api/cloudhop/usage/vera", timeout=10).status_code == 403
    # mallory's own usage is hers alone
    mine = hub.api("GET", "/cloudhop/usage/mallory", token=mallory).json()
    assert mine["usd"] == 0 and mine["by_server"] == {}

    # the admins' calls
    for path, params in (("/cloudhop/usage", {"group": "default"}), ("/cloudhop/usage", {}),
                         ("/cloudhop/budgets", {}), ("/cloudhop/budgets/default", {})):
        r = hub.api("GET", path, token=mallory, params=params)
        assert r.status_code == 403, (path, r.text)
        assert "42" not in r.text
    r = hub.api("PUT", "/cloudhop/budgets/default", token=mallory, json={"usd": 1e9})
    assert r.status_code == 403
    assert hub.api("GET", "/cloudhop/budgets/default").json()["usd"] == 100, "the budget is unchanged"
    assert hub.api("GET", "/cloudhop/usage", params={"group": "default"}).json()["by_user"] == {
        "vera": pytest.approx(42.0, abs=0.01)}

    # bad input names the field
    r = hub.api("GET", "/cloudhop/usage/vera", token=vera, params={"since": "last tuesday"})
    assert r.status_code == 400 and r.json()["message"].startswith("since:")
    for body in ({"usd": -5}, {"usd": "lots"}, {"usd": True}, {"usd": 5, "period": "year"}):
        r = hub.api("PUT", "/cloudhop/budgets/default", json=body)
        assert r.status_code == 400, (body, r.text)
    r = hub.api("PUT", "/cloudhop/budgets/default", data=b'{"usd": NaN}')
    assert r.status_code == 400 and r.json()["message"].startswith("usd:")
    assert hub.api("PUT", "/cloudhop/budgets/no-such-group", json={"usd": 5}).status_code == 404

    # the admins' usage page
    user_browser = browser(hub, "mallory")
    page = user_browser.get(f"{hub.url}/hub/cloudhop/usage", timeout=30)
    assert page.status_code == 403 and "42.00" not in page.text
    assert 'id="cloudhop-usage-link"' not in user_browser.get(f"{hub.url}/hub/home", timeout=30).text
    admin = browser(hub, getpass.getuser(), "admin_password")
    assert 'id="cloudhop-usage-link"' in admin.get(f"{hub.url}/hub/home", timeout=30).text
    page = admin.get(f"{hub.url}/hub/cloudhop/usage", timeout=30)
    assert page.status_code == 200 and 'data-group="default"' in page.text
    assert "<td>vera</td><td class=\"text-end\">42.00</td>" in page.text


def browser(hub, user: str, password_file: str = "user_password") -> requests.Session:
    """A logged-in browser session of ``user``."""
    s = requests.Session()
    s.get(f"{hub.url}/hub/login", timeout=10)
    password = (hub.data_dir / password_file).read_text().strip()
    r = s.post(f"{hub.url}/hub/login", data={"username": user, "password": password,
                                             "_xsrf": s.cookies.get("_xsrf")}, timeout=30)
    assert r.status_code == 200, r.text[:500]
    return s
