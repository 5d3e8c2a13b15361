"""Class snapshots against the real store service (local directory): published once,
each student's copy their own, chunks shared rather than copied, replace and revoke
leaving students' copies whole; and the spawn form's "Start from" list and a spawner's
class start through the hub's link to the store."""

from __future__ import annotations

import os
import random
from types import SimpleNamespace

import pytest
import requests
from traitlets.config import Config

from cloudhop.extensions.snapshot import Manifest, StoreClient, restore_snapshot, take_snapshot
from cloudhop.extensions.snapshot.snapshot import workspace_dest
from cloudhop.hub.snapshot_link import KEY_ENV
from cloudhop.hub.snapshot_store import SNAPSHOTS_SCOPE
from cloudhop.hub.store_backends import LocalBackend

from .store_double import ACCESS, StoreHarness

KEY = "hub-key-for-tests"
STUDENTS = [f"s{i:02d}" for i in range(30)]
TOKENS = {
    "tok-alice": ("alice", [ACCESS]),
    "tok-alice-lab": ("alice", [ACCESS, f"{SNAPSHOTS_SCOPE}!server=alice/lab"]),
    "tok-eve": ("eve", [ACCESS]),
    **{f"tok-{s}": (s, [ACCESS, f"{SNAPSHOTS_SCOPE}!server={s}/"]) for s in STUDENTS},
}
SIZE = 6 << 20  # the class snapshot's files (the 200 MiB, smaller)


def hub(h, method, path, **kw):
    return requests.request(method, h.url + path, headers={"Authorization": f"cloudhop-hub {KEY}"}, timeout=120, **kw)


def store_bytes(root) -> int:
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(root) for n in names)


def restore_into(h, token, user, sid, out):
    c = StoreClient(h.url, user, token)
    restore_snapshot(Manifest.loads(c.get_manifest(sid)), c, workspace_dest(str(out)))
    return out


@pytest.fixture
def store(tmp_path):
    root = str(tmp_path / "store")
    with StoreHarness(LocalBackend(root), TOKENS, keep=3, hub_key=KEY, min_age=0, collect_delay=3600) as h:
        h.root = root
        yield h


@pytest.fixture
def week3(store, tmp_path):
    """alice's prepared server, snapshotted and published as week3 for group students."""
    ws = tmp_path / "prepared"
    ws.mkdir()
    rng = random.Random(3)
    for i in range(6):
        (ws / f"data{i}.bin").write_bytes(rng.randbytes(SIZE // 6))
    (ws / "lesson.ipynb").write_text('{"cells": []}')
    sid, _, _ = take_snapshot(ws, StoreClient(store.url, "alice", "tok-alice-lab"), meta={"kind": "hibernate"})
    reply = hub(store, "POST", "api/hub/classes", json={"owner": "alice", "snapshot": sid, "name": "week3",
                                                        "share": "group:students", "server": "lab"})
    assert reply.status_code == 201, reply.text
    return SimpleNamespace(ws=ws, sid=sid, record=reply.json())


def start_from_class(store, student, groups=("students",)):
    return hub(store, "POST", f"api/hub/users/{student}/restore",
               json={"server": "", "restore": "class:week3", "groups": list(groups)})


def test_thirty_students_start_from_one_copy_of_the_chunks(store, week3, tmp_path):
    before = store_bytes(store.root)
    copies = []
    for student in STUDENTS:
        reply = start_from_class(store, student)
        assert reply.status_code == 200, reply.text
        copies.append(reply.json()["id"])
    grown = store_bytes(store.root) - before
    assert grown < 0.05 * 30 * SIZE, f"30 starts grew the store by {grown} bytes"
    # each copy is the student's own: in their server's line, made for their server
    line = StoreClient(store.url, "s07", "tok-s07")._json("GET", "snapshots?server=")["snapshots"]
    assert [s["id"] for s in line] == [copies[7]]
    assert line[0]["kind"] == "class" and line[0]["class"] == "week3" and line[0]["bytes"] >= SIZE
    # a student's server restores it whole with its own token
    out = restore_into(store, "tok-s07", "s07", copies[7], tmp_path / "s07")
    for i in range(6):
        assert (out / f"data{i}.bin").read_bytes() == (week3.ws / f"data{i}.bin").read_bytes()
    # and snapshotting it later sends only what the student changed
    (out / "answer.txt").write_text("42\n")
    sid, _, stats = take_snapshot(out, StoreClient(store.url, "s07", "tok-s07"))
    assert stats.bytes_sent < 64 * 1024
    newest = StoreClient(store.url, "s07", "tok-s07")._json("GET", "snapshots?server=")["snapshots"][0]
    assert newest["id"] == sid and newest["borrows"]
    restore_into(store, "tok-s07", "s07", sid, tmp_path / "s07-again")
    # the publisher sees the class in the hub's list
    classes = hub(store, "GET", "api/hub/classes").json()["classes"]
    assert [(c["name"], c["share"], c["owner"]) for c in classes] == [("week3", "group:students", "alice")]


def test_publishing_a_name_again_needs_replace(store, week3):
    body = {"owner": "alice", "snapshot": week3.sid, "name": "week3", "share": "all"}
    again = hub(store, "POST", "api/hub/classes", json=body)
    assert again.status_code == 409 and "replace" in again.json()["message"]
    other = hub(store, "POST", "api/hub/classes", json=dict(body, owner="eve", replace=True))
    assert other.status_code in (403, 404)  # eve has no such snapshot, nor may she replace alice's
    replaced = hub(store, "POST", "api/hub/classes", json=dict(body, replace=True))
    assert replaced.status_code == 201
    assert replaced.json()["publication"] != week3.record["publication"] and replaced.json()["share"] == "all"
    bad = hub(store, "POST", "api/hub/classes", json=dict(body, name="week 3", replace=True))
    assert bad.status_code == 400 and bad.json()["message"].startswith("name:")
    bad = hub(store, "POST", "api/hub/classes", json=dict(body, share="friends", replace=True))
    assert bad.status_code == 400 and bad.json()["message"].startswith("share:")


def test_revoking_keeps_students_copies(store, week3, tmp_path):
    copy = start_from_class(store, "s01").json()["id"]
    assert hub(store, "DELETE", "api/hub/classes/week3?by=eve").status_code == 403
    assert hub(store, "DELETE", "api/hub/classes/week3?by=alice").status_code == 200
    assert hub(store, "GET", "api/hub/classes").json()["classes"] == []
    assert start_from_class(store, "s02").status_code == 404  # no new starts
    # alice deletes her own snapshot too; collections run: s01's copy still restores whole
    assert hub(store, "DELETE", f"api/hub/users/alice/snapshots/{week3.sid}").status_code == 204
    hub(store, "POST", "api/hub/users/alice/collect")
    hub(store, "POST", "api/hub/users/s01/collect")
    out = restore_into(store, "tok-s01", "s01", copy, tmp_path / "s01")
    assert (out / "data5.bin").read_bytes() == (week3.ws / "data5.bin").read_bytes()
    # once the last copy is gone, so are the class's chunks
    before = store_bytes(store.root)
    assert hub(store, "DELETE", f"api/hub/users/s01/snapshots/{copy}").status_code == 204
    hub(store, "POST", "api/hub/users/s01/collect")
    assert before - store_bytes(store.root) > 0.9 * SIZE


def _spawner(store, user="s05", groups=("students",)):
    from cloudhop.spawner import CloudhopSpawner

    c = Config()
    c.JupyterHub.services = [{"name": "cloudhop-store", "url": f"http://127.0.0.1:{store.port}",
                              "environment": {KEY_ENV: KEY}}]
    user = SimpleNamespace(name=user, url=f"/user/{user}/", escaped_name=user,
                           groups=[SimpleNamespace(name=g) for g in groups])
    return CloudhopSpawner(user=user, config=c, providers=["cloudhop.spawner.providers.local:LocalProvider"])


async def test_the_form_lists_the_line_and_the_classes(store, week3, tmp_path):
    form = await _spawner(store, "alice", groups=()).get_options_form()
    # alice's own class shows for her; her lab server's line is not this server's
    assert 'value="class:week3"' in form and "Start from" in form
    assert "New, empty workspace" in form
    spawner = _spawner(store)
    sid = await spawner._class_copy("week3")
    form = await spawner.get_options_form()
    assert "Last session (" in form and "6.0 MiB" in form
    assert 'value="none"' in form and 'value="class:week3"' in form
    assert sid not in form.split("Older snapshots")[0].split("<select")[0]  # the newest is value ""
    outsider = _spawner(store, "eve", groups=("others",))
    assert "class:week3" not in await outsider.get_options_form()


async def test_a_spawner_refuses_a_class_not_shared_with_the_user(store, week3):
    from cloudhop.spawner.refusal import Refused

    with pytest.raises(Refused) as err:
        await _spawner(store, "eve", groups=("others",))._class_copy("week3")
    assert err.value.status_code == 404 and "week3" in err.value.message


def test_on_a_bucket_a_class_copy_restores_and_collection_frees_its_chunks(monkeypatch, tmp_path):
    """The same on an S3 bucket (moto): the publication is copied inside the bucket, a
    student's server downloads borrowed chunks through URLs signed for the publication's
    keys, and collections delete chunks no kept snapshot uses."""
    pytest.importorskip("boto3")
    from cloudhop.hub.store_backends import S3Backend

    from .s3_presign_double import checked_bucket

    with checked_bucket(monkeypatch) as s3:
        with StoreHarness(S3Backend(s3, "snaps", prefix="cloudhop"), TOKENS, keep=1, hub_key=KEY, min_age=0,
                          collect_delay=3600) as h:
            ws = tmp_path / "ws"
            ws.mkdir()
            (ws / "a.bin").write_bytes(random.Random(1).randbytes(400_000))
            sid, _, _ = take_snapshot(ws, StoreClient(h.url, "alice", "tok-alice-lab"))
            assert hub(h, "POST", "api/hub/classes", json={"owner": "alice", "snapshot": sid, "name": "week3",
                                                           "share": "all"}).status_code == 201
            copy = start_from_class(h, "s03", groups=()).json()["id"]
            out = restore_into(h, "tok-s03", "s03", copy, tmp_path / "out")
            assert (out / "a.bin").read_bytes() == (ws / "a.bin").read_bytes()

            def chunk_keys():
                return {o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="snaps")
                        for o in page.get("Contents", []) if "/chunks/" in o["Key"]}

            assert hub(h, "DELETE", "api/hub/classes/week3?by=alice").status_code == 200
            assert hub(h, "DELETE", f"api/hub/users/alice/snapshots/{sid}").status_code == 204
            hub(h, "POST", "api/hub/users/alice/collect")
            assert not [k for k in chunk_keys() if "/u-alice/" in k]
            assert [k for k in chunk_keys() if "/u-%2Fclass%2F" in k], "s03's copy still borrows them"
            assert hub(h, "DELETE", f"api/hub/users/s03/snapshots/{copy}").status_code == 204
            hub(h, "POST", "api/hub/users/s03/collect")
            assert chunk_keys() == set()
