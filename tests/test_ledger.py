"""The spend ledger (cloudhop.spawner.ledger) and how a real ``CloudhopSpawner`` keeps
it (cloudhop.spawner.spend): every node of a server, notebook and Ray workers, is an
interval priced at launch, open while the node is in the server's state, closed when it
leaves; intervals outlive the process; a ledger that cannot be written stops spawns."""

from __future__ import annotations

import datetime
import time
from types import SimpleNamespace

import pytest
from jupyterhub.spawner import SpawnException
from traitlets.config import Config

from cloudhop.spawner import CloudhopSpawner
from cloudhop.spawner.ledger import Ledger, LedgerError, Wanted, ledger_for
from instant_cloud import CPU, NAME, SMALL, InstantCloud

T0 = 1_700_000_000.0


def node(nid: str, usd_hour: float, t0: float = T0, role: str = "notebook") -> Wanted:
    return Wanted(provider="aws", node=nid, role=role, region="us-east-1", offer=f"aws/us-east-1/{nid}",
                  usd_hour=usd_hour, t0=t0)


def test_an_open_interval_costs_up_to_now_and_a_closed_one_stops(tmp_path):
    ledger = Ledger(str(tmp_path / "ledger.sqlite"))
    assert ledger.sync_server("ada", "", ["default"], [node("i-1", 3600.0)], now=T0) == (1, 0)
    assert ledger.spent(user="ada", since=0, now=T0 + 5) == pytest.approx(5.0)
    assert ledger.spent(user="ada", since=T0 + 2, now=T0 + 5) == pytest.approx(3.0), "only the period counts"
    # the same nodes again: nothing changes (an idempotent save)
    assert ledger.sync_server("ada", "", ["default"], [node("i-1", 3600.0)], now=T0 + 5) == (0, 0)
    assert ledger.sync_server("ada", "", ["default"], [], now=T0 + 7) == (0, 1)
    assert ledger.spent(user="ada", since=0, now=T0 + 100) == pytest.approx(7.0)
    assert ledger.spent(user="bob", since=0, now=T0 + 100) == 0.0
    assert ledger.spent(group="default", since=0, now=T0 + 100) == pytest.approx(7.0)
    assert ledger.spent(group="students", since=0, now=T0 + 100) == 0.0


def test_workers_are_priced_on_their_own_and_close_alone(tmp_path):
    ledger = Ledger(str(tmp_path / "ledger.sqlite"))
    nb, w1, w2 = node("nb", 1.0), node("w1", 2.0, role="ray-worker"), node("w2", 2.0, role="ray-worker")
    ledger.sync_server("ada", "big", ["research"], [nb, w1, w2], now=T0)
    ledger.sync_server("ada", "big", ["research"], [nb, w1], now=T0 + 1800)  # scaled down to one worker
    ledger.sync_server("ada", "big", ["research"], [], now=T0 + 3600)
    assert ledger.spent(user="ada", since=0, now=T0 + 7200) == pytest.approx(1.0 + 2.0 + 1.0)
    assert ledger.by_server("ada", since=0, now=T0 + 7200) == {"big": pytest.approx(4.0)}
    assert [i.t1 for i in ledger.intervals(user="ada") if i.node == "w2"] == [T0 + 1800]


def test_open_intervals_survive_the_process_and_the_reaper_closes_them(tmp_path):
    path = str(tmp_path / "ledger.sqlite")
    first = Ledger(path)
    first.sync_server("ada", "", ["default"], [node("i-1", 36.0)], now=T0)
    # a hub killed outright: no close, no cleanup; the next process opens the same file
    second = Ledger(path)
    assert [i.node for i in second.intervals(open_only=True)] == ["i-1"]
    assert second.spent(user="ada", since=0, now=T0 + 100) == pytest.approx(1.0)
    assert second.close_node("aws", "i-1", now=T0 + 200) is True
    assert second.close_node("aws", "i-1", now=T0 + 300) is False, "closing twice changes nothing"
    assert first.spent(user="ada", since=0, now=T0 + 10_000) == pytest.approx(2.0)
    assert (tmp_path / "ledger.sqlite").stat().st_mode & 0o777 == 0o600


def test_a_ledger_that_cannot_be_written_says_which_file(tmp_path):
    bad = tmp_path / "ledger.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    ledger = Ledger(str(bad))
    with pytest.raises(LedgerError, match=f"the spend ledger {bad} cannot be"):
        ledger.check_writable()


def test_budgets_and_notices_are_kept(tmp_path):
    ledger = Ledger(str(tmp_path / "ledger.sqlite"))
    ledger.set_budget("students", 80.0, by="admin")
    ledger.add_notice("ada", "", "budget-stop", "stopped: budget spent", now=T0)
    assert ledger.budgets() == {"students": 80.0}
    assert ledger.notices("ada")[0]["message"] == "stopped: budget spent"
    assert ledger.notices("ada", since=T0 + 1) == []


def test_datetimes_are_read_as_utc(tmp_path):
    ledger = Ledger(str(tmp_path / "ledger.sqlite"))
    ledger.sync_server("ada", "", [], [node("i-1", 3600.0)], now=T0)
    since = datetime.datetime.fromtimestamp(T0 + 1, datetime.timezone.utc).replace(tzinfo=None)
    assert ledger.spent(user="ada", since=since, now=T0 + 3) == pytest.approx(2.0)


# -- a real spawner keeps it ----------------------------------------------------------


def new_spawner(cloud, config: Config, server: str = "") -> CloudhopSpawner:
    user = SimpleNamespace(name="ada", url="/user/ada/", escaped_name="ada", groups=[], spawners={})
    s = CloudhopSpawner(user=user, providers=[NAME], node_poll_interval=0.01, config=config)
    s.provider = lambda name: cloud
    s.get_env = lambda: {"JUPYTERHUB_API_URL": "http://hub.example.org/hub/api"}
    user.spawners[server] = s
    return s


def ledger_config(tmp_path) -> Config:
    c = Config()
    c.CloudhopLedger.path = str(tmp_path / "ledger.sqlite")
    c.CloudhopSpawner.hibernate = False
    c.CloudhopSpawner.hub_id = "spend-tests"
    return c


async def test_a_spawn_records_its_notebook_and_workers_and_a_stop_closes_them(tmp_path):
    cloud, c = InstantCloud(), ledger_config(tmp_path)
    s = new_spawner(cloud, c)
    s.user_options = {"provider": NAME, "gpu": "none", "instance_type": CPU.instance_type,
                      "ray": {"workers": 2, "gpu": "none"}}
    await s.start()
    ledger = ledger_for(c)
    open_now = {i.node: i for i in ledger.intervals(user="ada", open_only=True)}
    assert set(open_now) == {ref["id"] for ref in s.nodes} and len(open_now) == 3
    roles = sorted(i.role for i in open_now.values())
    assert roles == ["notebook", "ray-worker", "ray-worker"]
    notebook = open_now[s.node.id]
    assert notebook.usd_hour == CPU.price_hour and notebook.offer == CPU.key
    worker_offers = {o.key: o.price_hour for o in (CPU, SMALL)}
    assert all(i.usd_hour == worker_offers[i.offer] for i in open_now.values() if i.role == "ray-worker")
    assert notebook.t0 == s.attempts[-1]["started"], "priced from the launch, not from the save"
    assert s.spend_usd is not None and s.spend_usd >= 0

    await s.resize_ray(1)
    assert len(ledger.intervals(user="ada", open_only=True)) == 2, "a removed worker's interval closes"
    await s.stop()
    assert ledger.intervals(user="ada", open_only=True) == []
    assert len(ledger.intervals(user="ada")) == 3


async def test_a_poll_opens_what_a_killed_hub_did_not_write(tmp_path):
    cloud, c = InstantCloud(), ledger_config(tmp_path)
    s = new_spawner(cloud, c)
    s.user_options = {"provider": NAME, "gpu": "none"}
    await s.start()
    state = s.get_state()
    ledger = ledger_for(c)
    ledger.close_node(NAME, s.node.id)  # as if the write never happened ...
    ledger._run(lambda db: db.execute("DELETE FROM intervals"), write=True)
    restarted = new_spawner(cloud, c)  # ... and the hub restarted from its database
    restarted.load_state(state)
    assert await restarted.poll() is None
    (interval,) = ledger.intervals(user="ada", open_only=True)
    assert interval.t0 == state["attempts"][-1]["started"], "the launch time comes from the state"


async def test_a_ledger_that_cannot_be_written_refuses_the_spawn_and_launches_nothing(tmp_path):
    cloud, c = InstantCloud(), ledger_config(tmp_path)
    (tmp_path / "ledger.sqlite").write_bytes(b"not a database" * 100)
    s = new_spawner(cloud, c)
    s.user_options = {"provider": NAME, "gpu": "none"}
    with pytest.raises(SpawnException) as err:
        await s.start()
    assert err.value.status_code == 503
    assert "cannot record spend" in str(err.value.message) and str(tmp_path) not in str(err.value.message)
    assert cloud.specs == [], "nothing is launched uncounted"


async def test_a_ledger_that_cannot_be_read_refuses_a_resize_and_a_moves_check_with_503(tmp_path):
    from cloudhop.spawner.options import LaunchRequest
    from cloudhop.spawner.schema import OptionError

    cloud, c = InstantCloud(), ledger_config(tmp_path)
    c.Policy.groups = {"default": {"budget": {"usd": 100}}}
    s = new_spawner(cloud, c)
    s.user_options = {"provider": NAME, "gpu": "none", "ray": {"workers": 1, "gpu": "none"}}
    await s.start()
    launched = len(cloud.specs)
    ledger = ledger_for(c)
    ledger.close()
    (tmp_path / "ledger.sqlite").write_bytes(b"not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"ledger.sqlite{suffix}").unlink(missing_ok=True)
    with pytest.raises(OptionError) as err:
        await s.resize_ray(2)
    assert err.value.status == 503 and "cannot read its spend ledger" in str(err.value)
    with pytest.raises(OptionError) as err:
        s.check_new_server(LaunchRequest(provider=NAME, gpu="none"), [CPU])
    assert err.value.status == 503 and str(tmp_path) not in str(err.value)
    assert len(cloud.specs) == launched


# -- the reaper closes what it terminates, and what is gone ------------------------------


async def test_the_reaper_closes_the_spend_of_nodes_it_terminates_or_finds_gone(tmp_path):
    from cloudhop.hub.reaper import Reaper
    from tests.cloudkit import HUB_ID, spec_for
    from test_reaper import HubDouble

    cloud, ledger = InstantCloud(), Ledger(str(tmp_path / "ledger.sqlite"))
    leaked = await cloud.launch(spec_for(CPU, request_id="leak"))
    now = time.time()
    t0 = now - 10_000
    owned = Wanted(NAME, "r1/owned", "notebook", "r1", CPU.key, 1.0, t0)
    ledger.sync_server("ada", "", ["default"], [Wanted(NAME, leaked.id, "ray-worker", "r1", CPU.key, 1.0, t0)])
    ledger.sync_server("ada", "kept", ["default"], [owned], now=t0)
    ledger.sync_server("bo", "", ["default"], [Wanted(NAME, "r1/vanished", "notebook", "r1", CPU.key, 1.0, t0),
                                               Wanted(NAME, "r1/young", "notebook", "r1", CPU.key, 1.0, now - 5)],
                       now=now)
    hub = HubDouble()
    hub.serve("ada", "kept", [SimpleNamespace(provider=NAME, id="r1/owned", region="r1")])
    reaper = Reaper({NAME: cloud}, hub, HUB_ID, grace=60, clock=lambda: now, ledger=ledger)
    report = await reaper.sweep()
    assert report["providers"][NAME]["terminated"] == [leaked.id]
    assert report["providers"][NAME]["closed_spend"] == ["r1/vanished"], "not listed, not owned, not young"
    still_open = {i.node for i in ledger.intervals(open_only=True)}
    assert still_open == {"r1/owned", "r1/young"}, "owned and young nodes keep counting"
    assert ledger.spent(user="ada", since=0, now=now + 3600) > ledger.spent(user="bo", since=0, now=now + 3600)


def test_a_provider_that_runs_ray_itself_charges_the_whole_server_on_the_notebook():
    from cloudhop.spawner.options import LaunchRequest, RayRequest
    from cloudhop.spawner.spend import wanted

    def server(handles_ray: bool):
        return SimpleNamespace(
            request=LaunchRequest(provider=NAME, gpu="none", ray=RayRequest(workers=2)), offer=CPU,
            nodes=[{"provider": NAME, "id": "pod-1", "role": "notebook", "region": "r1"}], kept=[],
            attempts=[{"node": "pod-1", "started": T0}], node=None, ray_cluster=None, _price_hour=0.45,
            provider=lambda name: SimpleNamespace(handles_ray=handles_ray))

    (kube,) = wanted(server(True), now=T0 + 5)
    assert kube.usd_hour == 0.45 and kube.t0 == T0, "the workers' pods are counted on the notebook"
    (vm,) = wanted(server(False), now=T0 + 5)
    assert vm.usd_hour == CPU.price_hour, "elsewhere each worker is a node of its own"


def test_a_local_region_carries_a_price(tmp_path):
    from traitlets import TraitError

    from cloudhop.spawner.providers.local import LocalProvider

    local = LocalProvider(regions={"paid": {"gpus": "none", "price_hour": 3600}, "free": {"gpus": "none"}},
                          cpu_price_hour=0.5, isolation="none", default_root=str(tmp_path))
    prices = {o.region: o.price_hour for o in local.offers()}
    assert prices == {"paid": 3600.0, "free": 0.5}
    for bad in (-1, float("nan"), "cheap"):
        with pytest.raises((TraitError, ValueError), match=r"regions\['paid'\]\['price_hour'\] must be a number"):
            LocalProvider(regions={"paid": {"price_hour": bad}}, isolation="none", default_root=str(tmp_path))
