"""What the server extension tells JupyterLab about spend (cloudhop.extensions.price):
the hub ledger's spend for this server when the hub has one, and the budget warning
from 80% (the JupyterLab notification)."""

from __future__ import annotations

from cloudhop.extensions.hubclient import HubError
from cloudhop.extensions.price import PriceLookup, budget_warning
from cloudhop.spawner.spend import notice_for

ENV = {"CLOUDHOP_PROVIDER": "local", "CLOUDHOP_REGION": "paid", "CLOUDHOP_INSTANCE_TYPE": "cpu",
       "CLOUDHOP_GPU": "none", "CLOUDHOP_GPU_COUNT": "0"}
OFFER = {"provider": "local", "region": "paid", "instance_type": "cpu", "gpu": "none", "gpu_count": 0,
         "price_hour": 3600.0, "spot_price_hour": None}


def status(fraction, usd=5.0):
    """The usage API's ``budget``, with the hub's notice (:func:`notice_for`) for it."""
    budget = {"limited": True, "fraction": fraction,
              "budgets": [{"group": "default", "usd": usd, "period": "month", "left": usd * (1 - fraction),
                           "since": "2026-12-01T00:00:00+00:00"}]}
    budget["notice"] = notice_for(None, NoNotices(), [], "ada", status=budget)
    return budget


class NoNotices:
    def notices(self, user, since=None):
        return []


class Hub:
    configured, user, server_name = True, "ada", ""

    def __init__(self, usage):
        self.usage, self.asked = usage, []

    async def server(self, name):
        return {"started": "2026-12-01T00:00:00Z", "user_options": {}}

    async def offers(self):
        return [OFFER]

    async def request(self, method, path):
        self.asked.append((method, path))
        if isinstance(self.usage, Exception):
            raise self.usage
        return self.usage


async def test_the_ledgers_spend_and_the_budget_warning_reach_the_panel():
    hub = Hub({"running": [{"server": "", "spend": 4.2}], "budget": status(0.84)})
    got = await PriceLookup(hub, ENV).get()
    assert got["spend"] == 4.2 and got["spend_source"] == "ledger"
    assert got["budget"]["warning"] and "84% of your $5.00 budget this month" in got["budget"]["message"]
    assert hub.asked == [("GET", "/cloudhop/usage/ada")]


async def test_below_80_percent_or_without_a_ledger_there_is_no_warning():
    assert budget_warning(status(0.5)) is None
    assert budget_warning({"limited": False, "fraction": None, "budgets": []}) is None
    assert "Your budget is used up" in budget_warning(status(1.2))["message"]
    got = await PriceLookup(Hub(HubError(404, "not found")), ENV).get()
    assert "budget" not in got and got["spend"] is not None  # the estimate, as before


def test_the_notebook_panel_shows_price_spend_and_the_warning():
    from cloudhop.extensions.notebook import spend_note

    note = spend_note({"price_hour": 3600.0, "spend": 4.2, "spend_source": "ledger",
                       "budget": budget_warning(status(0.84))})
    assert note.startswith(" &middot; $3600.00/h &middot; spent $4.20<br>") and "84% of your $5.00" in note
    assert spend_note({"price_hour": 0.5, "spend": 0.25}).endswith("spent $0.25 (estimate)")
    assert spend_note({"price_hour": None, "spend": None}) == ""


async def test_the_spawn_form_lists_the_running_servers_with_price_and_spend(tmp_path):
    from types import SimpleNamespace

    from traitlets.config import Config

    from cloudhop.spawner import CloudhopSpawner
    from instant_cloud import CPU, NAME, InstantCloud

    c = Config()
    c.CloudhopLedger.path = str(tmp_path / "ledger.sqlite")
    c.CloudhopSpawner.hibernate = False
    c.CloudhopSpawner.hub_id = "spend-tests"
    c.Policy.groups = {"default": {"budget": {"usd": 0.001, "lookahead_minutes": 0}}}
    cloud, user = InstantCloud(), SimpleNamespace(name="ada", url="/user/ada/", escaped_name="ada", groups=[],
                                                  spawners={})

    def spawner(name):
        s = CloudhopSpawner(user=user, providers=[NAME], node_poll_interval=0.01, config=c)
        s.provider = lambda _: cloud
        s.get_env = lambda: {"JUPYTERHUB_API_URL": "http://hub.example.org/hub/api"}
        user.spawners[name] = s
        return s

    busy = spawner("busy")
    busy.user_options = {"provider": NAME, "gpu": "none", "instance_type": CPU.instance_type}
    await busy.start()
    form = await spawner("").get_options_form()
    row = form[form.index('<fieldset id="ch-running">'):form.index("</fieldset>", form.index('id="ch-running"'))]
    assert "<td>busy</td>" in row and "instant · r1" in row and '<td class="num">0.25</td>' in row
    assert 'id="ch-budget"' not in form  # nothing spent yet that counts
    (interval,) = busy.ledger.intervals(user="ada", open_only=True)
    assert interval.usd_hour == CPU.price_hour
    await busy.stop()
