"""Every new workspace gets Cloudhop's example notebooks, once, never over a file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cloudhop.extensions import examples
from cloudhop.extensions.examples import FOLDER, MARKER, copy_examples, offer_examples, shipped

REPO_NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_the_package_ships_the_repositorys_notebooks():
    assert [f.name for f in shipped()] == sorted(p.name for p in REPO_NOTEBOOKS.glob("*.ipynb"))
    assert len(shipped()) >= 3


def test_a_new_workspace_gets_the_examples_once(tmp_path):
    written = copy_examples(tmp_path)
    names = sorted(p.name for p in REPO_NOTEBOOKS.glob("*.ipynb"))
    assert written == [f"{FOLDER}/{n}" for n in names]
    for n in names:
        assert (tmp_path / FOLDER / n).read_bytes() == (REPO_NOTEBOOKS / n).read_bytes()
    assert (tmp_path / MARKER).is_file()
    # the user deletes one: it does not come back at the next start
    (tmp_path / FOLDER / names[0]).unlink()
    assert copy_examples(tmp_path) == []
    assert not (tmp_path / FOLDER / names[0]).exists()


def test_an_existing_file_is_never_overwritten(tmp_path):
    mine = tmp_path / FOLDER / "01-hello-gpu.ipynb"
    mine.parent.mkdir()
    mine.write_text("my own notebook")
    written = copy_examples(tmp_path)
    assert mine.read_text() == "my own notebook"
    assert f"{FOLDER}/01-hello-gpu.ipynb" not in written and len(written) == len(shipped()) - 1


class App:
    def __init__(self, root):
        self.root_dir = str(root)
        self.log = examples.log


def test_a_moves_target_and_an_operator_who_opts_out_get_none(tmp_path, monkeypatch):
    monkeypatch.setenv("CLOUDHOP_RESTORE", "snap-1")
    offer_examples(App(tmp_path))
    assert not (tmp_path / FOLDER).exists() and not (tmp_path / MARKER).exists()
    monkeypatch.delenv("CLOUDHOP_RESTORE")
    monkeypatch.setenv("CLOUDHOP_EXAMPLES", "0")
    offer_examples(App(tmp_path))
    assert not (tmp_path / FOLDER).exists()
    monkeypatch.delenv("CLOUDHOP_EXAMPLES")
    offer_examples(App(tmp_path))
    assert (tmp_path / MARKER).is_file()


def test_a_workspace_that_cannot_take_them_still_starts(tmp_path, caplog):
    (tmp_path / FOLDER).write_text("a file where the folder would go")
    offer_examples(App(tmp_path))  # logged, not raised
    assert "were not copied" in caplog.text


@pytest.mark.e2e
def test_a_new_server_has_the_examples_and_keeps_the_users_changes(hub_factory):
    hub = hub_factory(f"import sys\nc.Spawner.cmd = [{sys.executable!r}, '-m', 'jupyterhub.singleuser']\n")
    hub.spawn("eve", {"provider": "local", "gpu": "none"})
    listing = hub.server_api("GET", "eve", f"api/contents/{FOLDER}")
    assert listing.status_code == 200, listing.text
    assert sorted(f["name"] for f in listing.json()["content"]) == [f.name for f in shipped()]

    first, second = (f"api/contents/{FOLDER}/{f.name}" for f in shipped()[:2])
    r = hub.server_api("PUT", "eve", first, json={"type": "file", "format": "text", "content": "changed"})
    assert r.status_code in (200, 201), r.text
    assert hub.server_api("DELETE", "eve", second).status_code == 204
    hub.stop_server("eve")
    hub.spawn("eve", {"provider": "local", "gpu": "none"})
    r = hub.server_api("GET", "eve", first, params={"format": "text", "type": "file"})
    assert r.json()["content"] == "changed", "a user's file is never overwritten"
    assert hub.server_api("GET", "eve", second).status_code == 404, "a deleted example stays deleted"
