"""The hub id every node is tagged with is random and kept: two hubs with their own data
folders get different ids, a restart keeps its id, and the spawner's own default (a hub
that sets none) is kept beside the hub's cookie secret, never derived from a folder."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from types import SimpleNamespace

import pytest
from traitlets.config.loader import PyFileConfigLoader

from cloudhop.hub import datadir
from cloudhop.hub.up import EMBEDDED_CONFIG
from cloudhop.spawner.hubid import HUB_ID_FILE, default_hub_id, hub_id_in, kept_secret
from cloudhop.spawner.spawner import CloudhopSpawner

ID = re.compile(r"^hub-[0-9a-f]{10}$")


def embedded(folder, monkeypatch):
    folder.mkdir(exist_ok=True)
    monkeypatch.setenv("CLOUDHOP_DATA_DIR", str(folder))
    monkeypatch.delenv("CLOUDHOP_EXTRA_CONFIG", raising=False)
    monkeypatch.delenv("CLOUDHOP_CULL_IDLE", raising=False)
    return PyFileConfigLoader(EMBEDDED_CONFIG.name, path=str(EMBEDDED_CONFIG.parent)).load_config()


def reaper_hub_id(c) -> str:
    reaper = {s["name"]: s for s in c.JupyterHub.services}["cloudhop-reaper"]
    return json.loads(reaper["environment"]["CLOUDHOP_REAPER_SETTINGS"])["hub_id"]


def test_two_data_folders_get_different_ids_and_a_restart_keeps_its_own(tmp_path, monkeypatch):
    a = embedded(tmp_path / "a", monkeypatch)
    b = embedded(tmp_path / "b", monkeypatch)
    a_again = embedded(tmp_path / "a", monkeypatch)
    assert ID.match(a.CloudhopSpawner.hub_id) and ID.match(b.CloudhopSpawner.hub_id)
    assert a.CloudhopSpawner.hub_id != b.CloudhopSpawner.hub_id
    assert a_again.CloudhopSpawner.hub_id == a.CloudhopSpawner.hub_id
    # the reaper sweeps for exactly the id the spawner tags nodes with
    assert reaper_hub_id(a) == a.CloudhopSpawner.hub_id and reaper_hub_id(b) == b.CloudhopSpawner.hub_id
    assert stat.S_IMODE((tmp_path / "a" / "hub_id").stat().st_mode) == 0o600


def test_an_operators_hub_id_wins_everywhere(tmp_path, monkeypatch):
    (tmp_path / "extra.py").write_text('c.CloudhopSpawner.hub_id = "hub-site-7"\n')
    monkeypatch.setenv("CLOUDHOP_EXTRA_CONFIG", str(tmp_path / "extra.py"))
    folder = tmp_path / "d"
    folder.mkdir()
    monkeypatch.setenv("CLOUDHOP_DATA_DIR", str(folder))
    c = PyFileConfigLoader(EMBEDDED_CONFIG.name, path=str(EMBEDDED_CONFIG.parent)).load_config()
    assert c.CloudhopSpawner.hub_id == reaper_hub_id(c) == "hub-site-7"


def test_an_id_an_older_version_kept_is_still_read(tmp_path):
    (tmp_path / "hub_id").write_text("Ab_9xYz-\n")
    assert datadir.hub_id(tmp_path) == "hub-ab-9xyz-"


def test_a_kept_secret_is_made_once(tmp_path):
    made = []

    def make():
        made.append(1)
        return f"value-{len(made)}"

    assert kept_secret(tmp_path / "s", make) == kept_secret(tmp_path / "s", make) == "value-1"
    assert made == [1] and stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["s"], "no temporary file is left behind"


def spawner(**kw) -> CloudhopSpawner:
    return CloudhopSpawner(user=SimpleNamespace(name="ada", url="/user/ada/", escaped_name="ada"), **kw)


@pytest.fixture
def running_hub():
    """A JupyterHub app instance in this process (as in the hub), cleared afterwards."""
    from jupyterhub.app import JupyterHub

    def make(secret_file):
        JupyterHub.clear_instance()
        return JupyterHub.instance(cookie_secret_file=str(secret_file))

    yield make
    JupyterHub.clear_instance()


def test_the_spawners_default_is_kept_beside_the_cookie_secret(tmp_path, running_hub):
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    running_hub(tmp_path / "one" / "jupyterhub_cookie_secret")
    first = spawner().hub_id
    assert ID.match(first) and first == hub_id_in(tmp_path / "one" / HUB_ID_FILE)
    assert stat.S_IMODE((tmp_path / "one" / HUB_ID_FILE).stat().st_mode) == 0o600
    assert spawner().hub_id == first, "every server of the hub carries the same id"
    running_hub(tmp_path / "two" / "jupyterhub_cookie_secret")
    assert spawner().hub_id not in (first, "")
    running_hub(tmp_path / "one" / "jupyterhub_cookie_secret")  # a restart
    assert spawner().hub_id == first


def test_the_spawners_default_is_not_derived_from_the_working_folder(tmp_path, monkeypatch):
    from jupyterhub.app import JupyterHub

    JupyterHub.clear_instance()
    monkeypatch.chdir(tmp_path)
    here = spawner().hub_id
    assert here != "hub-" + hashlib.sha1(os.getcwd().encode()).hexdigest()[:10]
    assert ID.match(here) and here == default_hub_id()
    assert not (tmp_path / HUB_ID_FILE).exists(), "no hub here: nothing is written to the working folder"
    assert spawner(hub_id="hub-set").hub_id == "hub-set"
