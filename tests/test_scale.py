"""What a spawn costs the hub: the providers are asked for their status and offers once
per spawn, and a spawn that launches on its first offer commits its state once (the
launched node; serving goes with JupyterHub's own commit as start returns), and once
more per failed attempt only. ``benchmarks/hub_scale.py``
measures the same at many users against stock JupyterHub; these hold the counts."""

from __future__ import annotations

import asyncio
import datetime
import json
from types import SimpleNamespace

import pytest
from instant_cloud import NAME, InstantCloud
from tornado import httpserver, web
from tornado.testing import bind_unused_port

from cloudhop.extensions import hubclient
from cloudhop.extensions.hubclient import HubClient
from cloudhop.hub.culling import UTC, CullSettings
from cloudhop.hub.culling_service import PolicyArbiter
from cloudhop.hub.reaper import Reaper, build
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
    s._save_state = lambda: (saves.append(s.get_state()), save())[1]
    return s, saves


async def test_a_spawn_asks_the_providers_once():
    cloud = CountingCloud()
    s, _saves = counting_spawner(cloud)
    await s.start()
    assert cloud.calls == {"check_available": 1, "offers": 1, "status": 0}, \
        "one status and offers read per spawn; a node launched running is not asked again"
    await s.stop()


async def test_a_spawn_on_its_first_offer_commits_the_node_then_serving():
    cloud = CountingCloud()
    s, saves = counting_spawner(cloud)
    await s.start()
    assert len(saves) == 2, [sorted(x) for x in saves]
    assert saves[0]["nodes"] and saves[0]["attempts"][0]["state"] == "launched", \
        "the launched node is in the database before the spawn waits for it"
    assert saves[1].get("serving") is True, "serving is committed before the wait for the server's port"
    await s.stop()


async def test_a_spawn_leaves_no_row_of_the_shared_session_dirty():
    """JupyterHub resumes from start() a loop iteration after it returns, and its one
    database session is shared: a row start() left dirty is rolled back by whichever
    request finishes first (BaseHandler.finish), expiring every loaded row."""
    from jupyterhub import orm

    db = orm.new_session_factory("sqlite://")()
    user = orm.User(name="ada")
    db.add(user)
    db.commit()
    row = orm.Spawner(user=user, name="")
    db.add(row)
    db.commit()
    cloud = CountingCloud()
    s, saves = counting_spawner(cloud)
    s.orm_spawner = row
    await s.start()
    assert saves and not db.dirty and not db.new, f"start() returned with {db.dirty or db.new} uncommitted"
    assert json.loads(json.dumps(row.state))["nodes"], "the launched node was committed on the row"
    await s.stop()
    db.close()


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


# -- the reaper's and the culler's listings of every user --------------------------------

class UsersPage(web.RequestHandler):
    """``GET /hub/api/users`` as JupyterHub pages it, over ``count`` users each with a
    running server; records each request's offset and limit."""

    def initialize(self, seen, count, queries=None, slow=None):
        self.seen, self.count = seen, count
        #: every request's query arguments; ``slow``: seconds the page at an offset takes
        self.queries, self.slow = queries if queries is not None else [], slow or {}

    async def get(self):
        offset, limit = int(self.get_argument("offset")), int(self.get_argument("limit"))
        self.seen.append((offset, limit))
        self.queries.append({k: self.get_argument(k) for k in self.request.arguments})
        if offset in self.slow:  # a busy hub: this page takes a while
            await asyncio.sleep(self.slow[offset])
        end = min(offset + limit, self.count)
        items = [{"name": f"u{i}", "groups": [], "servers": {"": {"url": f"/user/u{i}/", "state": {}}}}
                 for i in range(offset, end)]
        nxt = {"offset": end} if end < self.count else None
        self.finish(json.dumps({"items": items, "_pagination": {"next": nxt}}))


@pytest.fixture
async def thousand_users():
    seen: list = []
    sock, port = bind_unused_port()
    server = httpserver.HTTPServer(web.Application([(r"/hub/api/users", UsersPage, {"seen": seen, "count": 1000})]))
    server.add_sockets([sock])
    yield f"http://127.0.0.1:{port}/hub/api", seen
    server.stop()


#: the pages (by offset) a slow hub takes SLOW seconds to give; a page the hub gives at once
#: takes milliseconds, far under the threshold the test sets (SLOW / 2)
SLOW_OFFSETS, SLOW = (200, 600), 0.4


@pytest.fixture
async def slow_hub():
    """A thousand users, two of whose five pages the hub is slow to give."""
    seen: list = []
    queries: list = []
    sock, port = bind_unused_port()
    server = httpserver.HTTPServer(web.Application([(r"/hub/api/users", UsersPage, {
        "seen": seen, "count": 1000, "queries": queries, "slow": dict.fromkeys(SLOW_OFFSETS, SLOW)})]))
    server.add_sockets([sock])
    yield f"http://127.0.0.1:{port}/hub/api", seen, queries
    server.stop()


def client(url: str, back_off: bool) -> tuple[HubClient, list]:
    hub = HubClient(url, "tok")
    hub.back_off = back_off
    waits: list = []

    async def sleep(seconds):
        waits.append(seconds)

    hub.sleep = sleep
    return hub, waits


async def test_a_sweep_pages_through_a_thousand_users_and_backs_off_a_slow_hub(thousand_users, monkeypatch):
    url, seen = thousand_users
    monkeypatch.setattr(hubclient, "SLOW_PAGE", 0.0)  # every page is "slow"
    hub, waits = client(url, back_off=True)
    sweep = await Reaper({}, hub, "h1").sweep()
    assert sweep["hub_error"] is None
    assert seen == [(o, 200) for o in range(0, 1000, 200)], "five pages of 200, never every user at once"
    assert len(waits) == 4, "a wait between each two pages"
    assert sweep["hub"]["pages"] == 5 and sweep["hub"]["paused"] == pytest.approx(sum(waits))


async def test_a_fast_hub_or_an_interactive_reader_is_not_made_to_wait(thousand_users, monkeypatch):
    url, _seen = thousand_users
    monkeypatch.setattr(hubclient, "SLOW_PAGE", 1e9)
    hub, waits = client(url, back_off=True)
    assert len(await hub.users()) == 1000 and waits == []
    monkeypatch.setattr(hubclient, "SLOW_PAGE", 0.0)
    hub, waits = client(url, back_off=False)  # the instructor's page: no wait
    assert len(await hub.users()) == 1000 and waits == []


async def test_a_sweep_waits_after_each_page_a_slow_hub_took_long_to_give(slow_hub, monkeypatch):
    """A hub that really is slow (the stub takes SLOW seconds over two pages): the reaper
    waits after those two pages, at least as long as each took, and not after the
    others; its report says so."""
    url, seen, _queries = slow_hub
    monkeypatch.setattr(hubclient, "SLOW_PAGE", SLOW / 2)
    hub, waits = client(url, back_off=True)
    sweep = await Reaper({}, hub, "h1").sweep()
    assert sweep["hub_error"] is None and len(seen) == 5
    assert len(waits) == len(SLOW_OFFSETS) and all(SLOW <= w <= hubclient.MAX_PAUSE for w in waits), waits
    assert sweep["hub"]["paused"] == pytest.approx(sum(waits)) and sweep["hub"]["seconds"] >= 2 * SLOW


async def test_the_culler_policy_reads_only_users_with_an_active_server_and_backs_off(slow_hub, monkeypatch):
    """The culler's arbiter places the servers the culler hands it (ready ones) from a
    listing of the users with an active server only, paged and backing off like the reaper's."""
    url, seen, queries = slow_hub
    monkeypatch.setattr(hubclient, "SLOW_PAGE", SLOW / 2)
    hub, waits = client(url, back_off=True)
    arbiter = PolicyArbiter(CullSettings(), hub)
    assert await arbiter.owner({"url": "/user/u999/", "started": None}) == ("u999", [])
    assert len(seen) == 5 and all(q.get("state") == "active" and "include_stopped_servers" not in q for q in queries)
    assert len(waits) == len(SLOW_OFFSETS) and all(w >= SLOW for w in waits), waits
    assert hub.listing["pages"] == 5 and hub.listing["paused"] == pytest.approx(sum(waits))


def test_the_reaper_service_backs_off():
    reaper, _interval = build({"hub_id": "h1", "grace": 900, "interval": 60, "providers": []},
                              "http://127.0.0.1:1/hub/api", "tok")
    assert reaper.hub.back_off is True


class CountingHub:
    def __init__(self, users):
        self._users, self.reads = users, 0

    async def users(self, active_only=False):
        self.reads += 1
        assert active_only, "the culler's policy reads only the users with an active server"
        return self._users


async def test_the_culler_lists_every_user_once_for_servers_its_last_read_should_have_had():
    """A culler pass over many servers it cannot place (their user gone since its read)
    reads the hub once, not once per server; a server started after the read is read for."""
    clock = [0.0]
    hub = CountingHub([{"name": "ada", "groups": [], "servers": {"": {"url": "/user/ada/"}}}])
    arbiter = PolicyArbiter(CullSettings(), hub, refresh=60, clock=lambda: clock[0])
    before = (datetime.datetime.now(UTC) - datetime.timedelta(hours=1)).isoformat()
    assert await arbiter.owner({"url": "/user/ada/", "started": before}) == ("ada", [])
    for i in range(50):
        assert await arbiter.owner({"url": f"/user/gone{i}/", "started": before}) is None
    assert hub.reads == 1
    later = (datetime.datetime.now(UTC) + datetime.timedelta(seconds=1)).isoformat()
    await arbiter.owner({"url": "/user/new/", "started": later})
    assert hub.reads == 2, "a server newer than the last read is looked for"
    clock[0] = 61
    await arbiter.owner({"url": "/user/ada/", "started": before})
    assert hub.reads == 3, "a map older than refresh is read again"
