"""`cloudhop up`'s data folder is its user's alone: the folder mode 0700, its secrets,
database, hub id and kept ports 0600 - in a fresh folder, in one an older version left
open, and in a real hub's folder after it ran. A folder of another user is refused.
See docs/security.md (Local provider isolation)."""

from __future__ import annotations

import os
import stat

import pytest
from traitlets.config.loader import PyFileConfigLoader

from cloudhop.hub import datadir
from cloudhop.hub.up import EMBEDDED_CONFIG
from ownports_hub import OwnPortsHub


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def assert_private(folder) -> None:
    assert mode(folder) == 0o700, oct(mode(folder))
    for name in datadir.PRIVATE_FILES:
        assert (folder / name).is_file(), f"{name} was not made"
        assert mode(folder / name) == 0o600, f"{name}: {oct(mode(folder / name))}"


def test_a_fresh_folder_is_private(tmp_path, monkeypatch):
    folder = datadir.prepare(tmp_path / "new" / "data")
    monkeypatch.setenv("CLOUDHOP_DATA_DIR", str(folder))
    monkeypatch.delenv("CLOUDHOP_EXTRA_CONFIG", raising=False)
    PyFileConfigLoader(EMBEDDED_CONFIG.name, path=str(EMBEDDED_CONFIG.parent)).load_config()
    (folder / "jupyterhub_cookie_secret").touch(0o600)  # JupyterHub makes it 0600 itself
    assert_private(folder)


def test_an_open_folder_from_before_is_closed(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    for name in datadir.PRIVATE_FILES:
        (folder / name).write_text("8081\n" if name.endswith("port") else "x\n")
        (folder / name).chmod(0o644)
    datadir.prepare(folder)
    assert_private(folder)


def test_a_folder_of_another_user_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "getuid", lambda: os.stat(tmp_path).st_uid + 1)
    with pytest.raises(datadir.DataDirError, match="another user"):
        datadir.prepare(tmp_path)


@pytest.mark.e2e
def test_a_real_hubs_folder_is_private(tmp_path):
    hub = OwnPortsHub(tmp_path)
    try:
        hub.start()
        assert hub.api("GET", "/users").status_code == 200  # the database is in use
    finally:
        hub.stop()
    assert (hub.data_dir / datadir.DATABASE).stat().st_size > 0
    assert_private(hub.data_dir)
    journals = [p for p in hub.data_dir.iterdir() if p.name.startswith(datadir.DATABASE + "-")]
    assert all(mode(p) == 0o600 for p in journals), journals
