"""The hub's SQLite database in write-ahead-log mode (:mod:`cloudhop.hub.hub_db`): set
once in the file, before JupyterHub opens it; any other database is left alone."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from cloudhop.hub.hub_db import sqlite_file, use_wal
from hubfixture import HubProcess


def journal_mode(path) -> str:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        db.close()


def test_only_a_local_sqlite_file_is_switched(tmp_path):
    assert sqlite_file(f"sqlite:///{tmp_path}/a.sqlite") == f"{tmp_path}/a.sqlite"
    for url in ("sqlite://", "sqlite:///:memory:", "postgresql://u:p@db/hub", "mysql+pymysql://db/hub",
                "sqlite:///file:hub?mode=memory&uri=true", "not a url"):
        assert sqlite_file(url) is None, url
        assert use_wal(url) is False


def test_a_database_kept_in_its_file_stays_in_wal_mode(tmp_path):
    path = tmp_path / "jupyterhub.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (name TEXT)")
    db.execute("INSERT INTO users VALUES ('ada')")
    db.commit()
    db.close()
    assert journal_mode(path) == "delete"
    assert use_wal(f"sqlite:///{path}") is True
    assert journal_mode(path) == "wal", "the mode is kept in the file: every later connection has it"
    assert sqlite3.connect(path).execute("SELECT name FROM users").fetchall() == [("ada",)]
    assert use_wal(f"sqlite:///{path}") is True, "and setting it again changes nothing"


def test_a_database_that_cannot_be_switched_is_left_as_it_was(tmp_path, caplog):
    folder = tmp_path / "missing"  # SQLite cannot make a file in a folder that is not there
    log = logging.getLogger("test-hub-db")
    with caplog.at_level(logging.WARNING, logger="test-hub-db"):
        assert use_wal(f"sqlite:///{folder}/jupyterhub.sqlite", log) is False
    assert "stays in its journal mode" in caplog.text and not folder.exists()


@pytest.mark.e2e
def test_cloudhop_up_runs_its_database_in_wal_mode(tmp_path):
    hub = HubProcess(tmp_path).start()
    try:
        hub.ensure_user("ada")
        assert journal_mode(hub.data_dir / "jupyterhub.sqlite") == "wal"
        assert hub.api("GET", "/users/ada").json()["name"] == "ada"
    finally:
        hub.stop()


def test_the_hubs_connections_sync_at_checkpoints_and_no_others(tmp_path):
    import sqlalchemy as sa

    from cloudhop.hub.hub_db import sync_at_checkpoints

    hub_file, other = tmp_path / "jupyterhub.sqlite", tmp_path / "other.sqlite"
    assert use_wal(f"sqlite:///{hub_file}") and use_wal(f"sqlite:///{other}")
    assert sync_at_checkpoints(f"sqlite:///{hub_file}")
    for path, level in ((hub_file, 1), (other, 2)):  # NORMAL for the hub's, FULL (the default) for another
        engine = sa.create_engine(f"sqlite:///{path}")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == level, path
        engine.dispose()
    journal = tmp_path / "journal.sqlite"  # a file not in WAL mode keeps FULL, even if named
    sqlite3.connect(journal).close()
    assert sync_at_checkpoints(f"sqlite:///{journal}")
    engine = sa.create_engine(f"sqlite:///{journal}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
    engine.dispose()
