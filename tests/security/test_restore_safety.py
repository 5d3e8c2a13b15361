"""Attacks on a restore: each builds a real snapshot with the product's own code, stores it
in the real store service (``snapshot_store`` in conftest), prepares the target the way
an attacker would, restores, and checks the refusal and that nothing landed outside the
workspace. What a restore promises is in docs/security.md."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import socket
import stat
from types import SimpleNamespace

import pytest
from restore_victim import untouched

from cloudhop.extensions import migrate
from cloudhop.extensions.hubclient import HubClient
from cloudhop.extensions.snapshot import (
    FileEntry, Manifest, ManifestError, RestoreError, restore_snapshot, take_snapshot,
)
from cloudhop.extensions.snapshot.snapshot import workspace_dest

BIG = random.Random(7).randbytes(3_000_000)  # a dozen chunks or so


def snapshot_of(tmp_path, store, files: dict[str, bytes], modes: dict[str, int] | None = None):
    """Snapshot a workspace holding ``files`` (path -> content) with ``modes``; returns
    ``(snapshot id, manifest)``."""
    ws = tmp_path / "source"
    for path, data in files.items():
        (ws / path).parent.mkdir(parents=True, exist_ok=True)
        (ws / path).write_bytes(data)
    for path, mode in (modes or {}).items():
        os.chmod(ws / path, mode)
    sid, manifest, _ = take_snapshot(ws, store)
    return sid, manifest


def crafted(store, manifest: Manifest, where: str, **changes) -> str:
    """Store ``manifest`` with the JSON fields of its file ``where`` changed, as a user with
    a store token could (the store checks chunks, not paths or modes); returns the
    snapshot id."""
    body = manifest.to_json()
    [entry] = [f for f in body["files"] if f["path"] == where]
    entry.update(changes)
    return store.put_manifest(json.dumps(body).encode())


def restore(store, sid, target, **kw):
    return restore_snapshot(Manifest.loads(store.get_manifest(sid)), store, workspace_dest(str(target)), **kw)


# -- links in the target ---------------------------------------------------------------

@pytest.mark.parametrize("link", ["absolute", "relative"])
def test_a_symlinked_parent_to_a_directory_outside_is_refused(tmp_path, store, outside, link):
    sid, _ = snapshot_of(tmp_path, store, {"data/x.txt": b"planted", "a.txt": b"a"})
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside if link == "absolute" else "../outside", target / "data")

    with pytest.raises(RestoreError, match=r"data/x\.txt: refused: 'data' is a symbolic link"):
        restore(store, sid, target)
    assert untouched(outside)
    assert os.readlink(target / "data")  # the link itself is left as it was


def test_a_symlinked_directory_deeper_down_is_refused(tmp_path, store, outside):
    sid, _ = snapshot_of(tmp_path, store, {"a/b/c.txt": b"planted"})
    target = tmp_path / "target"
    (target / "a").mkdir(parents=True)
    os.symlink(outside, target / "a" / "b")

    with pytest.raises(RestoreError, match=r"a/b/c\.txt: refused: 'a/b' is a symbolic link"):
        restore(store, sid, target)
    assert untouched(outside)


def test_a_parent_swapped_for_a_symlink_while_the_restore_runs_is_refused(tmp_path, store, outside):
    sid, _ = snapshot_of(tmp_path, store, {"data/big.bin": BIG})
    target = tmp_path / "target"
    swapped = []

    def progress(got, total):
        if not swapped:  # after the first chunk is written: the check is long done
            os.rename(target / "data", target / "moved")
            os.symlink(outside, target / "data")
            swapped.append(True)

    with pytest.raises(RestoreError, match=r"data/big\.bin: refused: 'data' is a symbolic link"):
        restore(store, sid, target, progress=progress)
    assert swapped and untouched(outside)


@pytest.mark.parametrize("same_content", [True, False], ids=["same-content", "other-content"])
def test_a_symlink_as_the_final_component_is_refused_and_its_target_left_alone(
        tmp_path, store, outside, same_content):
    content = b"hello" if same_content else b"replaced"
    sid, _ = snapshot_of(tmp_path, store, {"notes.txt": content}, {"notes.txt": 0o777})
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside / "victim.txt", target / "notes.txt")

    with pytest.raises(RestoreError, match=r"notes\.txt: refused: 'notes\.txt' is a symbolic link"):
        restore(store, sid, target)
    assert untouched(outside)  # neither its content nor its mode changed
    assert os.path.islink(target / "notes.txt")


def test_a_hard_link_to_a_file_outside_is_replaced_not_changed(tmp_path, store, outside):
    sid, _ = snapshot_of(tmp_path, store, {"notes.txt": b"hello"}, {"notes.txt": 0o777})
    target = tmp_path / "target"
    target.mkdir()
    os.link(outside / "victim.txt", target / "notes.txt")

    restore(store, sid, target)
    assert untouched(outside)
    assert (target / "notes.txt").read_bytes() == b"hello"
    assert os.stat(target / "notes.txt").st_nlink == 1
    assert stat.S_IMODE(os.stat(target / "notes.txt").st_mode) == 0o777


def test_a_symlink_swapped_in_as_the_final_component_while_the_restore_runs_is_refused(
        tmp_path, store, outside):
    sid, _ = snapshot_of(tmp_path, store, {"big.bin": BIG})
    target = tmp_path / "target"

    def progress(got, total):
        if not os.path.islink(target / "big.bin"):
            os.symlink(outside / "victim.txt", target / "big.bin")

    with pytest.raises(RestoreError, match=r"big\.bin: refused: 'big\.bin' is a symbolic link"):
        restore(store, sid, target, progress=progress)
    assert untouched(outside)
    # the temporary file was removed; only the planted link is there
    assert os.listdir(target) == ["big.bin"]


def test_the_moves_report_names_the_refused_path_and_why(tmp_path, snapshot_store, outside):
    """Through the target side of a move (migrate.Restorer): the restore fails, and the
    report the source reads back says which path and why."""
    harness, store = snapshot_store
    sid, _ = snapshot_of(tmp_path, store, {"a.txt": b"a", "data/x.txt": b"planted"})
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside, target / "data")
    restorer = migrate.Restorer(SimpleNamespace(root_dir=str(target)),
                                HubClient("http://hub/api", "tok-alice", "alice"),
                                SimpleNamespace(store_url=harness.url, kernel_timeout=5), sid)

    report = asyncio.run(restorer.run())
    assert report.state == "failed"
    assert "data/x.txt: refused: 'data' is a symbolic link" in report.error
    assert store.get_report(sid).error == report.error
    assert untouched(outside)


# -- modes and file types --------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o4755, 0o2755, 0o1755, 0o7777])
def test_setuid_setgid_and_sticky_bits_are_not_restored(tmp_path, store, mode):
    sid, manifest = snapshot_of(tmp_path, store, {"tool": b"#!/bin/sh\n", "same": b"same"},
                                {"tool": mode, "same": mode})
    target = tmp_path / "target"
    target.mkdir()
    (target / "same").write_bytes(b"same")  # already right: only its mode is set

    restore(store, sid, target)
    for name in ("tool", "same"):
        assert stat.S_IMODE(os.stat(target / name).st_mode) == mode & 0o777, name


@pytest.mark.parametrize("kind,bits", [("FIFO", stat.S_IFIFO), ("character device", stat.S_IFCHR),
                                       ("block device", stat.S_IFBLK), ("socket", stat.S_IFSOCK),
                                       ("symbolic link", stat.S_IFLNK), ("directory", stat.S_IFDIR)])
def test_device_fifo_and_socket_entries_are_refused(tmp_path, store, outside, kind, bits):
    sid, manifest = snapshot_of(tmp_path, store, {"dev/null0": b"", "a.txt": b"a"})
    bad = crafted(store, manifest, "dev/null0", mode=bits | 0o666)
    with pytest.raises(ManifestError, match=f"dev/null0: a {kind} cannot be restored"):
        Manifest.loads(store.get_manifest(bad))

    # a manifest built in code, not read from JSON, is refused by the restore itself
    entry = manifest.by_path()["dev/null0"]
    forged = Manifest(files=[FileEntry(entry.path, bits | 0o666, entry.size, entry.hash, entry.chunks)])
    target = tmp_path / "target"
    with pytest.raises(ManifestError, match=f"dev/null0: a {kind} cannot be restored"):
        restore_snapshot(forged, store, workspace_dest(str(target)))
    assert not target.exists() or not os.listdir(target)
    assert untouched(outside)


def test_the_snapshot_leaves_out_fifos_and_sockets_and_lists_them(tmp_path, store):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("a")
    os.mkfifo(ws / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(ws / "sock"))
        _, manifest, stats = take_snapshot(ws, store)
    finally:
        sock.close()
    assert [f.path for f in manifest.files] == ["a.txt"]
    assert "pipe: not a regular file (a FIFO)" in stats.warnings
    assert "sock: not a regular file (a socket)" in stats.warnings


# -- paths in the manifest -------------------------------------------------------------

@pytest.mark.parametrize("path,why", [
    ("../outside/victim.txt", "'..' component"), ("a/../../outside/victim.txt", "'..' component"),
    ("..", "'..' component"), ("/tmp/x", "absolute"), ("", "non-empty"), ("a//b", "empty or '.'"),
    ("./a", "empty or '.'"), ("a/", "empty or '.'"), ("a\\b", "backslash"),
])
def test_dotdot_absolute_and_odd_paths_are_refused(tmp_path, snapshot_store, outside, path, why):
    harness, store = snapshot_store
    sid, manifest = snapshot_of(tmp_path, store, {"x.txt": b"planted"})
    bad = crafted(store, manifest, "x.txt", path=path)
    with pytest.raises(ManifestError, match=re.escape(f"bad path {path!r}") + ".*" + re.escape(why)):
        Manifest.loads(store.get_manifest(bad))

    # the same manifest through the target side of a move: refused, named in its report
    target = tmp_path / "target"
    target.mkdir()
    restorer = migrate.Restorer(SimpleNamespace(root_dir=str(target)),
                                HubClient("http://hub/api", "tok-alice", "alice"),
                                SimpleNamespace(store_url=harness.url, kernel_timeout=5), bad)
    report = asyncio.run(restorer.run())
    assert report.state == "failed" and f"bad path {path!r}" in report.error
    assert os.listdir(target) == []
    assert untouched(outside)
