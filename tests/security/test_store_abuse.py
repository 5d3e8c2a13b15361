"""Attacks on the snapshot store's resources: each sends one abusive request, as a user
with a valid token could, to the real store service (``store_double.StoreHarness``, the
local directory backend; S3 through moto behind ``s3_presign_double``, which checks
presigned URLs as S3 does) and checks that it is refused, or answered within the limits,
with a clear message. The limits are in docs/migration.md ("Store limits")."""

from __future__ import annotations

import json
import os
import random
import tracemalloc

import pytest
import requests

from cloudhop.extensions.snapshot import Chunker, StoreClient, StoreError, take_snapshot
from cloudhop.extensions.snapshot.chunking import hash_bytes
from cloudhop.extensions.snapshot.protocol import (
    MANIFEST_MAX, MAX_CHUNK, MAX_IDS, PACK_HEADER, PACK_IDS, PACK_MAX, encode_pack, iter_pack,
)
from cloudhop.hub.snapshot_store import JSON_MAX
from cloudhop.hub.store_backends import LocalBackend, S3Backend
from store_double import ACCESS, StoreHarness

TOKENS = {"tok-alice": ("alice", [ACCESS]), "tok-bob": ("bob", [ACCESS])}
AUTH = {"Authorization": "token tok-alice"}
MIB = 1 << 20


def chunk(size: int, seed: int) -> tuple[str, bytes]:
    data = random.Random(seed).randbytes(size)
    return hash_bytes(data), data


def post(h, path: str, body, user: str = "alice", token: str = "tok-alice", **kw) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body)
    return requests.post(f"{h.url}api/users/{user}/{path}", data=data,
                         headers={"Authorization": f"token {token}"}, **kw)


@pytest.fixture(scope="module")
def full_chunks(tmp_path_factory):
    """A store directory where alice keeps PACK_IDS + 1 chunks of MAX_CHUNK bytes each
    (one more than a pack carries); yields ``(directory, ids)``."""
    root = tmp_path_factory.mktemp("store")
    backend = LocalBackend(str(root))
    ids = []
    for i in range(PACK_IDS + 1):
        cid, data = chunk(MAX_CHUNK, 1000 + i)
        backend.put_chunk("alice", cid, data)
        ids.append(cid)
    return str(root), ids


@pytest.fixture
def big_store(full_chunks):
    root, ids = full_chunks
    with StoreHarness(LocalBackend(root), TOKENS) as h:
        yield h, ids


@pytest.fixture
def store(tmp_path):
    with StoreHarness(LocalBackend(str(tmp_path / "store")), TOKENS) as h:
        yield h


def test_duplicate_ids_get_one_copy_each(store):
    cid, data = chunk(256 << 10, 1)
    absent = hash_bytes(b"never stored")
    assert post(store, "chunks", encode_pack([(cid, data)])).status_code == 200

    # 10,000 copies of one id: the reply carries the chunk once, not 10,000 times (2.5 GiB)
    r = post(store, "chunks/pack", {"ids": [cid] * 10_000})
    assert r.status_code == 200, r.text
    assert len(r.content) == PACK_HEADER.size + len(data)
    assert [(c, bytes(d)) for c, d in iter_pack(r.content)] == [(cid, data)]

    # which are missing: each once
    r = post(store, "chunks/missing", {"ids": [cid, absent] * 5_000})
    assert r.status_code == 200, r.text
    assert r.json()["missing"] == [absent]


def test_a_pack_reply_is_streamed_not_built_in_memory(big_store):
    h, ids = big_store
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with post(h, "chunks/pack", {"ids": ids[:PACK_IDS]}, stream=True) as r:
            assert r.status_code == 200, r.text
            received = sum(len(part) for part in r.iter_content(256 << 10))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == PACK_IDS * (PACK_HEADER.size + MAX_CHUNK) == PACK_MAX + PACK_IDS * PACK_HEADER.size
    # the whole reply is 64 MiB; the store held a chunk or two of it at a time
    assert peak < 16 * MIB, f"{peak / MIB:.1f} MiB allocated at the peak while serving a {PACK_MAX / MIB:.0f} MiB pack"


def test_too_many_ids_or_bytes_in_one_request_are_refused(big_store):
    h, ids = big_store
    # distinct chunks adding up past a pack's cap: refused before anything is read
    r = post(h, "chunks/pack", {"ids": ids})
    assert r.status_code == 413
    assert f"at most {PACK_MAX} bytes" in r.json()["message"] and "ask for fewer" in r.json()["message"]
    assert len(r.content) < 1000

    # more distinct ids than a request may name
    many = [hash_bytes(str(i).encode()) for i in range(MAX_IDS + 1)]
    for path in ("chunks/missing", "chunks/pack", "chunks/download"):
        r = post(h, path, {"ids": many})
        assert r.status_code == 400 and f"at most {MAX_IDS} distinct chunk ids" in r.json()["message"], path

    # a JSON body past its cap is refused before it is parsed
    r = post(h, "chunks/missing", b'{"ids": [' + b'"0",' * (JSON_MAX // 4) + b'"0"]}')
    assert r.status_code == 413 and f"at most {JSON_MAX} bytes of JSON" in r.json()["message"]

    # the client asks for packs the store serves (PACK_IDS at a time)
    client = StoreClient(h.url, "alice", "tok-alice")
    got = []
    client.download(ids, lambda cid, data: got.append(cid))
    assert sorted(got) == sorted(ids)


def test_an_oversized_chunk_is_refused(store):
    cid, data = chunk(MAX_CHUNK + 1, 2)
    r = post(store, "chunks", encode_pack([(cid, data)]))
    assert r.status_code == 413
    assert f"at most {MAX_CHUNK} bytes" in r.json()["message"]
    assert post(store, "chunks/missing", {"ids": [cid]}).json()["missing"] == [cid]

    # the chunker never cuts a larger one (it shares the limit) and refuses to be told to
    refs = list(Chunker().chunk_bytes(bytes(8 * MIB) + random.Random(3).randbytes(8 * MIB)))
    assert max(r.length for r in refs) == MAX_CHUNK
    with pytest.raises(ValueError, match="max_size"):
        Chunker(max_size=MAX_CHUNK + 1)


def test_an_oversized_manifest_is_refused(store):
    cid, data = chunk(1000, 4)
    assert post(store, "chunks", encode_pack([(cid, data)])).status_code == 200
    entry = [cid, len(data)]
    n = MANIFEST_MAX // len(json.dumps(entry)) + 1
    manifest = json.dumps({"version": 1, "files": [{"path": "big", "mode": 420, "size": n * len(data),
                                                    "hash": cid, "chunks": [entry] * n}]}).encode()
    assert len(manifest) > MANIFEST_MAX
    r = post(store, "snapshots", manifest)
    assert r.status_code == 413
    assert f"at most {MANIFEST_MAX} bytes" in r.json()["message"]
    client = StoreClient(store.url, "alice", "tok-alice")
    assert client.list_snapshots() == []
    # the client does not even send one
    with pytest.raises(StoreError, match=f"at most {MANIFEST_MAX} bytes") as err:
        client.put_manifest(manifest)
    assert err.value.status == 413


def test_an_upload_past_the_quota_is_refused_with_413(tmp_path):
    root = str(tmp_path / "store")
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, seed in ((first, 5), (second, 6)):
        folder.mkdir()
        (folder / "data.bin").write_bytes(random.Random(seed).randbytes(600_000))
    quota = 1 * MIB
    with StoreHarness(LocalBackend(root), TOKENS, quota_bytes=quota) as h:
        alice = StoreClient(h.url, "alice", "tok-alice")
        take_snapshot(first, alice)
        with pytest.raises(StoreError) as err:
            take_snapshot(second, alice)
        assert err.value.status == 413
        message = str(err.value)
        assert "quota is 1.00 MiB per user" in message and "alice keeps 5" in message, message
        # chunks alice keeps already cost nothing again: the same files snapshot again
        take_snapshot(first, alice)
        # another user has a quota of their own
        take_snapshot(second, StoreClient(h.url, "bob", "tok-bob"))

    # a restarted store counts what alice keeps from its directory
    with StoreHarness(LocalBackend(root), TOKENS, quota_bytes=quota) as h:
        alice = StoreClient(h.url, "alice", "tok-alice")
        with pytest.raises(StoreError, match="quota is 1.00 MiB") as err:
            take_snapshot(second, alice)
        assert err.value.status == 413
        # a raw chunk pack is refused the same way, and nothing of it is stored
        cid, data = chunk(600_000, 7)
        r = post(h, "chunks", encode_pack([(cid, data)]))
        assert r.status_code == 413 and "quota" in r.json()["message"]
        assert alice.missing([cid])[0] == [cid]


@pytest.fixture
def s3_store(monkeypatch):
    """The store on a moto bucket reached through :class:`PresignCheck` (which checks
    presigned URLs as S3 does); yields a function making a harness with a quota, and
    the bucket's boto3 client."""
    pytest.importorskip("boto3")
    from s3_presign_double import checked_bucket

    harnesses = []
    with checked_bucket(monkeypatch) as s3:

        def make(quota_bytes=None):
            harness = StoreHarness(S3Backend(s3, "snaps", prefix="cloudhop"), TOKENS, quota_bytes=quota_bytes)
            harnesses.append(harness.__enter__())
            return harness

        try:
            yield make, s3
        finally:
            for harness in harnesses:
                harness.__exit__(None, None, None)


def test_a_presigned_upload_larger_than_declared_is_refused(s3_store):
    make, s3 = s3_store
    h = make()
    alice = StoreClient(h.url, "alice", "tok-alice")
    cid, data = chunk(100_000, 8)
    missing, upload = alice.missing([cid])
    assert missing == [cid]
    (url,) = alice.upload_urls(upload, {cid: len(data)}).values()
    key = f"cloudhop/users/u-alice/chunks/{cid}"

    # the URL takes exactly the declared length, nothing larger (or smaller)
    for body in (data + os.urandom(4 * MIB), data[:-1]):
        r = requests.put(url, data=body)
        assert r.status_code == 403 and "SignatureDoesNotMatch" in r.text
        assert "Contents" not in s3.list_objects_v2(Bucket="snaps", Prefix=key)
    assert requests.put(url, data=data).status_code == 200
    assert s3.head_object(Bucket="snaps", Key=key)["ContentLength"] == len(data)

    # a declared length past the largest chunk gets no URL
    r = post(h, "chunks/uploads", {"ids": [cid], "sizes": [MAX_CHUNK + 1]})
    assert r.status_code == 413 and f"0 to {MAX_CHUNK} bytes" in r.json()["message"]
    r = post(h, "chunks/uploads", {"ids": [cid]})
    assert r.status_code == 400 and "sizes" in r.json()["message"]


def test_presigned_uploads_count_against_the_quota(s3_store, tmp_path):
    make, s3 = s3_store
    h = make(quota_bytes=1 * MIB)
    alice = StoreClient(h.url, "alice", "tok-alice")
    a, b = chunk(600_000, 9), chunk(600_000, 10)
    _, upload = alice.missing([a[0], b[0]])
    # URLs for both would let alice keep 1.2 MB: refused before any is issued
    r = post(h, "chunks/uploads", {"ids": [a[0], b[0]], "sizes": [len(a[1]), len(b[1])]})
    assert r.status_code == 413 and "quota is 1.00 MiB per user" in r.json()["message"]
    # one fits; asking again for it costs nothing more
    for _ in range(2):
        urls = alice.upload_urls(upload, {a[0]: len(a[1])})
    assert requests.put(urls[a[0]], data=a[1]).status_code == 200
    with pytest.raises(StoreError, match="quota") as err:
        alice.upload_urls(upload, {b[0]: len(b[1])})
    assert err.value.status == 413

    # a restarted store finds what alice keeps in the bucket
    h2 = make(quota_bytes=1 * MIB)
    r = post(h2, "chunks/uploads", {"ids": [b[0]], "sizes": [len(b[1])]})
    assert r.status_code == 413 and "alice keeps 585.94 KiB" in r.json()["message"]

    # the client's own upload path stays within the quota's message too
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "more.bin").write_bytes(b[1])
    with pytest.raises(StoreError, match="quota") as err:
        take_snapshot(ws, StoreClient(h2.url, "alice", "tok-alice"))
    assert err.value.status == 413
