"""What a spawn costs the hub: the providers are asked for their status and offers once
per spawn, and a spawn that launches on its first offer writes its state twice (the
launched node, then serving), not once more per attempt. ``benchmarks/hub_scale.py``
measures the same at many users against stock JupyterHub; these hold the counts."""

from __future__ import annotations

from types import SimpleNamespace

from instant_cloud import NAME, InstantCloud

from cloudhop.spawner import CloudhopSpawner
from cloudhop.spawner.providers.base import CapacityError


class CountingCloud(InstantCloud):
    """InstantCloud that counts what the spawner asks of it; ``full`` offers are out of capacity."""

    def __init__(self, full=(), **kw):
        super().__init__(**kw)
        self.calls = {"check_available": 0, "offers": 0, "status": 0}
        self.full = set(full)

    async def check_available(self):
        self.calls["check_available"] += 1
        return None

    def offers(self):
        self.calls["offers"] += 1
        return super().offers()

    async def launch(self, spec):
        if spec.offer.key in self.full:
            raise CapacityError("no capacity", offer=spec.offer)
        return await super().launch(spec)

    async def status(self, node_id):
        self.calls["status"] += 1
        return await super().status(node_id)


def counting_spawner(cloud) -> tuple[CloudhopSpawner, list]:
    s = CloudhopSpawner(user=SimpleNamespace(name="ada", url="/user/ada/", escaped_name="ada", groups=[]),
                        providers=[NAME], node_poll_interval=0.01)
    s.provider = lambda name: cloud
    s.get_env = lambda: {"JUPYTERHUB_API_URL": "http://hub.example.org/hub/api"}
    s.user_options = {"provider": NAME, "gpu": "none"}
    saves = []
    save = s._save_state
    s._save_state = lambda: (saves.append(dict(s.get_state())), save())[1]
    return s, saves


async def test_a_spawn_asks_the_providers_once():
    cloud = CountingCloud()
    s, _saves = counting_spawner(cloud)
    await s.start()
    assert cloud.calls == {"check_available": 1, "offers": 1, "status": 0}, \
        "one status and offers read per spawn; a node launched running is not asked again"
    await s.stop()


async def test_a_spawn_on_its_first_offer_writes_its_state_twice():
    cloud = CountingCloud()
    s, saves = counting_spawner(cloud)
    await s.start()
    assert len(saves) == 2, [sorted(x) for x in saves]
    first, last = saves
    assert first["nodes"] and first["attempts"][0]["state"] == "launched", "the first write has the node"
    assert last.get("serving") is True
    await s.stop()


async def test_each_failed_attempt_is_still_written_at_once():
    """A failover walk shows in the hub's database while it goes on."""
    cloud = CountingCloud()
    s, saves = counting_spawner(cloud)
    cheapest = s.plan(await s.parse_request(), cloud.offers())[0]
    cloud.full = {cheapest.key}
    await s.start()
    assert len(saves) == 3, "the failed attempt, the launched node, serving"
    assert not saves[0].get("nodes") and saves[1]["nodes"] and saves[1]["attempts"][0]["state"] == "failed"
    await s.stop()
