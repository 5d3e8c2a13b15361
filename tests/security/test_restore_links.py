"""Attacks on a restore through the link and folder entries a snapshot now holds (a
virtualenv's ``bin/python -> /usr/bin/python3``, ``node_modules/.bin`` links, a git
repository's empty folders): a restore makes links and never writes through one, makes
folders and never re-modes something outside through a link, and refuses entries that
would make it do otherwise. Each builds a real snapshot and stores it in the real store
service; docs/security.md ("Restores") lists the promises."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from types import SimpleNamespace

import pytest
from restore_victim import untouched

from cloudhop.extensions import migrate
from cloudhop.extensions.hubclient import HubClient
from cloudhop.extensions.snapshot import FileEntry, Manifest, ManifestError, RestoreError, restore_snapshot, take_snapshot
from cloudhop.extensions.snapshot.manifest import check_mode
from cloudhop.extensions.snapshot.snapshot import workspace_dest


def linked_workspace(tmp_path, store):
    """A workspace with a file, an absolute and a relative link and an empty folder,
    snapshotted; returns ``(snapshot id, manifest)``."""
    ws = tmp_path / "source"
    (ws / "lib").mkdir(parents=True)
    (ws / "lib" / "tool.js").write_text("run()")
    (ws / "bin").mkdir()
    os.symlink("/usr/bin/env", ws / "bin" / "env")
    os.symlink("../lib/tool.js", ws / "bin" / "tool")
    (ws / "empty").mkdir(mode=0o750)
    os.chmod(ws / "empty", 0o750)
    sid, manifest, _ = take_snapshot(ws, store)
    return sid, manifest


def store_json(store, manifest: Manifest, change) -> str:
    """Store ``manifest`` after ``change(body)`` edited its JSON, as a user with a store
    token could (the store checks chunks, not paths, kinds or links); returns the id."""
    body = manifest.to_json()
    change(body)
    return store.put_manifest(json.dumps(body).encode())


def entry(body, path):
    return next(f for f in body["files"] if f["path"] == path)


def restore(store, sid, target):
    return restore_snapshot(Manifest.loads(store.get_manifest(sid)), store, workspace_dest(str(target)))


def test_links_and_empty_folders_come_back_as_they_were(tmp_path, store):
    sid, manifest = linked_workspace(tmp_path, store)
    target = tmp_path / "target"
    done = restore(store, sid, target)
    assert os.readlink(target / "bin" / "env") == "/usr/bin/env"
    assert os.readlink(target / "bin" / "tool") == "../lib/tool.js"
    assert (target / "bin" / "tool").read_text() == "run()"
    assert (target / "empty").is_dir() and stat.S_IMODE(os.stat(target / "empty").st_mode) == 0o750
    assert done == {f.path: f.hash for f in manifest.files}


def test_an_older_reader_refuses_link_and_folder_entries_instead_of_writing_files(tmp_path, store):
    """A target with a Cloudhop that knows regular files only checks each mode with
    check_mode; links and folders carry their file type there, so it refuses them."""
    _, manifest = linked_workspace(tmp_path, store)
    for e in manifest.files:
        if e.kind != "file":
            with pytest.raises(ManifestError, match="cannot be restored"):
                check_mode(e.path, e.mode)


@pytest.mark.parametrize("target,why", [
    ("../../outside/victim.txt", "leads out of the workspace"), ("../..", "leads out of the workspace"),
    ("a/../../..", "leads out of the workspace"), ("", "non-empty string"), ("x\x00y", "NUL"),
    ("x" * 5000, "over 4095 bytes"),
])
def test_a_link_entry_whose_target_leaves_the_workspace_is_refused(tmp_path, snapshot_store, outside, target, why):
    harness, store = snapshot_store
    sid, manifest = linked_workspace(tmp_path, store)

    def change(body):
        entry(body, "bin/tool")["link"] = target

    bad = store_json(store, manifest, change)
    with pytest.raises(ManifestError, match=f"bin/tool: .*{why}"):
        Manifest.loads(store.get_manifest(bad))
    # through the target side of a move: refused before anything is written
    ws = tmp_path / "target"
    ws.mkdir()
    restorer = migrate.Restorer(SimpleNamespace(root_dir=str(ws)), HubClient("http://hub/api", "tok-alice", "alice"),
                                SimpleNamespace(store_url=harness.url, kernel_timeout=5), bad)
    report = asyncio.run(restorer.run())
    assert report.state == "failed" and "bin/tool" in report.error
    assert os.listdir(ws) == [] and untouched(outside)


def test_an_entry_below_a_link_entry_is_refused_before_anything_is_written(tmp_path, store, outside):
    """A link ``data -> <outside>`` and a file ``data/victim.txt``: made in that order, the
    file would be written through the link."""
    ws = tmp_path / "source"
    (ws / "data").mkdir(parents=True)
    (ws / "data" / "victim.txt").write_text("planted")
    (ws / "a.txt").write_text("a")
    sid, manifest = take_snapshot(ws, store)[:2]
    link = FileEntry.symlink("data", str(outside))
    forged = Manifest(files=[link, *manifest.files])

    def change(body):
        body["files"].insert(0, link.to_json())

    bad = store_json(store, manifest, change)
    with pytest.raises(ManifestError, match="data/victim.txt: it lies below the link 'data'"):
        Manifest.loads(store.get_manifest(bad))
    target = tmp_path / "target"
    with pytest.raises(ManifestError, match="data/victim.txt: it lies below the link 'data'"):
        restore_snapshot(forged, store, workspace_dest(str(target)))
    assert not target.exists() and untouched(outside)


def test_a_link_entry_replaces_a_planted_link_without_writing_through_it(tmp_path, store, outside):
    sid, _ = linked_workspace(tmp_path, store)
    target = tmp_path / "target"
    (target / "bin").mkdir(parents=True)
    os.symlink(outside / "victim.txt", target / "bin" / "tool")
    (target / "bin" / "env").write_text("a file where the link goes")

    restore(store, sid, target)
    assert os.readlink(target / "bin" / "tool") == "../lib/tool.js"
    assert os.readlink(target / "bin" / "env") == "/usr/bin/env"
    assert untouched(outside)


def test_a_link_entry_where_the_target_has_a_folder_is_refused_and_the_folder_kept(tmp_path, store):
    sid, _ = linked_workspace(tmp_path, store)
    target = tmp_path / "target"
    (target / "bin" / "tool").mkdir(parents=True)
    (target / "bin" / "tool" / "keep.txt").write_text("mine")
    with pytest.raises(RestoreError, match="bin/tool: refused: 'bin/tool' is a directory in the target"):
        restore(store, sid, target)
    assert (target / "bin" / "tool" / "keep.txt").read_text() == "mine"


def test_a_link_on_the_way_to_a_link_entry_is_refused(tmp_path, store, outside):
    sid, _ = linked_workspace(tmp_path, store)
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside, target / "bin")
    with pytest.raises(RestoreError, match="refused: 'bin' is a symbolic link"):
        restore(store, sid, target)
    assert untouched(outside)


def test_a_folder_entry_on_a_planted_link_is_refused_and_nothing_outside_is_re_moded(tmp_path, store, outside):
    """``empty`` (mode 0750) where the target has ``empty -> <outside>``: following the
    link would change the outside folder's mode."""
    sid, _ = linked_workspace(tmp_path, store)
    target = tmp_path / "target"
    target.mkdir()
    os.symlink(outside, target / "empty")
    with pytest.raises(RestoreError, match="empty: refused: 'empty' is a symbolic link"):
        restore(store, sid, target)
    assert untouched(outside)


def _with_content(body):
    """The link entry gets the chunks of a file (chunks the store has)."""
    entry(body, "bin/tool").update(size=5, chunks=entry(body, "lib/tool.js")["chunks"])


@pytest.mark.parametrize("change,why", [
    (lambda body: entry(body, "bin/tool").update(hash="0" * 64), "the hash of a link entry does not match it"),
    (lambda body: entry(body, "bin/tool").update(mode=0o777), "a link entry needs the mode of a symbolic link"),
    (lambda body: entry(body, "bin/tool").update(kind="socket"), "unknown entry kind 'socket'"),
    (lambda body: (entry(body, "bin/tool").update(kind="file"), entry(body, "bin/tool").pop("link")),
     "a symbolic link cannot be restored"),
    (_with_content, "a link entry has no content"),
])
def test_a_forged_link_entry_is_refused(tmp_path, store, outside, change, why):
    sid, manifest = linked_workspace(tmp_path, store)
    bad = store_json(store, manifest, change)
    with pytest.raises(ManifestError, match=f"bin/tool: {why}"):
        Manifest.loads(store.get_manifest(bad))


def test_a_folder_entry_with_content_or_a_file_mode_is_refused(tmp_path, store):
    sid, manifest = linked_workspace(tmp_path, store)
    bad = store_json(store, manifest, lambda body: entry(body, "empty").update(mode=0o644))
    with pytest.raises(ManifestError, match="empty: a dir entry needs the mode of a directory"):
        Manifest.loads(store.get_manifest(bad))
    bad = store_json(store, manifest, lambda body: entry(body, "empty").update(link="/etc"))
    with pytest.raises(ManifestError, match="empty: only a link entry has a link target"):
        Manifest.loads(store.get_manifest(bad))
