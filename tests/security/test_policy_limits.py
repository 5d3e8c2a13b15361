"""Attacks on the group policy's limits: each drives the real ``CloudhopSpawner`` (on the
in-memory ``InstantCloud`` double, or the Kubernetes provider on its API double) the way
a user would, and checks the refusal (403 naming the field and the rule) and that no
node was launched for it. What the policy promises is in docs/security.md ("Policy")."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from jupyterhub.spawner import SpawnException
from traitlets import Unicode
from traitlets.config import Config

from cloudhop.spawner import CloudhopSpawner
from cloudhop.spawner.offers import Offer
from cloudhop.spawner.policy import PolicyError
from hubfixture import HubProcess
from instant_cloud import NAME, InstantCloud

T4 = Offer(NAME, "r1", "t4-1", "T4", 1, vcpus=4, memory_gib=16, price_hour=0.6)
T4_PAIR = Offer(NAME, "r1", "t4-2", "T4", 2, vcpus=8, memory_gib=32, price_hour=1.2)
ONE_T4 = {"provider": NAME, "gpu": "T4", "gpu_count": 1}
CPU_ONLY = {"provider": NAME, "gpu": "none"}


class GpuCloud(InstantCloud):
    """InstantCloud with T4 offers; a launch takes a moment, as a cloud's does, so two
    spawns started at once are both in flight between their checks and their nodes."""

    def offers(self):
        return [*super().offers(), T4, T4_PAIR]

    async def launch(self, spec):
        await asyncio.sleep(0.05)
        return await super().launch(spec)


def new_user(name: str = "mallory", groups=()) -> SimpleNamespace:
    """Stands in for JupyterHub's user: its groups and its ``spawners`` by server name."""
    return SimpleNamespace(name=name, url=f"/user/{name}/", escaped_name=name,
                           groups=[SimpleNamespace(name=g) for g in groups], spawners={})


class NamedSpawner(CloudhopSpawner):
    """A spawner that knows its server's name without the hub's database row (JupyterHub
    reads ``name`` from it): a move's records name its source and target."""

    server_name = Unicode("")

    @property
    def name(self):
        return self.server_name


def new_spawner(user, cloud, policy: dict | None, server: str = "", options: dict | None = None,
                moves=None) -> CloudhopSpawner:
    c = Config()
    if policy is not None:
        c.Policy.groups = policy
    if moves is not None:  # the hub's move records (c.CloudhopMoves.record_file)
        c.CloudhopMoves.record_file = str(moves)
    cls = CloudhopSpawner if moves is None else NamedSpawner
    s = cls(user=user, providers=[NAME], node_poll_interval=0.01, config=c)
    if moves is not None:
        s.server_name = server
    s.provider = lambda name: cloud
    s.get_env = lambda: {"JUPYTERHUB_API_URL": "http://hub.example.org/hub/api"}
    s.user_options = dict(options or ONE_T4)
    user.spawners[server] = s
    return s


async def refused(spawner) -> SpawnException:
    with pytest.raises(SpawnException) as err:
        await spawner.start()
    assert err.value.status_code == 403, err.value
    return err.value


# -- images -------------------------------------------------------------------------


async def test_an_image_outside_the_groups_allow_list_is_refused():
    cloud = GpuCloud()
    policy = {"default": {"images": ["quay.io/jupyter/*", "nvcr.io/nvidia/pytorch:*"]}}
    s = new_spawner(new_user(), cloud, policy, options={**CPU_ONLY, "image": "docker.io/evil/miner:1"})
    err = await refused(s)
    assert str(err.message).startswith("image: 'docker.io/evil/miner:1' is not allowed for group 'default'")
    assert "allowed images: quay.io/jupyter/*, nvcr.io/nvidia/pytorch:*" in err.message
    assert cloud.specs == [], "nothing is launched for a refused image"
    # a look-alike of an allowed pattern is no match either
    s.user_options = {**CPU_ONLY, "image": "quay.io/jupyterx/scipy:1"}
    await refused(s)

    s.user_options = {**CPU_ONLY, "image": "nvcr.io/nvidia/pytorch:24.05-py3"}
    await s.start()
    assert cloud.specs[-1].image == "nvcr.io/nvidia/pytorch:24.05-py3"
    await s.stop()


@pytest.mark.parametrize("policy", [None, {"default": {"max_gpus": 8}}, {"default": {"images": []}}])
async def test_without_an_allow_list_the_image_option_is_refused(policy):
    cloud = GpuCloud()
    s = new_spawner(new_user(), cloud, policy, options={**CPU_ONLY, "image": "docker.io/evil/miner:1"})
    err = await refused(s)
    assert err.message.startswith("image: ") and "Policy rule 'images'" in err.message
    assert cloud.specs == []
    s.user_options = CPU_ONLY  # the provider's default image is always allowed
    await s.start()
    assert cloud.specs[-1].image is None
    await s.stop()


async def test_free_images_are_an_explicit_choice_of_the_operator():
    cloud = GpuCloud()
    s = new_spawner(new_user(), cloud, {"default": {"images": "*"}},
                    options={**CPU_ONLY, "image": "docker.io/someone/anything:1"})
    await s.start()
    assert cloud.specs[-1].image == "docker.io/someone/anything:1"
    await s.stop()


@pytest.mark.parametrize("override,runs", [(False, "example/torch:2"), (True, "example/mine:3")])
async def test_a_kubernetes_profiles_image_wins_unless_the_group_may_override_it(
        kube_api, make_kube_provider, tmp_path, override, runs):
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("- display_name: Torch\n  kubespawner_override: {image: example/torch:2}\n")
    provider = make_kube_provider(profile_list=str(profiles))
    assert await provider.check_available() is None
    user = new_user("ana")
    s = new_spawner(user, provider, {"default": {"images": ["example/*"], "image_override": override}},
                    options={"provider": "kubernetes", "instance_type": "torch", "image": "example/mine:3"})
    s.providers = ["kubernetes"]
    request = await s.parse_request()  # the image is on the allow-list
    offer = next(o for o in provider.offers() if o.instance_type == "torch")
    await provider.launch(s.launch_spec(offer, request, "req-1"))
    (pod,) = kube_api.pods("jhub").values()
    assert pod["spec"]["containers"][0]["image"] == runs


# -- totals across a user's servers ---------------------------------------------------


async def test_a_one_gpu_user_cannot_run_a_second_one_gpu_named_server():
    cloud, user = GpuCloud(), new_user()
    policy = {"default": {"max_gpus": 1}}
    first = new_spawner(user, cloud, policy)
    await first.start()
    second = new_spawner(user, cloud, policy, server="second")
    err = await refused(second)
    assert err.message == ("gpu_count: 1 GPU(s) for this server and 1 on your other servers is more than "
                           "group 'default' allows: at most 1 in all (max_gpus)")
    assert len(cloud.live()) == 1
    # nor by putting the GPU on a Ray worker of a CPU notebook
    second.user_options = {**CPU_ONLY, "ray": {"workers": 1, "gpu": "T4", "gpu_count": 1}}
    err = await refused(second)
    assert err.message.startswith("ray.gpu_count: ") and "(max_gpus)" in err.message
    assert len(cloud.live()) == 1
    # a CPU-only server adds no GPU
    second.user_options = CPU_ONLY
    await second.start()
    await second.stop()
    # once the first server stops, its GPU is free for another
    await first.stop()
    second.user_options = ONE_T4
    await second.start()
    assert len(cloud.live()) == 1
    await second.stop()


async def test_a_ray_resize_counts_the_users_other_servers():
    cloud, user = GpuCloud(), new_user()
    policy = {"default": {"max_gpus": 1}}
    await new_spawner(user, cloud, policy).start()
    ray = new_spawner(user, cloud, policy, server="ray",
                      options={**CPU_ONLY, "ray": {"workers": 0, "gpu": "T4", "gpu_count": 1}})
    await ray.start()
    with pytest.raises(PolicyError) as err:
        await ray.resize_ray(1)
    assert (err.value.field, err.value.rule, err.value.status) == ("workers", "max_gpus", 403)
    assert "1 on your other servers" in err.value.message
    assert len(cloud.live()) == 2, "a refused resize launches nothing"


async def test_the_price_and_budget_rules_count_every_running_server():
    cloud, user = GpuCloud(), new_user()
    await new_spawner(user, cloud, {"default": {"max_price_hour": 1.0}}).start()
    err = await refused(new_spawner(user, cloud, {"default": {"max_price_hour": 1.0}}, server="b"))
    assert err.message == ("instance_type: $0.60/h for this server and $0.60/h for your other servers is more "
                           "than group 'default' allows: at most $1.00/h in all (max_price_hour)")
    budget = {"default": {"budget": {"usd": 1.0, "period": "day"}}}
    err = await refused(new_spawner(user, cloud, budget, server="c"))
    assert err.message.startswith("budget: one hour at $0.60/h for this server and $0.60/h for your other servers")
    assert len(cloud.live()) == 1


async def test_max_servers_refuses_a_second_named_server():
    cloud, user = GpuCloud(), new_user()
    policy = {"default": {"max_servers": 1}}
    first = new_spawner(user, cloud, policy, options=CPU_ONLY)
    await first.start()
    second = new_spawner(user, cloud, policy, server="second", options=CPU_ONLY)
    err = await refused(second)
    assert err.message.startswith("servers: you run 1 server(s) already; group 'default' allows at most 1 "
                                  "at once (max_servers)")
    assert len(cloud.live()) == 1
    await first.stop()
    await second.start()
    await second.stop()


async def test_a_moves_check_counts_the_server_it_leaves():
    """The hub's option check for a move counts every running server, the source's too:
    the target runs beside the source until the move is done."""
    cloud, user = GpuCloud(), new_user()
    source = new_spawner(user, cloud, {"default": {"max_gpus": 1}})
    await source.start()
    request = await source.parse_request()
    with pytest.raises(PolicyError) as err:
        source.check_new_server(request, await source.all_offers())
    assert (err.value.field, err.value.rule) == ("gpu_count", "max_gpus")


async def test_at_max_servers_1_a_moves_target_starts_beside_its_source_and_nothing_else_does(tmp_path):
    """A move starts its target beside its source: at ``max_servers: 1`` the target of
    the source's live move is not counted against the source, any other server is."""
    from cloudhop.hub.move_book import book_at

    cloud, user, policy = GpuCloud(), new_user(), {"default": {"max_servers": 1}}
    records = tmp_path / "moves.json"
    source = new_spawner(user, cloud, policy, options=CPU_ONLY, moves=records)
    await source.start()
    request = await source.parse_request()
    source.check_new_server(request, await source.all_offers())  # the move's option check passes
    move = book_at(records).open(user.name, "", "moved", expires_at=time.time() + 600)
    book_at(records).advance(move, "launching")
    # a server that is no move's target is refused, as before
    await refused(new_spawner(user, cloud, policy, server="other", options=CPU_ONLY, moves=records))
    target = new_spawner(user, cloud, policy, server="moved", options=CPU_ONLY, moves=records)
    await target.start()
    assert len(cloud.live()) == 2
    # with the source and its target running, nothing else starts
    err = await refused(new_spawner(user, cloud, policy, server="third", options=CPU_ONLY, moves=records))
    assert "you run 2 server(s) already" in err.message
    await target.stop()
    await source.stop()


@pytest.mark.parametrize("how", ["expired", "replaced", "verified"])
async def test_a_target_started_outside_its_moves_life_counts_against_max_servers(tmp_path, how):
    """Attack: a user at ``max_servers: 1`` opens a move and tries to start its target
    after the move expired, after a second move of the source replaced it (one move at a
    time: the first is failed), or (re)started after it passed ``launching``; each is a
    second server and refused."""
    from cloudhop.hub.move_book import book_at

    cloud, user, policy = GpuCloud(), new_user(), {"default": {"max_servers": 1}}
    records = tmp_path / "moves.json"
    source = new_spawner(user, cloud, policy, options=CPU_ONLY, moves=records)
    await source.start()
    book = book_at(records)
    move = book.open(user.name, "", "moved", expires_at=time.time() + (-1 if how == "expired" else 600))
    if how == "replaced":
        book.advance(move, "failed", "a new move of this server (to 'moved-2') replaced it")
        book.open(user.name, "", "moved-2", expires_at=time.time() + 600)
    if how == "verified":
        book.advance(move, "awaiting-accept")
    err = await refused(new_spawner(user, cloud, policy, server="moved", options=CPU_ONLY, moves=records))
    assert "(max_servers)" in err.message
    assert len(cloud.live()) == 1
    await source.stop()


@pytest.mark.parametrize("policy,options", [
    ({"students": {"max_gpus": 1}}, ONE_T4),
    ({"students": {"max_servers": 1}}, CPU_ONLY),
    ({"students": {"budget": {"usd": 1.0, "period": "day"}}}, ONE_T4),  # one hour of two is $1.20
    ({"students": {"max_price_hour": 1.0}}, ONE_T4),
])
async def test_two_spawns_started_at_once_cannot_both_pass(policy, options):
    cloud, user = GpuCloud(), new_user(groups=["students"])
    a = new_spawner(user, cloud, policy, options=options)
    b = new_spawner(user, cloud, policy, server="b", options=options)
    results = await asyncio.gather(a.start(), b.start(), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1, results
    assert isinstance(failed[0], SpawnException) and failed[0].status_code == 403, failed[0]
    assert len(cloud.live()) == 1


# -- through a real hub --------------------------------------------------------------

HUB_POLICY = """
c.Policy.groups = {"default": {"max_servers": 1, "images": ["quay.io/jupyter/*"]}}
# one user: this test is about the policy, not about user accounts
c.LocalProvider.isolation = "none"
"""


@pytest.mark.e2e
def test_the_hubs_rest_api_answers_403_naming_the_rule(tmp_path):
    hub = HubProcess(tmp_path, extra_config=HUB_POLICY).start()
    try:
        hub.ensure_user("eve")
        r = hub.api("POST", "/users/eve/server", json={"provider": "local", "image": "docker.io/evil/miner:1"})
        assert r.status_code == 403, r.text
        assert r.json()["message"] == ("image: 'docker.io/evil/miner:1' is not allowed for group 'default'; "
                                       "allowed images: quay.io/jupyter/*")
        hub.spawn("eve", {"provider": "local", "gpu": "none"})
        r = hub.api("POST", "/users/eve/servers/second", json={"provider": "local", "gpu": "none"})
        assert r.status_code == 403, r.text
        assert "(max_servers)" in r.json()["message"]
        assert hub.server_model("eve", "second") is None
        # a move's target replaces its source: the move's option check passes at max_servers 1
        r = hub.api("POST", "/cloudhop/offers/eve/check", json={"provider": "local", "gpu": "none"})
        assert r.status_code == 200, r.text
        hub.stop_server("eve")
    finally:
        hub.stop()
