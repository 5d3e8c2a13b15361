"""Each server's line of snapshots against the real store service (local directory):
listing with the manifest's meta, newest first, per server; retention; deletion; garbage
collection of the chunks no kept snapshot uses, with the quota's figure dropping after it,
and safe against a snapshot being written at the same time."""

from __future__ import annotations

import os
import random
import threading

import pytest
import requests

from cloudhop.extensions.snapshot import Manifest, StoreClient, restore_snapshot, take_snapshot
from cloudhop.extensions.snapshot.snapshot import workspace_dest
from cloudhop.hub.snapshot_store import SNAPSHOTS_SCOPE
from cloudhop.hub.store_backends import LocalBackend

from .store_double import ACCESS, StoreHarness

KEY = "hub-key-for-tests"
TOKENS = {
    "tok-alice": ("alice", [ACCESS]),
    "tok-alice-s1": ("alice", [ACCESS, f"{SNAPSHOTS_SCOPE}!server=alice/s1"]),
    "tok-alice-s2": ("alice", [ACCESS, f"{SNAPSHOTS_SCOPE}!server=alice/s2"]),
    "tok-bob": ("bob", [ACCESS]),
}


def hub(h, method, path, **kw):
    """A call of the hub's own (with its key)."""
    return requests.request(method, h.url + path, headers={"Authorization": f"cloudhop-hub {KEY}"}, timeout=60, **kw)


def client(h, token="tok-alice", user="alice"):
    return StoreClient(h.url, user, token)


def fill(root, seed, n=6, size=150_000):
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"f{i}.bin").write_bytes(rng.randbytes(size))


def chunk_files(store_root, user="alice"):
    top = os.path.join(store_root, "users", f"u-{user}", "chunks")
    return {name for _, _, names in os.walk(top) for name in names}


def restores(h, sid, tmp_path, token="tok-alice", user="alice"):
    c = client(h, token, user)
    out = tmp_path / f"out-{sid}"
    got = restore_snapshot(Manifest.loads(c.get_manifest(sid)), c, workspace_dest(str(out)))
    return out, got


@pytest.fixture
def store(tmp_path):
    root = str(tmp_path / "store")
    # claims keep chunks safe for an hour; a chunk's age alone protects nothing here
    with StoreHarness(LocalBackend(root), TOKENS, keep=2, hub_key=KEY, min_age=0, collect_delay=3600) as h:
        h.root = root
        yield h


def test_listing_per_server_newest_first_with_meta(store, tmp_path):
    fill(tmp_path / "ws", 1)
    meta = {"kind": "hibernate", "source": {"provider": "local", "region": "site-a", "gpu": "none", "x": "y"},
            "kernels": [{"path": "a.ipynb", "prefix": ".cloudhop/kernels/0"}, {"path": "b/c.ipynb"}],
            "skipped": [{"path": "big.bin", "reason": "larger than 1 GiB"}], "reason": "stop"}
    old, _, _ = take_snapshot(tmp_path / "ws", client(store, "tok-alice-s1"), meta=meta)
    new, _, _ = take_snapshot(tmp_path / "ws", client(store, "tok-alice-s1"), meta=dict(meta, kind="preempt"))
    other, _, _ = take_snapshot(tmp_path / "ws", client(store), meta={"kind": "migration", "server": "s2"})
    loose, _, _ = take_snapshot(tmp_path / "ws", client(store), meta={"kind": "migration"})

    line = client(store).list_snapshots(server="s1")
    assert [s["id"] for s in line] == [new, old]
    first = line[0]
    assert first["kind"] == "preempt" and first["server"] == "s1"
    assert first["source"] == {"provider": "local", "region": "site-a", "gpu": "none"}
    assert first["kernels"] == {"count": 2, "paths": ["a.ipynb", "b/c.ipynb"]}
    assert first["skipped"] == [{"path": "big.bin", "reason": "larger than 1 GiB"}]
    assert first["reason"] == "stop" and first["files"] == 6 and first["bytes"] == 6 * 150_000
    assert isinstance(first["created"], float)
    # the server named in a manifest's meta, by a token for all of alice's snapshots
    assert [s["id"] for s in client(store)._json("GET", "snapshots?server=s2")["snapshots"]] == [other]
    # and that server may restore it: its own token lists and reads it
    assert [s["id"] for s in client(store, "tok-alice-s2")._json("GET", "snapshots?server=s2")["snapshots"]] == [other]
    assert client(store, "tok-alice-s2").get_manifest(other)
    # everything, newest first; the loose one is in no line
    everything = client(store)._json("GET", "snapshots")["snapshots"]
    assert [s["id"] for s in everything] == [loose, other, new, old]
    assert everything[0]["server"] is None
    # a server's token sees its own line only, whatever it asks for
    assert {s["id"] for s in client(store, "tok-alice-s1")._json("GET", "snapshots")["snapshots"]} == {new, old}
    assert client(store, "tok-alice-s1")._json("GET", "snapshots?server=s2")["snapshots"] == []
    # the hub's view is the same
    reply = hub(store, "GET", "api/hub/users/alice/snapshots?server=s1")
    assert [s["id"] for s in reply.json()["snapshots"]] == [new, old]


def test_bad_server_name_is_a_400_naming_the_field(store):
    reply = requests.get(store.url + "api/users/alice/snapshots", params={"server": "a/b"},
                         headers={"Authorization": "token tok-alice"}, timeout=30)
    assert reply.status_code == 400 and reply.json()["message"].startswith("server:")


def test_retention_then_collection_frees_chunks_and_quota(store, tmp_path):
    ids = []
    for seed in range(3):  # three different workspaces: each snapshot has chunks of its own
        fill(tmp_path / f"ws{seed}", seed)
        sid, _, _ = take_snapshot(tmp_path / f"ws{seed}", client(store, "tok-alice-s1"), meta={"kind": "hibernate"})
        ids.append(sid)
    line = [s["id"] for s in client(store)._json("GET", "snapshots?server=s1")["snapshots"]]
    assert line == [ids[2], ids[1]]  # keep=2: the oldest was deleted when the third came
    before = chunk_files(store.root)
    usage_before = hub(store, "POST", "api/hub/users/alice/collect").json()
    # the collection removed the chunks only the deleted snapshot used, and the usage dropped
    after = chunk_files(store.root)
    assert usage_before["user"]["deleted"] > 0
    assert len(after) == len(before) - usage_before["user"]["deleted"]
    assert usage_before["user"]["freed"] >= 6 * 150_000 * 0.9
    usage_after = hub(store, "POST", "api/hub/users/alice/collect").json()
    assert usage_after["user"]["deleted"] == 0
    assert usage_after["usage"] == usage_before["usage"]
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(os.path.join(store.root, "users", "u-alice"))
                for n in ns)
    assert usage_before["usage"] < total + 4096 * 100  # the figure is the scan's, not the old one
    # the kept snapshots still restore whole
    for sid, seed in ((ids[1], 1), (ids[2], 2)):
        out, _ = restores(store, sid, tmp_path)
        for i in range(6):
            assert (out / f"f{i}.bin").read_bytes() == (tmp_path / f"ws{seed}" / f"f{i}.bin").read_bytes()


def test_quota_counts_drop_after_collection(tmp_path):
    root = str(tmp_path / "store")
    with StoreHarness(LocalBackend(root), TOKENS, keep=1, hub_key=KEY, min_age=0, collect_delay=3600,
                      quota_bytes=2_000_000) as h:
        fill(tmp_path / "a", 1, n=8, size=150_000)  # 1.2 MB
        take_snapshot(tmp_path / "a", client(h, "tok-alice-s1"))
        fill(tmp_path / "b", 2, n=8, size=150_000)
        with pytest.raises(Exception, match="quota"):  # 2.4 MB would not fit
            take_snapshot(tmp_path / "b", client(h, "tok-alice-s1"))
        # delete the line's snapshot, collect: the quota's figure drops and the upload fits
        (sid,) = [s["id"] for s in client(h)._json("GET", "snapshots?server=s1")["snapshots"]]
        assert hub(h, "DELETE", f"api/hub/users/alice/snapshots/{sid}").status_code == 204
        freed = hub(h, "POST", "api/hub/users/alice/collect").json()
        assert freed["usage"] < 200_000
        take_snapshot(tmp_path / "b", client(h, "tok-alice-s1"))


def test_deletion_by_the_owner(store, tmp_path):
    fill(tmp_path / "ws", 3)
    sid, _, _ = take_snapshot(tmp_path / "ws", client(store, "tok-alice-s1"))
    client(store).delete_snapshot(sid)
    assert client(store).list_snapshots() == []
    again = requests.delete(store.url + f"api/users/alice/snapshots/{sid}", headers={"Authorization": "token tok-alice"},
                            timeout=30)
    assert again.status_code == 404


def test_collection_keeps_chunks_of_a_snapshot_being_written(store, tmp_path):
    """A snapshot is written while the collector runs: its chunks - those it sends and
    those the store already has unreferenced (a deleted snapshot's), which it does not
    send again - all survive, and the snapshot restores whole."""
    fill(tmp_path / "ws", 7)
    c = client(store, "tok-alice-s1")
    first, _, _ = take_snapshot(tmp_path / "ws", c)
    assert hub(store, "DELETE", f"api/hub/users/alice/snapshots/{first}").status_code == 204
    # step by step: the writer asks which chunks are missing (none: the deleted snapshot's
    # chunks are still there), then a collection runs, then the writer stores its manifest
    from cloudhop.extensions.snapshot.chunking import Chunker

    ids = sorted({ch.id for i in range(6) for ch in Chunker().chunk_bytes((tmp_path / "ws" / f"f{i}.bin").read_bytes())})
    missing, _ = c.missing(ids)
    assert missing == []
    hub(store, "POST", "api/hub/users/alice/collect")
    assert set(ids) <= chunk_files(store.root)
    second, _, _ = take_snapshot(tmp_path / "ws", c)
    restores(store, second, tmp_path)

    # and with threads: a writer changing its workspace and snapshotting, a collector
    # running over and over, and a deletion of the line's older snapshots meanwhile
    errors, written = [], []

    def writer():
        try:
            for round_ in range(4):
                (tmp_path / "ws" / f"f{round_}.bin").write_bytes(random.Random(100 + round_).randbytes(150_000))
                sid, _, _ = take_snapshot(tmp_path / "ws", client(store, "tok-alice-s1"))
                written.append(sid)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    thread = threading.Thread(target=writer)
    thread.start()
    collections = 0
    while thread.is_alive() or collections < 3:
        assert hub(store, "POST", "api/hub/users/alice/collect").status_code == 200
        collections += 1
    thread.join()
    assert not errors
    line = [s["id"] for s in client(store)._json("GET", "snapshots?server=s1")["snapshots"]]
    assert line == written[::-1][:2]
    for sid in line:
        restores(store, sid, tmp_path)
