"""RayCluster (the workers of one server) on the real LocalProvider: worker processes are
real worker launchers waiting for a head (no Ray is started here, so this stays fast).
Covers GPU allocation and labels, capacity failover, a dead worker reported once and
replaced, resizing, stop, and re-attaching by tag from saved state."""

from __future__ import annotations

import sys
import time

import psutil
import pytest

from cloudhop.spawner.options import OptionError, RayRequest
from cloudhop.spawner.providers.base import TAG_HUB, TAG_SERVER, TAG_USER
from cloudhop.spawner.providers.local import LocalProvider
from cloudhop.spawner.ray.cluster import RayCluster
from fakes.nvml import fake_gpus_env
from failover_double import ScriptedCloud

TAGS = {TAG_HUB: "hub-ray-test", TAG_USER: "ada", TAG_SERVER: ""}
NO_HEAD = "127.0.0.1:9"  # nothing listens: the launchers wait for the head, alive


@pytest.fixture
def provider(tmp_path, monkeypatch):
    for k, v in fake_gpus_env("Tesla T4", "Tesla T4").items():
        monkeypatch.setenv(k, v)
    p = LocalProvider(default_root=str(tmp_path / "ws"), nvml_module="fakes.nvml", isolation="none",
                      regions={"a": {"gpus": "0,1"}}, stop_timeout=5)
    yield p
    for rec in p._records():
        p._kill_tree(rec)


def cluster_on(provider, offers, events, workers=1, **kw):
    return RayCluster(request=RayRequest(workers=workers, gpu=offers[0].gpu, gpu_count=offers[0].gpu_count),
                      address=NO_HEAD, port_base=24000, provider_for=lambda name: provider,
                      tags=TAGS, python=sys.executable, offers=offers, on_event=events.append, **kw)


def proc_of(provider, node_id) -> psutil.Process:
    """The worker launcher's process, once it has exec'd (before that it shows the
    parent's command line and environment)."""
    proc = psutil.Process(next(r for r in provider._records() if r["id"] == node_id)["pid"])
    deadline = time.monotonic() + 20
    while "cloudhop.spawner.ray.worker" not in " ".join(proc.cmdline()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


def t4(provider):
    return [o for o in provider.offers() if o.gpu == "T4" and o.gpu_count == 1]


async def test_workers_get_their_own_gpus_and_labels_and_stop_leaves_nothing(provider):
    events: list[str] = []
    cluster = cluster_on(provider, t4(provider), events)
    await cluster.launch(3)  # two T4s on this machine: the third finds no capacity
    live = cluster.live()
    assert len(live) == 2 and cluster.status()["dead"] == 1
    assert any("could not start" in e and "capacity" in e for e in events), events
    procs = [proc_of(provider, w["id"]) for w in live]
    gpus = {p.environ()["CUDA_VISIBLE_DEVICES"] for p in procs}
    assert len(gpus) == 2 and "" not in gpus, "each worker sees only its own GPU"
    for p in procs:
        cmd = " ".join(p.cmdline())
        assert "cloudhop.spawner.ray.worker" in cmd and f"--address={NO_HEAD}" in cmd
        assert "--num-gpus=1" in cmd and '"cloudhop_gpu:T4": 1' in cmd
        assert not any(k.startswith("JUPYTERHUB_") or "TOKEN" in k for k in p.environ())
    assert {n["role"] for n in cluster.node_entries()} == {"ray-worker"} and len(cluster.node_entries()) == 2

    await cluster.stop()
    gone, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive and cluster.workers == [] and cluster.node_entries() == []


async def test_a_dead_worker_is_reported_once_and_scale_replaces_it(provider):
    events: list[str] = []
    changes: list[int] = []
    cluster = cluster_on(provider, t4(provider), events, on_change=lambda: changes.append(1))
    [rec] = await cluster.launch(1)
    proc = proc_of(provider, rec["id"])
    for p in [proc, *proc.children(recursive=True)]:
        p.kill()
    proc.wait(10)

    died = await cluster.refresh()
    assert [w["id"] for w in died] == [rec["id"]]
    assert any("died" in e and rec["id"] in e for e in events)
    assert await cluster.refresh() == [], "reported once"
    assert cluster.status()["dead"] == 1 and cluster.status()["alive"] == 0
    assert changes, "the spawner is told, so its state and nodes list follow"

    status = await cluster.scale(1)
    assert status["alive"] == 1 and status["dead"] == 0
    assert cluster.live()[0]["id"] != rec["id"]
    status = await cluster.scale(0)
    assert status["alive"] == 0 and status["requested"] == 0 and provider._records() == []


@pytest.mark.parametrize("bad", [-1, 33, "two", True, 1.5])
async def test_scale_rejects_a_bad_count_naming_the_field(provider, bad):
    cluster = cluster_on(provider, t4(provider), [])
    with pytest.raises(OptionError) as err:
        await cluster.scale(bad)
    assert err.value.field == "workers" and "0 to 32" in str(err.value)


async def test_workers_fail_over_like_the_notebook(tmp_path):
    cloud = ScriptedCloud(default_root=str(tmp_path / "ws"), stop_timeout=5, isolation="none",
                          no_capacity={"ada": ["cheap/cpu-small"]})
    offers = sorted(cloud.offers(), key=lambda o: o.price_hour)
    events: list[str] = []
    cluster = cluster_on(cloud, offers, events)
    try:
        [rec] = await cluster.launch(1)
        assert rec["state"] in ("running", "launching") and rec["region"] == "mid"
        assert any("cheap" in e and "capacity" in e and "next offer" in e for e in events)
    finally:
        await cluster.stop()


async def test_state_round_trip_and_reattach_by_tag(provider):
    cluster = cluster_on(provider, t4(provider), [])
    [rec] = await cluster.launch(1)
    state = cluster.to_state()
    # a hub that died between launching a worker and saving state: the worker is found by tag
    state["workers"] = []
    events: list[str] = []
    again = RayCluster.from_state(state, provider_for=lambda name: provider, tags=TAGS,
                                  python=sys.executable, on_event=events.append)
    assert again.address == NO_HEAD and again.request.workers == 1 and again.offers == cluster.offers
    await again.refresh()
    assert [w["id"] for w in again.live()] == [rec["id"]]
    assert any("re-attached" in e for e in events)
    await again.stop()
    assert provider._records() == []


async def test_spawner_state_keeps_the_cluster_and_lists_workers_in_nodes(provider):
    from types import SimpleNamespace

    from cloudhop.spawner import CloudhopSpawner

    def new_spawner():
        return CloudhopSpawner(user=SimpleNamespace(name="ada", url="/user/ada/", escaped_name="ada"))

    s = new_spawner()
    s.provider = lambda name: provider
    s.nodes = [{"provider": "local", "id": "local-nb", "role": "notebook", "region": "a"}]
    s.node = None
    import ray_calls as hooks

    s.ray_cluster = cluster_on(provider, t4(provider), [], on_change=lambda: hooks._sync_nodes(s))
    [rec] = await s.ray_cluster.launch(1)
    state = s.get_state()
    assert {(n["id"], n["role"]) for n in state["nodes"]} == {("local-nb", "notebook"), (rec["id"], "ray-worker")}
    assert state["ray"]["address"] == NO_HEAD and state["ray"]["workers"][0]["id"] == rec["id"]

    t = new_spawner()
    t.load_state(state)
    assert t.ray_cluster is not None and t.ray_cluster.needs_reattach
    assert [w["id"] for w in t.ray_cluster.workers] == [rec["id"]]
    t.clear_state()
    assert t.ray_cluster is None
    await s.ray_cluster.stop()
    assert [n["role"] for n in s.nodes] == ["notebook"]


def test_workers_gpu_steers_where_the_notebook_lands(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from jupyterhub.spawner import SpawnException

    from cloudhop.spawner import CloudhopSpawner
    from cloudhop.spawner.options import parse_options
    from ray_calls import filter_plan

    for k, v in fake_gpus_env("Tesla T4").items():
        monkeypatch.setenv(k, v)
    local = LocalProvider(default_root=str(tmp_path / "ws"), nvml_module="fakes.nvml", isolation="none",
                          regions={"gpu-site": {"gpus": "0"}, "cpu-site": {"gpus": "none"}})
    s = CloudhopSpawner(user=SimpleNamespace(name="ada", url="/user/ada/", escaped_name="ada"))
    s.provider = lambda name: local
    offers = local.offers()

    request = parse_options({"provider": "local", "gpu": "none", "ray": {"workers": 1, "gpu": "T4"}}, offers)
    ranked = filter_plan(s, request, s.plan(request, offers), offers)
    assert ranked and {o.region for o in ranked} == {"gpu-site"}

    request = parse_options({"provider": "local", "region": "cpu-site", "gpu": "none",
                             "ray": {"workers": 1, "gpu": "T4"}}, offers)
    with pytest.raises(SpawnException) as err:
        filter_plan(s, request, s.plan(request, offers), offers)
    assert err.value.status_code == 400 and err.value.message.startswith("ray.gpu:")
    assert "local/cpu-site" in err.value.message


async def test_a_resize_keeps_to_the_owners_group_policy(tmp_path):
    from types import SimpleNamespace

    from traitlets.config import Config

    from cloudhop.spawner import CloudhopSpawner
    from cloudhop.spawner.options import LaunchRequest
    from cloudhop.spawner.policy import PolicyError
    import ray_calls as hooks

    local = LocalProvider(default_root=str(tmp_path / "ws"), nvml_module="fakes.nvml", isolation="none",
                          regions={"a": {"gpus": "none"}}, cpu_price_hour=0.5, stop_timeout=5)
    cpu = [o for o in local.offers() if o.gpu_count == 0]
    c = Config()
    c.Policy.groups = {"class": {"max_ray_workers": 2, "budget": {"usd": 1.2, "period": "day"}}}
    user = SimpleNamespace(name="ada", url="/user/ada/", escaped_name="ada", groups=[SimpleNamespace(name="class")])
    s = CloudhopSpawner(user=user, config=c)
    s.provider = lambda name: local
    s.offer, s.request = cpu[0], LaunchRequest(provider="local", region="a", ray=RayRequest(workers=1))
    s.ray_cluster = RayCluster(request=RayRequest(workers=1), address=NO_HEAD, port_base=24000,
                               provider_for=lambda name: local, tags=TAGS, python=sys.executable, offers=cpu)
    await s.ray_cluster.launch(1)
    try:
        with pytest.raises(PolicyError) as err:
            await hooks.resize(s, 3)
        assert (err.value.field, err.value.rule) == ("workers", "max_ray_workers")
        assert str(err.value) == "workers: 3 Ray workers is more than group 'class' allows: at most 2"
        # $0.50/h a node: an hour of the notebook and two workers is more than the budget
        with pytest.raises(PolicyError, match=r"^workers: one hour at \$1.50/h is more than the \$1.20 left") as err:
            await hooks.resize(s, 2)
        assert err.value.rule == "budget" and err.value.status_code == 403
        assert len(s.ray_cluster.live()) == 1 and len(local._records()) == 1, "a refusal launches nothing"
        # with the budget spent, workers can still be removed, not added
        s.policy.spend = lambda user, group, since: 1.2
        assert (await hooks.resize(s, 0))["alive"] == 0
        with pytest.raises(PolicyError, match="budget"):
            await hooks.resize(s, 1)
        with pytest.raises(OptionError, match="^workers: must be a whole number"):
            await hooks.resize(s, -1)
    finally:
        await s.ray_cluster.stop()
    assert local._records() == []
