"""``RayLauncher`` through its own narrow interface (explicit arguments, ``progress`` and
``save`` callables, no spawner), and the spawner's side of the seam: a spawn without
Ray never enters the launcher, a spawn with Ray hands the launched offer's head to
the workers and creates no spawner attribute of its own."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
from traitlets.config import Config

from cloudhop.spawner import CloudhopSpawner
from cloudhop.spawner.options import LaunchRequest, RayRequest
from cloudhop.spawner.policy import Policy, PolicyError
from cloudhop.spawner.providers.base import TAG_ROLE, CapacityError
from cloudhop.spawner.ray import CLUSTER_TAG, WORKER_ROLE
from cloudhop.spawner.ray.launcher import NotebookSpec, RayLauncher
from cloudhop.spawner.ray.ports import VM_BASE
from instant_cloud import CPU, NAME, SMALL, InstantCloud
from tests.cloudkit import spec_for

RAY = LaunchRequest(provider=NAME, region="r1", ray=RayRequest(workers=2))


class Recorder:
    def __init__(self):
        self.events, self.saves = [], 0

    def progress(self, message, progress=None):
        self.events.append(message)

    def save(self):
        self.saves += 1


async def test_the_launcher_runs_on_explicit_arguments_and_its_callables():
    cloud, seen = InstantCloud(), Recorder()
    ray = RayLauncher(lambda name: cloud, progress=seen.progress, save=seen.save)
    wrapped = ray.wrap_notebook_spec(spec_for(SMALL, request_id="spawn1-abc"), RAY)
    assert isinstance(wrapped, NotebookSpec)
    assert (wrapped.port_base, wrapped.cluster_id) == (VM_BASE, "spawn1-abc")
    assert "cloudhop.spawner.ray.head" in wrapped.spec.cmd and wrapped.spec.tags[CLUSTER_TAG] == "spawn1-abc"
    # a new token per cluster, for the head in its environment, in no command line
    token = wrapped.token
    assert token and len(token) >= 40 and token != ray.wrap_notebook_spec(spec_for(SMALL), RAY).token
    assert wrapped.spec.env["RAY_AUTH_TOKEN"] == token and wrapped.spec.env["RAY_AUTH_MODE"] == "token"
    assert token not in " ".join(wrapped.spec.cmd)

    notebook = await cloud.launch(wrapped.spec)
    tags = {"cloudhop-user": "ada", TAG_ROLE: WORKER_ROLE}
    await ray.start_workers(RAY, SMALL, notebook, cloud.offers(), "spawn1", head=wrapped, tags=tags)
    assert ray.cluster.address == f"{notebook.ip}:{VM_BASE}"
    assert len(ray.cluster.live()) == 2 and seen.saves >= 1
    assert any(e.startswith("Ray head at") for e in seen.events)
    workers = [s for s in cloud.specs if s.role == WORKER_ROLE]
    assert {w.tags[CLUSTER_TAG] for w in workers} == {"spawn1-abc"} and all(w.tags["cloudhop-user"] == "ada"
                                                                          for w in workers)
    assert {n["role"] for n in ray.node_entries()} == {WORKER_ROLE} and len(ray.node_entries()) == 2
    assert {w.env["RAY_AUTH_TOKEN"] for w in workers} == {token}, "the workers join with the head's token"
    assert token not in str(ray.cluster.status()) and not any(token in e for e in seen.events)

    again = RayLauncher(lambda name: cloud)
    again.load_state(ray.to_state(), tags=tags)
    assert again.cluster.tags[CLUSTER_TAG] == "spawn1-abc" and again.cluster.needs_reattach
    assert [w["id"] for w in again.cluster.workers] == [w["id"] for w in ray.cluster.workers]
    # a restarted hub launches further workers with the cluster's token
    await again.cluster.scale(3)
    assert cloud.specs[-1].role == WORKER_ROLE and cloud.specs[-1].env["RAY_AUTH_TOKEN"] == token
    await again.stop()

    await ray.stop()
    assert ray.cluster is None and cloud.live() == {notebook.id}


async def test_resize_checks_the_policy_it_is_given():
    cloud = InstantCloud()
    c = Config()
    c.Policy.groups = {"class": {"max_ray_workers": 2}}
    ray = RayLauncher(lambda name: cloud)
    notebook = await cloud.launch(spec_for(SMALL))
    await ray.start_workers(RAY, SMALL, notebook, cloud.offers(), "spawn1", head=None, tags={})
    args = dict(request=RAY, offer=SMALL, policy=Policy(config=c), groups=["class"], user="ada")
    with pytest.raises(PolicyError) as err:
        await ray.resize(3, **args)
    assert (err.value.field, err.value.rule, err.value.status) == ("workers", "max_ray_workers", 403)
    assert len(ray.cluster.live()) == 2, "a refusal launches nothing"
    assert (await ray.resize(1, **args))["alive"] == 1
    await ray.stop()


def test_a_provider_that_builds_ray_itself_only_gets_the_request():
    class BuildsRay(InstantCloud):
        handles_ray = True

    ray = RayLauncher(lambda name: BuildsRay())
    spec = spec_for(CPU)
    wrapped = ray.wrap_notebook_spec(spec, RAY)
    assert wrapped == NotebookSpec(dataclasses.replace(spec, ray=RAY.ray))
    assert not ray.wants_ray(RAY, NAME)


class NoRay:
    """Stands in for the spawner's launcher in a spawn without Ray: any call fails."""

    cluster = None

    def __getattr__(self, name):
        raise AssertionError(f"a server without Ray called RayLauncher.{name}")


def new_spawner(cloud) -> CloudhopSpawner:
    s = CloudhopSpawner(user=SimpleNamespace(name="ada", url="/user/ada/", escaped_name="ada", groups=[]),
                        providers=[NAME], node_poll_interval=0.01)
    s.provider = lambda name: cloud
    s.get_env = lambda: {"JUPYTERHUB_API_URL": "http://hub.example.org/hub/api"}
    return s


async def test_a_spawn_without_ray_never_enters_the_launcher():
    cloud = InstantCloud()
    s = new_spawner(cloud)
    s.ray_launcher = NoRay()
    s.user_options = {"provider": "auto", "gpu": "none"}
    await s.start()
    assert await s.poll() is None
    state = s.get_state()
    assert "ray" not in state and len(state["nodes"]) == 1
    t = new_spawner(cloud)
    t.ray_launcher = NoRay()
    t.load_state(state)
    await t.stop()
    assert cloud.live() == set()


class FirstOfferFull(InstantCloud):
    async def launch(self, spec):
        if spec.offer == SMALL:
            raise CapacityError("no capacity", offer=spec.offer)
        return await super().launch(spec)


async def test_a_spawn_with_ray_hands_the_launched_offers_head_to_the_workers():
    cloud = FirstOfferFull()
    s = new_spawner(cloud)
    before = set(vars(s))
    s.user_options = {"provider": "auto", "gpu": "none", "ray": {"workers": 1, "gpu": "none"}}
    await s.start()
    notebook = cloud.nodes[s.node.id]
    assert s.offer == CPU and [a["state"] for a in s.attempts] == ["failed", "launched"]
    # the cluster is named after the notebook that launched, not the offer tried first
    assert s.ray_cluster.tags[CLUSTER_TAG] == notebook.tags[CLUSTER_TAG] == notebook.tags["cloudhop-request"]
    assert [n["role"] for n in s.nodes] == ["notebook", WORKER_ROLE]
    assert set(vars(s)) - before == set(), "no spawner attribute appears during a spawn"
    await s.stop()
    assert cloud.live() == set() and s.ray_cluster is None
