"""Fixtures the restore attacks share: the store, and a folder outside every workspace
holding one file an attacker wants changed (see :func:`restore_victim.untouched`)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def store(snapshot_store):
    return snapshot_store[1]


@pytest.fixture
def outside(tmp_path):
    """A folder outside every workspace, holding one file an attacker wants changed."""
    d = tmp_path / "outside"
    d.mkdir()
    os.chmod(d, 0o755)
    (d / "victim.txt").write_text("hello")
    os.chmod(d / "victim.txt", 0o644)
    return d
