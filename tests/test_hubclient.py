"""The one hub API client (cloudhop.extensions.hubclient) against a stand-in hub API:
pagination as the reaper reads it, HubError's fields, the Ray and offers paths, and the
move's option check turning a hub refusal into an OptionError."""

from __future__ import annotations

import json
import socket

import pytest
from tornado import httpserver, web

from cloudhop.extensions import migrate
from cloudhop.extensions.hubclient import PAGINATION, HubClient, HubError
from cloudhop.hub import reaper

USERS = [{"name": f"u{i}", "servers": {}} for i in range(5)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hub(web.RequestHandler):
    """Answers as JupyterHub does; records each request."""

    def initialize(self, seen, paginate):
        self.seen = seen
        self.paginate = paginate

    def check_xsrf_cookie(self):
        return

    def prepare(self):
        self.seen.append((self.request.method, self.request.uri, dict(self.request.headers)))
        if self.request.headers.get("Authorization") != "token tok":
            raise web.HTTPError(403, "Missing or invalid credentials.")

    def write_error(self, status_code, **kw):
        exc = kw.get("exc_info", (None, None, None))[1]
        reply = {"status": status_code, "message": getattr(exc, "log_message", None) or self._reason}
        if getattr(exc, "field", None):
            reply["field"] = exc.field
        self.finish(json.dumps(reply))

    def get(self, path):
        if path == "users":
            offset, limit = int(self.get_argument("offset")), int(self.get_argument("limit"))
            page = USERS[offset:offset + limit]
            if not (self.paginate and self.request.headers.get("Accept") == PAGINATION):
                return self.finish(json.dumps(USERS))
            nxt = {"offset": offset + limit} if offset + limit < len(USERS) else None
            return self.finish(json.dumps({"items": page, "_pagination": {"next": nxt}}))
        if path == "cloudhop/ray/alice/gpu1":
            return self.finish(json.dumps({"alive": 2}))
        if path == "garbled":
            self.set_status(502)
            return self.finish("<html>bad gateway</html>")
        raise web.HTTPError(404, f"No such path {path!r}")

    def post(self, path):
        if path == "cloudhop/offers/alice/check":
            err = web.HTTPError(400, "gpu: no offer has a 'Z100'")
            err.field = "gpu"
            raise err
        if path == "cloudhop/ray/alice/gpu1":
            return self.finish(json.dumps({"asked": json.loads(self.request.body)}))
        raise web.HTTPError(404)


@pytest.fixture
async def hub():
    seen: list = []
    port = free_port()
    server = httpserver.HTTPServer(web.Application([(r"/hub/api/(.*)", Hub, {"seen": seen, "paginate": True})]))
    server.listen(port, "127.0.0.1")
    yield f"http://127.0.0.1:{port}/hub/api", seen
    server.stop()


async def test_users_reads_every_page_with_the_pagination_media_type(hub):
    url, seen = hub
    users = await HubClient(url, "tok").users(page=2)
    assert users == USERS
    assert [uri for _, uri, _ in seen] == [f"/hub/api/users?offset={o}&limit=2&include_stopped_servers=1" for o in (0, 2, 4)]
    assert all(h.get("Accept") == PAGINATION for _, _, h in seen)


async def test_users_reads_a_plain_list_from_a_hub_without_pagination():
    port = free_port()
    server = httpserver.HTTPServer(web.Application([(r"/hub/api/(.*)", Hub, {"seen": [], "paginate": False})]))
    server.listen(port, "127.0.0.1")
    try:
        assert await HubClient(f"http://127.0.0.1:{port}/hub/api", "tok").users(page=2) == USERS
    finally:
        server.stop()


async def test_a_refusal_is_a_hub_error_with_status_message_and_field(hub):
    url, _ = hub
    with pytest.raises(HubError) as err:
        await HubClient(url, "tok", "alice").check_options({"gpu": "Z100"})
    assert (err.value.status, err.value.message, err.value.field) == (400, "gpu: no offer has a 'Z100'", "gpu")
    assert str(err.value) == "hub: 400 gpu: no offer has a 'Z100'"
    with pytest.raises(HubError) as err:
        await HubClient(url, "wrong", "alice").server("")
    assert (err.value.status, err.value.message, err.value.field) == (403, "Missing or invalid credentials.", None)
    # a reply that is not the hub's JSON keeps the HTTP reason
    with pytest.raises(HubError) as err:
        await HubClient(url, "tok").request("GET", "/garbled")
    assert (err.value.status, err.value.message) == (502, "Bad Gateway")


async def test_an_unreachable_hub_is_a_hub_error_without_status():
    with pytest.raises(HubError) as err:
        await HubClient(f"http://127.0.0.1:{free_port()}/hub/api", "tok", "alice").offers()
    assert err.value.status is None and str(err.value).startswith("hub unreachable: ")


async def test_the_ray_calls_go_to_this_servers_cluster(hub):
    url, seen = hub
    client = HubClient(url, "tok", "alice", "gpu1")
    assert await client.ray_cluster() == {"alive": 2}
    assert await client.resize_ray({"workers": 3}) == {"asked": {"workers": 3}}
    assert [(m, u) for m, u, _ in seen] == [("GET", "/hub/api/cloudhop/ray/alice/gpu1"),
                                            ("POST", "/hub/api/cloudhop/ray/alice/gpu1")]


async def test_the_moves_option_check_uses_the_hub_errors_fields(hub):
    url, _ = hub
    migrator = migrate.Migrator(None, HubClient(url, "tok", "alice"), settings=None)
    with pytest.raises(migrate.OptionError) as err:
        await migrator.check({"gpu": "Z100"})
    assert err.value.status == 400
    assert str(err.value) == "gpu: no offer has a 'Z100'"  # the hub's message, not "hub: 400 ..."


def test_the_reaper_uses_the_same_client():
    built, _ = reaper.build({"hub_id": "h", "providers": [], "grace": 900.0, "interval": 300.0},
                            "http://127.0.0.1:1/hub/api", "t")
    assert type(built.hub) is HubClient
    assert not hasattr(reaper, "HubClient") or reaper.HubClient is HubClient
