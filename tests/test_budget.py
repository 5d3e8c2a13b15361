"""Budgets (cloudhop.spawner.policy) counted from the spend ledger: bad settings are refused
at startup naming the setting; a spawn, a Ray resize and a move's check are refused when
the period's spend plus ``lookahead_minutes`` of the new price would pass the budget; a
budget per group counts every member; an admin's runtime budget replaces the config's;
the Home page's notice warns at 80%."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest
from jupyterhub.spawner import SpawnException
from traitlets import TraitError
from traitlets.config import Config

from cloudhop.spawner import CloudhopSpawner
from cloudhop.spawner.ledger import Wanted, ledger_for
from cloudhop.spawner.options import LaunchRequest
from cloudhop.spawner.policy import Policy, PolicyError
from cloudhop.spawner.schema import OptionError
from instant_cloud import CPU, NAME, InstantCloud
from test_operator_config import load_embedded


@pytest.mark.parametrize("budget, setting, must", [
    ({"usd": -5}, "['budget']['usd']", "a number of USD >= 0"),
    ({"usd": math.nan}, "['budget']['usd']", "a number of USD >= 0"),
    ({"usd": 5, "period": "year"}, "['budget']['period']", "one of day, week, month"),
    ({"usd": 5, "lookahead_minutes": -1}, "['budget']['lookahead_minutes']", "a number of minutes >= 0"),
    ({"usd": 5, "lookahead_minutes": math.nan}, "['budget']['lookahead_minutes']", "a number of minutes >= 0"),
    ({"usd": 5, "per": "team"}, "['budget']['per']", "one of user, group"),
    ({"usd": 5, "lookahead": 60}, "['budget']", "must be {'usd': amount"),
])
def test_a_bad_budget_is_refused_naming_the_setting(budget, setting, must):
    with pytest.raises(TraitError) as err:
        Policy(groups={"students": {"budget": budget}})
    assert f"Policy.groups['students']{setting}" in str(err.value) and must in str(err.value)


def test_cloudhop_up_refuses_a_bad_budget_at_startup_and_keeps_the_ledger_in_its_data_folder(tmp_path, monkeypatch):
    with pytest.raises(TraitError, match=r"Policy.groups\['default'\]\['budget'\]\['period'\]"):
        load_embedded(tmp_path, monkeypatch, 'c.Policy.groups = {"default": {"budget": {"usd": 5, "period": "fortnight"}}}')
    c = load_embedded(tmp_path, monkeypatch, "", data="good")
    assert c.CloudhopLedger.path == str(tmp_path / "good" / "ledger.sqlite")
    settings = [s for s in c.JupyterHub.services if s["name"] == "cloudhop-reaper"][0]["environment"]
    assert str(tmp_path / "good" / "ledger.sqlite") in settings["CLOUDHOP_REAPER_SETTINGS"], "the reaper closes spend"


def spend_in(config: Config, user: str, usd: float, groups=("default",)) -> None:
    """``usd`` of spend for ``user`` this period (an hour-long node, closed now)."""
    now = time.time()
    ledger = ledger_for(config)
    ledger.sync_server(user, f"past-{now}", list(groups), [Wanted("aws", f"i-{user}-{now}", "notebook", "r",
                                                                   "aws/r/x", usd, now - 3600)], now=now - 3600)
    ledger.sync_server(user, f"past-{now}", list(groups), [], now=now)


def ledger_config(tmp_path, groups: dict) -> Config:
    c = Config()
    c.CloudhopLedger.path = str(tmp_path / "ledger.sqlite")
    c.Policy.groups = groups
    c.CloudhopSpawner.hibernate = False
    c.CloudhopSpawner.hub_id = "spend-tests"
    return c


def test_the_lookahead_is_what_must_fit_in_what_is_left(tmp_path):
    c = ledger_config(tmp_path, {"default": {"budget": {"usd": 10, "period": "day", "lookahead_minutes": 30}}})
    policy = Policy(config=c)
    spend_in(c, "ana", 8.0)
    policy.check_budget([], "ana", 3.9)  # half an hour is $1.95 of the $2 left
    with pytest.raises(PolicyError, match=r"30 minutes at \$4.10/h is more than the \$2.00 left") as err:
        policy.check_budget([], "ana", 4.1)
    assert err.value.status_code == 403 and err.value.field == "budget"
    no_lookahead = Policy(config=c, groups={"default": {"budget": {"usd": 10, "lookahead_minutes": 0}}})
    no_lookahead.check_budget([], "ana", 1000.0)  # only what was spent counts
    spend_in(c, "ana", 2.0)
    with pytest.raises(PolicyError, match=r"has spent \$10.00 of its \$10.00 budget this month on your servers"):
        no_lookahead.check_budget([], "ana", 0.0)


def test_a_budget_per_group_counts_every_member_and_per_user_only_the_user(tmp_path):
    c = ledger_config(tmp_path, {"lab": {"budget": {"usd": 10, "per": "group", "lookahead_minutes": 0}},
                                 "class": {"budget": {"usd": 10, "lookahead_minutes": 0}}})
    policy = Policy(config=c)
    spend_in(c, "ana", 6.0, groups=["lab"])
    spend_in(c, "bo", 6.0, groups=["lab"])
    with pytest.raises(PolicyError, match=r"group 'lab' has spent \$12.00 of its \$10.00 budget this month;"):
        policy.check_budget(["lab"], "cy", 0.1)  # cy spent nothing; the group did
    spend_in(c, "dee", 6.0, groups=["class"])
    policy.check_budget(["class"], "eve", 0.1)  # per user: dee's spend is not eve's


def test_an_admins_budget_replaces_the_configured_one(tmp_path):
    c = ledger_config(tmp_path, {"default": {"budget": {"usd": 5, "lookahead_minutes": 0}}})
    policy = Policy(config=c)
    spend_in(c, "ana", 5.0)
    with pytest.raises(PolicyError):
        policy.check_budget([], "ana", 1.0)
    ledger_for(c).set_budget("default", 50.0, by="admin")
    policy.check_budget([], "ana", 1.0)
    status = policy.budget_status([], "ana")
    assert status["limited"] and status["fraction"] == pytest.approx(0.1, abs=0.001)
    assert status["budgets"][0]["usd"] == 50.0 and status["budgets"][0]["left"] == pytest.approx(45.0, abs=0.01)
    assert Policy(config=c, groups={"default": {}}).budget_status([], "ana")["limited"] is False


def new_spawner(cloud, config: Config, user=None, server: str = "") -> CloudhopSpawner:
    user = user or SimpleNamespace(name="ana", url="/user/ana/", escaped_name="ana", groups=[], spawners={})
    s = CloudhopSpawner(user=user, providers=[NAME], node_poll_interval=0.01, config=config)
    s.provider = lambda name: cloud
    s.get_env = lambda: {"JUPYTERHUB_API_URL": "http://hub.example.org/hub/api"}
    user.spawners[server] = s
    return s


async def test_a_spent_budget_refuses_a_spawn_a_resize_and_a_move_and_launches_nothing(tmp_path):
    cloud = InstantCloud()
    c = ledger_config(tmp_path, {"default": {"budget": {"usd": 0.5, "period": "day", "lookahead_minutes": 60}}})
    s = new_spawner(cloud, c)
    s.user_options = {"provider": NAME, "gpu": "none", "instance_type": CPU.instance_type, "ray": {"workers": 1, "gpu": "none"}}
    await s.start()  # $0.25/h and a $0.10/h worker: an hour fits in $0.50
    launched = len(cloud.specs)
    with pytest.raises(PolicyError, match="budget") as err:
        await s.resize_ray(4)  # an hour of four workers does not
    assert err.value.field == "workers" and len(cloud.specs) == launched
    with pytest.raises(OptionError, match="budget"):
        s.check_new_server(LaunchRequest(provider=NAME, gpu="none", instance_type=CPU.instance_type),
                           [CPU])  # a move's target beside this server
    spend_in(c, "ana", 0.5)
    other = new_spawner(cloud, c, user=s.user, server="second")
    other.user_options = {"provider": NAME, "gpu": "none"}
    with pytest.raises(SpawnException) as refused:
        await other.start()
    assert refused.value.status_code == 403 and "budget" in str(refused.value.message)
    assert len(cloud.specs) == launched, "nothing launched for a refused spawn"
    assert s.budget_notice["kind"] == "spent"


async def test_the_home_page_notice_warns_from_80_percent(tmp_path):
    c = ledger_config(tmp_path, {"default": {"budget": {"usd": 10, "period": "week", "lookahead_minutes": 0}}})
    s = new_spawner(InstantCloud(), c)
    spend_in(c, "ana", 7.0)
    assert s.budget_notice is None
    spend_in(c, "ana", 1.5)
    notice = s.budget_notice
    assert notice["kind"] == "warning" and "85% of your $10.00 budget this week" in notice["message"]


def test_an_admins_budget_holds_with_an_operators_own_spend_hook(tmp_path):
    c = ledger_config(tmp_path, {"default": {"budget": {"usd": 5, "lookahead_minutes": 0}}})
    policy = Policy(config=c)
    policy.spend = lambda user, group, since: 7.0  # the operator's accounting
    with pytest.raises(PolicyError):
        policy.check_budget([], "ana", 1.0)
    ledger_for(c).set_budget("default", 8.0)
    policy.check_budget([], "ana", 1.0)
