"""Workspace snapshots against the real store service (local directory and S3 through
moto): chunking and dedup, manifests, excludes, per-user isolation, atomic restore."""

from __future__ import annotations

import json
import os
import random

import pytest
import requests

from cloudhop.extensions.snapshot import (
    Chunker, Excludes, Manifest, ManifestError, StoreClient, StoreError, restore_snapshot, take_snapshot,
)
from cloudhop.extensions.snapshot.snapshot import workspace_dest
from cloudhop.hub.store_backends import LocalBackend, S3Backend

from .store_double import ACCESS, StoreHarness

TOKENS = {"tok-alice": ("alice", [ACCESS]), "tok-bob": ("bob", [ACCESS]), "tok-noaccess": ("carol", [])}


def make_workspace(root, n_files=20, size=200_000, seed=1):
    rng = random.Random(seed)
    for i in range(n_files):
        sub = root / f"dir{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}.bin").write_bytes(rng.randbytes(size + i))
    (root / "notes.txt").write_text("hello\n")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o755)
    (root / "empty").write_bytes(b"")


@pytest.fixture
def local_store(tmp_path):
    with StoreHarness(LocalBackend(str(tmp_path / "store")), TOKENS) as h:
        yield h


def client(h, token="tok-alice", user="alice"):
    return StoreClient(h.url, user, token)


def test_chunk_boundaries_follow_content():
    rng = random.Random(0)
    data = rng.randbytes(3_000_000)
    chunker = Chunker()
    a = [c.id for c in chunker.chunk_bytes(data)]
    b = [c.id for c in chunker.chunk_bytes(data[:1000] + b"inserted" + data[1000:])]
    assert len(a) > 5
    # an insertion near the start changes only the first chunk or two
    assert len(set(a) & set(b)) >= len(a) - 2


def test_snapshot_roundtrip_and_second_snapshot_sends_about_what_changed(local_store, tmp_path):
    ws = tmp_path / "ws"
    make_workspace(ws)
    c = client(local_store)
    sid, manifest, stats = take_snapshot(ws, c)
    assert stats.files == 23 and stats.bytes_total == manifest.total_bytes
    assert stats.bytes_sent >= stats.bytes_total  # first time everything goes

    # change one file out of 23 and append to another
    (ws / "dir0" / "f0.bin").write_bytes(random.Random(9).randbytes(200_000))
    with open(ws / "dir1" / "f1.bin", "ab") as f:
        f.write(b"x" * 1000)
    sid2, manifest2, stats2 = take_snapshot(ws, c)
    assert sid2 != sid
    changed = 200_000 + 1000
    # the changed file plus at most one tail chunk of the appended file and the manifest
    assert stats2.bytes_sent < changed + 1_200_000 < stats.bytes_total / 2 + 1_200_000
    assert stats2.chunks_sent <= 3

    out = tmp_path / "out"
    got = restore_snapshot(Manifest.loads(c.get_manifest(sid2)), c, workspace_dest(str(out)))
    for entry in manifest2.files:
        assert (out / entry.path).read_bytes() == (ws / entry.path).read_bytes()
        assert got[entry.path] == entry.hash
    assert os.stat(out / "run.sh").st_mode & 0o777 == 0o755
    assert (out / "empty").read_bytes() == b""
    assert [s["id"] for s in c.list_snapshots()] == [sid2, sid]  # newest first
    # nothing left behind by the atomic writes
    assert not [p for p in out.rglob("*") if ".cloudhop-" in p.name]


def test_restore_refuses_corrupted_chunk_and_leaves_no_file(local_store, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_bytes(b"A" * 100_000)
    c = client(local_store)
    sid, manifest, _ = take_snapshot(ws, c)
    # damage the chunk on the store's disk
    cid = manifest.files[0].chunks[0][0]
    path = local_store.backend._chunk_path("alice", cid)
    with open(path, "r+b") as f:
        f.write(b"B")
    out = tmp_path / "out"
    with pytest.raises(StoreError, match="checksum"):
        restore_snapshot(manifest, c, workspace_dest(str(out)))
    assert not (out / "a.txt").exists()
    assert not list(out.glob(".*"))


def test_excludes_caches_checkpoints_and_big_files(local_store, tmp_path):
    ws = tmp_path / "ws"
    (ws / ".ipynb_checkpoints").mkdir(parents=True)
    (ws / ".ipynb_checkpoints" / "nb-checkpoint.ipynb").write_text("{}")
    (ws / "pkg" / "__pycache__").mkdir(parents=True)
    (ws / "pkg" / "__pycache__" / "m.cpython-312.pyc").write_bytes(b"x")
    (ws / "pkg" / "m.py").write_text("x = 1\n")
    (ws / "big.bin").write_bytes(b"0" * 5000)
    (ws / "scratch.tmp").write_text("t")
    ex = Excludes(patterns=Excludes().patterns + ("*.tmp",), max_file_bytes=4096)
    sid, manifest, stats = take_snapshot(ws, client(local_store), excludes=ex)
    assert [f.path for f in manifest.files] == ["pkg/m.py"]
    assert any("big.bin" in w and "limit" in w for w in stats.warnings)


def test_manifest_rejects_paths_outside_the_workspace():
    good = {"path": "a", "mode": 0o644, "size": 0, "hash": "0" * 64, "chunks": []}
    Manifest.from_json({"version": 1, "files": [good]})
    for bad in ("../etc/passwd", "/etc/passwd", "a/../../b", "a/./b", ""):
        with pytest.raises(ManifestError):
            Manifest.from_json({"version": 1, "files": [dict(good, path=bad)]})
    with pytest.raises(ManifestError, match="add up"):
        Manifest.from_json({"version": 1, "files": [dict(good, size=5)]})


def test_a_user_cannot_read_or_write_another_users_snapshots(local_store, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "secret.txt").write_text("alice's data")
    alice = client(local_store)
    sid, manifest, _ = take_snapshot(ws, alice)
    cid = manifest.files[0].chunks[0][0]

    # bob with his own token, naming alice in the path
    bob_as_alice = StoreClient(local_store.url, "alice", "tok-bob")
    for call in (lambda: bob_as_alice.get_manifest(sid), lambda: bob_as_alice.list_snapshots(),
                 lambda: bob_as_alice.missing([cid]), lambda: bob_as_alice.download([cid], lambda *a: None)):
        with pytest.raises(StoreError) as err:
            call()
        assert err.value.status == 403
    # bob in his own namespace does not see alice's snapshot or chunks
    bob = client(local_store, "tok-bob", "bob")
    with pytest.raises(StoreError) as err:
        bob.get_manifest(sid)
    assert err.value.status == 404
    assert bob.missing([cid])[0] == [cid]
    # no token, and a token without access to the store service
    r = requests.get(local_store.url + "api/users/alice/snapshots")
    assert r.status_code == 403
    with pytest.raises(StoreError) as err:
        StoreClient(local_store.url, "carol", "tok-noaccess").list_snapshots()
    assert err.value.status == 403


def test_store_refuses_a_chunk_that_does_not_match_its_id_and_a_manifest_with_missing_chunks(local_store):
    from cloudhop.extensions.snapshot.client import encode_pack

    c = client(local_store)
    with pytest.raises(StoreError) as err:
        c._request("POST", local_store.url + "api/users/alice/chunks", data=encode_pack([("ab" * 32, b"hello")]))
    assert err.value.status == 400
    manifest = {"version": 1, "files": [{"path": "a", "mode": 420, "size": 5, "hash": "ab" * 32,
                                         "chunks": [["ab" * 32, 5]]}]}
    with pytest.raises(StoreError) as err:
        c.put_manifest(json.dumps(manifest).encode())
    assert err.value.status == 409


@pytest.fixture
def s3_store(monkeypatch):
    pytest.importorskip("boto3")
    from s3_presign_double import checked_bucket

    with checked_bucket(monkeypatch) as s3:
        backend = S3Backend(s3, "snaps", prefix="cloudhop")
        with StoreHarness(backend, TOKENS) as h:
            yield h, s3


def test_s3_backend_chunks_go_straight_to_the_bucket_through_presigned_urls(s3_store, tmp_path):
    h, s3 = s3_store
    ws = tmp_path / "ws"
    make_workspace(ws, n_files=4, size=300_000)
    c = client(h)
    refs = Chunker().chunk_file(ws / "dir0" / "f0.bin")[1]
    missing, upload = c.missing([r.id for r in refs])
    assert upload["kind"] == "presigned"
    for url in c.upload_urls(upload, {r.id: r.length for r in refs}).values():
        # scoped to alice's prefix, signed, and no hub token in it
        assert "/snaps/cloudhop/users/u-alice/chunks/" in url and "Signature" in url and "tok-" not in url

    sid, manifest, stats = take_snapshot(ws, c)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="snaps")["Contents"]}
    assert all(k.startswith("cloudhop/users/u-alice/") for k in keys)
    assert len([k for k in keys if "/chunks/" in k]) == len(manifest.chunk_ids())
    _, _, again = take_snapshot(ws, c)
    assert again.chunks_sent == 0

    out = tmp_path / "out"
    restore_snapshot(Manifest.loads(c.get_manifest(sid)), c, workspace_dest(str(out)))
    for entry in manifest.files:
        assert (out / entry.path).read_bytes() == (ws / entry.path).read_bytes()
    with pytest.raises(StoreError) as err:
        StoreClient(h.url, "alice", "tok-bob").get_manifest(sid)
    assert err.value.status == 403


def test_a_file_changed_during_the_snapshot_is_reported_not_stored(local_store, tmp_path):
    class ChangesUnderneath(Chunker):
        """The user's code rewrites each file just after it was chunked."""

        def chunk_file(self, path):
            result = super().chunk_file(path)
            with open(path, "r+b") as f:
                f.write(b"changed!")
            return result

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "model.bin").write_bytes(random.Random(3).randbytes(300_000))
    c = client(local_store)
    with pytest.raises(StoreError, match="changed while it was being snapshotted"):
        take_snapshot(ws, c, chunker=ChangesUnderneath())
    assert c.list_snapshots() == []
