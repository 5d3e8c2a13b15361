"""Attacks on the snapshot lines and class snapshots, against the real store service
(local directory): another user's snapshot id, listing or deleting another user's
snapshots, a server's token deleting, the hub's own routes without the hub's key, a
class snapshot not shared with the student, and reading a class's chunks without a copy.
Each attack is preceded by the same request made rightfully, which succeeds."""

from __future__ import annotations

import random

import pytest
import requests

from cloudhop.extensions.snapshot import StoreClient, take_snapshot
from cloudhop.hub.snapshot_store import SNAPSHOTS_SCOPE
from cloudhop.hub.store_backends import LocalBackend
from store_double import ACCESS, StoreHarness

KEY = "the-hubs-key"
TOKENS = {
    "tok-alice": ("alice", [ACCESS]),
    "tok-alice-s1": ("alice", [ACCESS, f"{SNAPSHOTS_SCOPE}!server=alice/s1"]),
    "tok-bob": ("bob", [ACCESS]),
    "tok-bob-s1": ("bob", [ACCESS, f"{SNAPSHOTS_SCOPE}!server=bob/s1"]),
}


def hub(h, method, path, key=KEY, **kw):
    return requests.request(method, h.url + path, headers={"Authorization": f"cloudhop-hub {key}"}, timeout=60, **kw)


def as_user(h, method, path, token, **kw):
    return requests.request(method, h.url + path, headers={"Authorization": f"token {token}"}, timeout=60, **kw)


@pytest.fixture
def store(tmp_path):
    with StoreHarness(LocalBackend(str(tmp_path / "store")), TOKENS, hub_key=KEY, min_age=0,
                      collect_delay=3600) as h:
        yield h


@pytest.fixture
def alices(store, tmp_path):
    ws = tmp_path / "alice-ws"
    ws.mkdir()
    (ws / "secret.bin").write_bytes(random.Random(5).randbytes(200_000))
    sid, manifest, _ = take_snapshot(ws, StoreClient(store.url, "alice", "tok-alice-s1"), meta={"kind": "hibernate"})
    return sid, manifest


def test_another_users_snapshot_id_is_a_404_and_grants_nothing(store, alices):
    sid, _ = alices
    assert hub(store, "POST", "api/hub/users/alice/restore", json={"server": "s2", "restore": sid}).status_code == 200
    reply = hub(store, "POST", "api/hub/users/bob/restore", json={"server": "s1", "restore": sid})
    assert reply.status_code == 404 and "restore:" in reply.json()["message"]
    # bob's server may not read it either way
    got = as_user(store, "GET", f"api/users/bob/snapshots/{sid}", "tok-bob-s1")
    assert got.status_code in (403, 404)
    assert as_user(store, "GET", "api/users/bob/snapshots", "tok-bob").json()["snapshots"] == []


def test_another_users_listing_and_deletion_are_refused(store, alices):
    sid, _ = alices
    assert [s["id"] for s in as_user(store, "GET", "api/users/alice/snapshots?server=s1", "tok-alice").json()[
        "snapshots"]] == [sid]
    assert as_user(store, "GET", "api/users/alice/snapshots?server=s1", "tok-bob").status_code == 403
    assert as_user(store, "DELETE", f"api/users/alice/snapshots/{sid}", "tok-bob").status_code == 403
    # bob's own namespace has no such id: deleting it there touches nothing of alice's
    assert as_user(store, "DELETE", f"api/users/bob/snapshots/{sid}", "tok-bob").status_code == 404
    assert hub(store, "DELETE", f"api/hub/users/bob/snapshots/{sid}").status_code == 404
    # a server's token (a move's, a kernel's neighbour) may not delete its own line's snapshots
    assert as_user(store, "DELETE", f"api/users/alice/snapshots/{sid}", "tok-alice-s1").status_code == 403
    assert [s["id"] for s in as_user(store, "GET", "api/users/alice/snapshots", "tok-alice").json()[
        "snapshots"]] == [sid]
    assert as_user(store, "DELETE", f"api/users/alice/snapshots/{sid}", "tok-alice").status_code == 204


def test_the_hubs_routes_need_the_hubs_key(store, alices):
    assert hub(store, "GET", "api/hub/users/alice/snapshots").status_code == 200
    for key in ("", "wrong", KEY[:-1]):
        assert hub(store, "GET", "api/hub/users/alice/snapshots", key=key).status_code == 403
        assert hub(store, "POST", "api/hub/users/alice/collect", key=key).status_code == 403
    # a user's own token is not the hub's key
    assert as_user(store, "GET", "api/hub/users/alice/snapshots", "tok-alice").status_code == 403
    assert as_user(store, "GET", "api/hub/classes", "tok-alice").status_code == 403


def test_a_class_not_shared_with_the_student_is_a_404_and_its_chunks_stay_unreadable(store, alices):
    sid, manifest = alices
    published = hub(store, "POST", "api/hub/classes", json={"owner": "alice", "snapshot": sid, "name": "week3",
                                                            "share": "group:students"})
    assert published.status_code == 201
    ok = hub(store, "POST", "api/hub/users/carol/restore",
             json={"server": "", "restore": "class:week3", "groups": ["students"]})
    assert ok.status_code == 200
    refused = hub(store, "POST", "api/hub/users/bob/restore",
                  json={"server": "s1", "restore": "class:week3", "groups": ["others"]})
    assert refused.status_code == 404 and "week3" in refused.json()["message"]
    assert as_user(store, "GET", "api/users/bob/snapshots", "tok-bob").json()["snapshots"] == []
    # without a copy, bob cannot learn whether the class's chunks exist, nor read them
    ids = sorted(manifest.chunk_ids())
    missing = as_user(store, "POST", "api/users/bob/chunks/missing", "tok-bob", json={"ids": ids}).json()["missing"]
    assert sorted(missing) == ids
    assert as_user(store, "POST", "api/users/bob/chunks/pack", "tok-bob", json={"ids": ids}).status_code == 404


def test_a_server_token_may_publish_only_its_own_servers_snapshots(store, alices, tmp_path):
    sid, _ = alices
    ws = tmp_path / "other"
    ws.mkdir()
    (ws / "x").write_text("x")
    other, _, _ = take_snapshot(ws, StoreClient(store.url, "alice", "tok-alice"), meta={"server": "s2"})
    assert hub(store, "POST", "api/hub/classes", json={"owner": "alice", "snapshot": sid, "name": "a",
                                                       "share": "all", "server": "s1"}).status_code == 201
    reply = hub(store, "POST", "api/hub/classes", json={"owner": "alice", "snapshot": other, "name": "b",
                                                        "share": "all", "server": "s1"})
    assert reply.status_code == 404
    # and never another user's snapshot
    reply = hub(store, "POST", "api/hub/classes", json={"owner": "bob", "snapshot": sid, "name": "c", "share": "all"})
    assert reply.status_code == 404

