"""Tokens a user's code can reach can do only what they are for (docs/security.md, Tokens).

Attacks, each refused:
* code in a kernel reads its environment, and its server's (``/proc/<ppid>/environ``),
  and tries every token it finds on the user's other servers, on the user's tokens and on
  the snapshots in the store;
* the server's own token starts or stops another of the user's servers;
* a move's token reaches another server or another snapshot, or is used after it expired
  or after the next move's token replaced it;
* user A's token reads user B's snapshot.

The scope lists are checked without a hub, through JupyterHub's own scope expansion; the
store's rules against the real store service and a stand-in for the hub's whoami; and
all of it once end to end, on a real hub with a kernel in a real server.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import requests
from jupyterhub import scopes as jh_scopes
from jupyterhub.services.auth import check_scopes
from tornado import web

from cloudhop.extensions import hubclient
from cloudhop.extensions.snapshot import StoreClient, StoreError, take_snapshot
from cloudhop.hub import tokens_api
from cloudhop.hub.snapshot_store import SERVICE_NAME, SNAPSHOTS_SCOPE, Grant, _then_revoke
from cloudhop.hub.store_backends import LocalBackend

from store_double import ACCESS, StoreHarness


def expand(raw: list[str], user: str = "alice", server: str = "src") -> set[str]:
    """``raw`` as JupyterHub expands a token's scopes: ``!user`` and ``!server`` resolved
    to ``user``'s server ``server``, every scope with its subscopes."""
    out: set[str] = set()
    for scope in raw:
        if scope.endswith("!user"):
            scope += f"={user}"
        elif scope.endswith("!server"):
            scope += f"={user}/{server}"
        out |= {scope} if scope.startswith("custom:") else set(jh_scopes._expand_scope(scope))
    return out


def allows(have: set[str], scope: str) -> bool:
    return bool(check_scopes({scope}, have))


# -- the scope lists ----------------------------------------------------------------------


def test_a_servers_token_cannot_start_stop_or_read_the_users_other_servers_or_snapshots():
    have = expand(tokens_api.SERVER_TOKEN_SCOPES)
    for other in ("alice/other", "alice/", "bob/src"):
        assert not allows(have, f"start:servers!server={other}"), other
        assert not allows(have, f"delete:servers!server={other}"), other
        assert not allows(have, f"access:servers!server={other}"), other
        assert not allows(have, f"{SNAPSHOTS_SCOPE}!server={other}"), other
    assert not allows(have, f"{SNAPSHOTS_SCOPE}!user=alice"), "all of the user's snapshots"
    assert not allows(have, "tokens!user=alice"), "a token that may make tokens may make any"
    assert not allows(have, "start:servers!server=alice/src"), "not even itself"
    # what it is for: its own API, activity, stopping itself after a move, asking for a move
    for needed in ("access:servers!server=alice/src", "users:activity!user=alice",
                   "delete:servers!server=alice/src", f"{tokens_api.MOVES_SCOPE}!server=alice/src",
                   "read:servers!user=alice", f"{SNAPSHOTS_SCOPE}!server=alice/src"):
        assert allows(have, needed), needed


def test_a_moves_token_reaches_only_its_one_new_server_and_its_snapshots():
    have = expand(tokens_api.move_scopes("alice", "site-b-1a2b3c"))
    assert allows(have, "start:servers!server=alice/site-b-1a2b3c")
    assert allows(have, "delete:servers!server=alice/site-b-1a2b3c")
    assert allows(have, f"{SNAPSHOTS_SCOPE}!server=alice/site-b-1a2b3c")
    assert allows(have, "access:servers!server=alice/site-b-1a2b3c"), "asks its target to restore"
    for other in ("alice/", "alice/other", "bob/site-b-1a2b3c"):
        for scope in ("start:servers", "delete:servers", "read:servers", "access:servers", SNAPSHOTS_SCOPE):
            assert not allows(have, f"{scope}!server={other}"), (scope, other)
    assert not allows(have, f"{SNAPSHOTS_SCOPE}!user=alice")
    assert not allows(have, f"{tokens_api.MOVES_SCOPE}!server=alice/site-b-1a2b3c"), "no move of its own"


def test_the_kernels_token_reaches_its_own_server_only():
    have = expand(tokens_api.kernel_scopes("alice", "src"))
    assert allows(have, "access:servers!server=alice/src")
    assert not allows(have, "access:servers!server=alice/other")
    assert not allows(have, f"access:services!service={SERVICE_NAME}")
    assert not any(allows(have, f"{s}!server=alice/src") for s in ("start:servers", "delete:servers",
                                                                    tokens_api.MOVES_SCOPE))


@pytest.mark.parametrize("target, source, status", [
    ("other", "", 409), ("", "x", 400), ("a/b", "", 400), (None, "", 400), (7, "", 400),
    ("x" * 256, "", 400), ("src", "src", 409),
])
def test_a_move_never_targets_an_existing_server(target, source, status):
    with pytest.raises(web.HTTPError) as err:
        tokens_api.check_target(target, source, {"": None, "other": None})
    assert err.value.status_code == status and err.value.log_message.startswith("target:")


@pytest.mark.parametrize("bad", [0, -5, 10**9, 1.5, "60", True])
def test_a_moves_token_lives_a_bounded_time(bad):
    with pytest.raises(web.HTTPError) as err:
        tokens_api.check_expires_in(bad)
    assert err.value.status_code == 400 and err.value.log_message.startswith("expires_in:")
    assert tokens_api.check_expires_in(None) <= tokens_api.MOVE_TOKEN_MAX_SECONDS


def test_the_server_keeps_its_token_from_what_it_starts():
    env = {"JUPYTERHUB_API_TOKEN": "server-own", "JPY_API_TOKEN": "server-own", "OTHER": "x"}
    try:
        assert hubclient.hold_server_token(env) == "server-own"
        assert env == {"OTHER": "x"}
        assert hubclient.HubClient.from_env().token == "server-own", "the server's own calls still use it"
    finally:
        hubclient._held.clear()


def test_a_stopped_server_loses_its_move_and_kernel_tokens_after_the_configs_own_hook():
    calls = []

    def mine(spawner):
        calls.append("mine")

    async def mine_async(spawner):
        calls.append("mine-async")

    import cloudhop.hub.tokens_api as api

    revoke = api.revoke_server_tokens
    api.revoke_server_tokens = lambda spawner: calls.append("revoke")
    try:
        _then_revoke(mine)(None)
        asyncio.run(_then_revoke(mine_async)(None))
        _then_revoke(None)(None)
        assert _then_revoke(_then_revoke(None)).cloudhop_revokes
    finally:
        api.revoke_server_tokens = revoke
    assert calls == ["mine", "revoke", "mine-async", "revoke", "revoke"]


# -- the store's rules --------------------------------------------------------------------


def test_grant_reads_the_snapshot_scope():
    assert Grant.of([f"{SNAPSHOTS_SCOPE}!user=alice"], "alice") == Grant(True, frozenset())
    assert Grant.of([f"{SNAPSHOTS_SCOPE}!server=alice/t"], "alice") == Grant(False, frozenset({"t"}))
    assert Grant.of([f"{SNAPSHOTS_SCOPE}!server=bob/t", f"{SNAPSHOTS_SCOPE}!user=bob"], "alice") == \
        Grant(False, frozenset())
    assert not Grant.of([ACCESS], "alice").any


@pytest.fixture
def store(tmp_path):
    def server(name):
        return [ACCESS, f"{SNAPSHOTS_SCOPE}!server=alice/{name}"]

    tokens = {"alice": ("alice", [ACCESS]), "bob": ("bob", [ACCESS]),
              "move-t1": ("alice", server("t1")), "move-t2": ("alice", server("t2")),
              "server-src": ("alice", server("")), "kernel": ("alice", ["access:servers!server=alice/"])}
    with StoreHarness(LocalBackend(str(tmp_path / "store")), tokens) as harness:
        clients = {}

        def client(token, user="alice"):
            clients[token, user] = clients.get((token, user)) or StoreClient(harness.url, user, token)
            return clients[token, user]

        yield harness, client
        for c in clients.values():
            c.close()


def workspace(root, text):
    root.mkdir()
    (root / "data.txt").write_text(text)
    return root


def refused(call) -> int:
    with pytest.raises(StoreError) as err:
        call()
    assert err.value.status in (403, 404), err.value
    return err.value.status


def test_a_moves_token_uses_only_the_snapshot_it_stored(store, tmp_path):
    harness, client = store
    own, own_manifest, _ = take_snapshot(workspace(tmp_path / "own", "the user's own"), client("alice"))
    sid, _, _ = take_snapshot(workspace(tmp_path / "moved", "moved"), client("move-t1"))
    t1 = client("move-t1")
    assert json.loads(t1.get_manifest(sid))["files"][0]["path"] == "data.txt"
    assert [s["id"] for s in t1.list_snapshots()] == [sid]
    # the user's own snapshot: neither its manifest nor its chunks
    refused(lambda: t1.get_manifest(own))
    own_chunk = own_manifest.files[0].chunks[0][0]
    refused(lambda: t1.download([own_chunk], lambda *a: None))
    # another move's token, the source server's token: not this snapshot
    for other in (client("move-t2"), client("server-src")):
        refused(lambda other=other: other.get_manifest(sid))
        assert other.list_snapshots() == []
    # a token limited to a server cannot grant a snapshot to another server
    r = requests.post(f"{harness.url}api/users/alice/snapshots/{own}/servers", json={"server": "t1"},
                      headers={"Authorization": "token move-t1"}, timeout=10)
    assert r.status_code == 403
    # the kernels' token has no store access; the user's own token sees everything
    refused(lambda: client("kernel").list_snapshots())
    assert {s["id"] for s in client("alice").list_snapshots()} == {own, sid}


def test_the_user_grants_a_snapshot_to_a_server_that_restores_it(store, tmp_path):
    harness, client = store
    own, _, _ = take_snapshot(workspace(tmp_path / "own", "x"), client("alice"))
    refused(lambda: client("move-t2").get_manifest(own))
    r = requests.post(f"{harness.url}api/users/alice/snapshots/{own}/servers", json={"server": "t2"},
                      headers={"Authorization": "token alice"}, timeout=10)
    assert r.status_code == 200, r.text
    assert client("move-t2").get_manifest(own)
    r = requests.post(f"{harness.url}api/users/alice/snapshots/{own}/servers", json={"server": "a/b"},
                      headers={"Authorization": "token alice"}, timeout=10)
    assert r.status_code == 400 and r.json()["message"].startswith("server:")


def test_user_a_cannot_read_user_bs_snapshot(store, tmp_path):
    _, client = store
    sid, _, _ = take_snapshot(workspace(tmp_path / "b", "bob's"), client("bob", "bob"))
    assert refused(lambda: client("alice", "bob").get_manifest(sid)) == 403
    assert refused(lambda: client("move-t1", "bob").list_snapshots()) == 403
    assert refused(lambda: client("alice").get_manifest(sid)) == 404


# -- end to end ---------------------------------------------------------------------------

KERNEL_LOOKS = """
import json, os
def tokens(env):
    return {k: v for k, v in env.items() if "TOKEN" in k}
with open(f"/proc/{os.getppid()}/environ", "rb") as f:
    server = dict(e.split("=", 1) for e in f.read().decode().split("\\0") if "=" in e)
from cloudhop.extensions import notebook
print(json.dumps({"kernel": tokens(os.environ), "server": tokens(server),
                  "info": notebook._api("GET", "info")["user"]}))
"""


def wait_refused(call, timeout=60) -> int:
    """Poll ``call()`` (a requests call) until it is refused; returns the status."""
    deadline = time.monotonic() + timeout
    while True:
        status = call().status_code
        if status in (401, 403) or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


@pytest.mark.e2e
def test_tokens_in_reach_of_a_kernel_cannot_touch_other_servers_or_snapshots(hub_factory, tmp_path):
    hub = hub_factory()
    options = {"provider": "local", "gpu": "none"}
    hub.spawn("alice", options)
    hub.spawn("alice", options, server="other")
    hub.ensure_user("bob")

    def hub_as(token, method, path, **kw):
        return hub.api(method, path, token=token, **kw)

    def user_token(name):
        r = hub.api("POST", f"/users/{name}/tokens", json={"note": "test"})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    alice, bob = user_token("alice"), user_token("bob")
    store_url = f"{hub.url}/services/{SERVICE_NAME}/"
    own, own_manifest, _ = take_snapshot(workspace(tmp_path / "own", "alice's"), StoreClient(store_url, "alice", alice))

    kernel = hub.kernel("alice")
    seen = json.loads(kernel.execute(KERNEL_LOOKS).strip().splitlines()[-1])
    kernel.close()
    assert seen["info"] == "alice", "the kernels' token still reaches the server's own API"
    assert "JPY_API_TOKEN" not in seen["kernel"]
    kernel_token = seen["kernel"]["JUPYTERHUB_API_TOKEN"]
    server_token = seen["server"]["JUPYTERHUB_API_TOKEN"]
    assert kernel_token != server_token

    # (the hub answers 404 where the token may not even see the user)
    for token in (kernel_token, server_token):
        assert hub_as(token, "POST", "/users/alice/servers/third", json=options).status_code in (403, 404)
        assert hub_as(token, "DELETE", "/users/alice/servers/other").status_code in (403, 404)
        assert hub_as(token, "POST", "/users/alice/tokens", json={}).status_code in (403, 404)
        mine = StoreClient(store_url, "alice", token)
        refused(lambda mine=mine: mine.get_manifest(own))
        assert own not in {s["id"] for s in (mine.list_snapshots() if token == server_token else [])}
    assert hub.server_model("alice", "other")["ready"]
    # the kernels' token may not ask for a move
    assert hub_as(kernel_token, "POST", "/cloudhop/moves/alice", json={"target": "x"}).status_code in (403, 404)
    # bob's token cannot ask for a move of alice's server, nor read her snapshot
    assert hub_as(bob, "POST", "/cloudhop/moves/alice", json={"target": "x"}).status_code in (403, 404)
    refused(lambda: StoreClient(store_url, "alice", bob).get_manifest(own))

    # a move's token: its one new server and the snapshot it stores, nothing else
    r = hub_as(server_token, "POST", "/cloudhop/moves/alice", json={"target": "other"})
    assert r.status_code == 409 and r.json()["message"].startswith("target:")
    r = hub_as(server_token, "POST", "/cloudhop/moves/alice", json={"target": "moved-1", "expires_in": 600})
    assert r.status_code == 201, r.text
    move = r.json()["token"]
    for method, path in (("POST", "/users/alice/servers/other"), ("DELETE", "/users/alice/servers/other"),
                         ("DELETE", "/users/alice/server"), ("POST", "/users/alice/servers/third")):
        assert hub_as(move, method, path, json=options if method == "POST" else None).status_code in (403, 404), path
    move_store = StoreClient(store_url, "alice", move)
    sid, _, _ = take_snapshot(workspace(tmp_path / "moved", "moved"), move_store)
    assert [s["id"] for s in move_store.list_snapshots()] == [sid]
    refused(lambda: move_store.get_manifest(own))
    refused(lambda: move_store.download([own_manifest.files[0].chunks[0][0]], lambda *a: None))
    refused(lambda: StoreClient(store_url, "alice", server_token).get_manifest(sid))
    # it starts its target; while that runs, the source gets no second move
    assert hub_as(move, "POST", "/users/alice/servers/moved-1", json=options).status_code in (201, 202)
    hub.wait_ready("alice", "moved-1")
    r = hub_as(server_token, "POST", "/cloudhop/moves/alice", json={"target": "moved-2"})
    assert r.status_code == 409, r.text
    assert hub_as(move, "DELETE", "/users/alice/servers/moved-1", json={"remove": True}).status_code in (202, 204)
    deadline = time.monotonic() + 60
    while hub.server_model("alice", "moved-1") is not None and time.monotonic() < deadline:
        time.sleep(0.5)

    # the next move's token replaces it; a short-lived one expires, at the hub and the store
    r = hub_as(server_token, "POST", "/cloudhop/moves/alice", json={"target": "moved-2", "expires_in": 3})
    assert r.status_code == 201, r.text
    short = r.json()["token"]
    assert hub_as(move, "GET", "/user").status_code == 403, "the first was revoked"
    short_store = StoreClient(store_url, "alice", short)
    short_store.list_snapshots()
    assert hub_as(short, "GET", "/user").status_code == 200
    assert wait_refused(lambda: hub_as(short, "GET", "/user")) == 403
    assert wait_refused(lambda: requests.get(f"{store_url}api/users/alice/snapshots",
                                             headers={"Authorization": f"token {short}"}, timeout=10)) == 403

    # the source stops: the kernels' token goes with it
    hub.stop_server("alice")
    assert hub_as(kernel_token, "GET", "/user").status_code == 403
