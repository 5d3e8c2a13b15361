"""Budgets that hold, on a real ``cloudhop up`` hub: a local region priced at $3,600/h (one
second of running costs $1) and a $5 monthly budget with no lookahead. The user's first
server starts; the hub's budget watcher stops it once $5 is spent, through the hub's
normal stop, saying why; the usage API reports the spend; a second spawn is refused with
a 403 naming the budget; an admin raises the budget at runtime and the user starts again;
a hub killed outright keeps the running server's interval open, and counts on after it
restarts.
"""

from __future__ import annotations

import time

import pytest
from test_e2e_form_providers import login

pytestmark = pytest.mark.e2e

CONFIG = """
c.LocalProvider.regions = {"paid": {"gpus": "none", "price_hour": 3600}}
c.Policy.groups = {"default": {"providers": ["local"],
                               "budget": {"usd": 5, "period": "month", "lookahead_minutes": 0}}}
c.CloudhopBudgets.interval = 1
"""
ASK = {"provider": "local", "region": "paid", "gpu": "none"}


def start_until_stopped(hub, user: str, timeout: float = 120) -> float | None:
    """Start ``user``'s server and wait until the budget stops it; returns when it was
    first seen ready (None if it was stopped between two looks: on a loaded machine the
    $5 may be spent before the server answers, and the watcher stops it once it does)."""
    hub.ensure_user(user)
    r = hub.api("POST", f"/users/{user}/servers/", json=ASK)
    assert r.status_code in (201, 202), r.text
    ready = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = hub.server_model(user)
        if model is None:
            return ready
        if model.get("ready") and ready is None:
            ready = time.time()
        time.sleep(0.2)
    raise TimeoutError(f"the budget did not stop {user}'s server:\n{hub.log()}")


def test_a_spent_budget_stops_the_server_and_refuses_the_next_until_an_admin_raises_it(hub_factory):
    hub = hub_factory(CONFIG)
    ready = start_until_stopped(hub, "ada")

    usage = hub.api("GET", "/cloudhop/usage/ada").json()
    assert list(usage["by_server"]) == [""]
    assert usage["usd"] >= 5 - 1, usage  # at least the budget, to within a second's price
    (notice,) = [n for n in usage["notices"] if n["kind"] == "budget-stop"]
    assert "stopped by the budget" in notice["message"] and "'default'" in notice["message"]
    # stopped within a few seconds of crossing $5 (launched at t0, crossed at t0 + 5 s) or of
    # answering, when it crossed before: the watcher (every second) acted at notice["at"]
    from cloudhop.spawner.ledger import Ledger

    ledger = Ledger(str(hub.data_dir / "ledger.sqlite"))
    (row,) = ledger.intervals(user="ada")
    assert row.t1 is not None and row.usd_hour == 3600.0
    assert notice["at"] - max(row.t0 + 5, ready or 0) < 10, (notice, row, ready)
    assert usage["budget"]["limited"] and usage["budget"]["fraction"] >= 0.8
    assert usage["budget"]["notice"]["kind"] == "spent"  # what JupyterLab and the panel show
    assert "budget: stopping ada" in hub.log() or "budget: stopping" in hub.log()

    # the Home page tells the user why
    home = login(hub, "ada").get(f"{hub.url}/hub/home", timeout=30)
    assert home.status_code == 200 and "Your budget is used up (stopped by the budget" in home.text

    r = hub.api("POST", "/users/ada/servers/", json=ASK)
    assert r.status_code == 403, r.text
    assert "budget" in r.json()["message"] and "'default'" in r.json()["message"]

    # an admin raises the budget at runtime; the next spawn starts
    r = hub.api("PUT", "/cloudhop/budgets/default", json={"usd": 10_000})
    assert r.status_code == 200 and r.json()["usd"] == 10_000 and r.json()["configured_usd"] == 5, r.text
    assert hub.api("PUT", "/cloudhop/budgets/default", json={"usd": -1}).json()["message"].startswith("usd:")
    hub.spawn("ada", ASK)
    group = hub.api("GET", "/cloudhop/usage", params={"group": "default"}).json()
    assert group["by_user"]["ada"] >= usage["usd"] and group["budget"]["usd"] == 10_000

    # a hub killed outright loses no open interval; the restarted hub keeps counting it
    hub.kill()
    (running,) = ledger.intervals(user="ada", open_only=True)
    hub.start()
    assert hub.server_model("ada")["ready"]
    assert ledger.intervals(user="ada", open_only=True) == [running], "the same interval, still open"
    before = hub.api("GET", "/cloudhop/usage/ada").json()["usd"]
    time.sleep(1)
    assert hub.api("GET", "/cloudhop/usage/ada").json()["usd"] > before
    hub.stop_server("ada")
    assert ledger.intervals(user="ada", open_only=True) == []
    assert len(ledger.intervals(user="ada")) == 2
