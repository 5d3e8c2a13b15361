"""The hub's own database: a SQLite file runs with write-ahead logging.

JupyterHub commits on the hub's event loop, a dozen times or so for each user who logs
in, starts and stops a server, and every other request waits meanwhile. In SQLite's
default rollback-journal mode each commit syncs the journal, the database and the folder
(about 9 ms each on this kind of disk, far more when other work fills it). With
write-ahead logging (:func:`use_wal`, kept in the file, so set once before JupyterHub
opens it) a commit appends to one log, and readers never wait for a writer; with
``synchronous=NORMAL`` on the hub's connections (:func:`sync_at_checkpoints`, SQLite's
recommended level for this mode and the level the spend ledger uses) that log is synced
when it is copied into the database, not at each commit. A commit then survives the
hub's crash or kill as before; what a power cut or a crash of the machine itself can
take is the last commits before it, never the database's consistency (a server whose
state is lost so runs on until the reaper stops it as unowned). A database that is not
a local SQLite file is left as it is.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url


def sqlite_file(db_url: str) -> str | None:
    """The path of the SQLite file ``db_url`` names; None for another database, an
    in-memory one or a ``file:`` URI."""
    try:
        url = make_url(db_url)
    except Exception:  # noqa: BLE001 - JupyterHub reports a bad URL itself
        return None
    path = url.database
    if url.get_backend_name() != "sqlite" or not path or path == ":memory:" or path.startswith("file:"):
        return None
    return path


def use_wal(db_url: str, log=None) -> bool:
    """Put the SQLite database at ``db_url`` in write-ahead-log mode (made if it does not
    exist). Returns whether it is in that mode; a failure is logged and leaves the
    database as it was (JupyterHub then runs as it would have)."""
    path = sqlite_file(db_url)
    if path is None:
        return False
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    except sqlite3.Error as err:
        if log is not None:
            log.warning("The hub's database %s stays in its journal mode: %s", path, err)
        return False
    if mode != "wal" and log is not None:
        log.warning("The hub's database %s stays in journal mode %s (write-ahead logging refused)", path, mode)
    return mode == "wal"


def _file_of(conn: sqlite3.Connection) -> str | None:
    for _seq, name, path in conn.execute("PRAGMA database_list").fetchall():
        if name == "main":
            return os.path.realpath(path) if path else None
    return None


def sync_at_checkpoints(db_url: str) -> bool:
    """Give every connection this process opens to the SQLite file at ``db_url``
    ``synchronous=NORMAL`` (a listener on SQLAlchemy's engines, before JupyterHub opens
    it: the level is a connection's, not the file's). Only while the file is in WAL mode:
    in rollback-journal mode that level could corrupt it in a power cut. Returns whether
    the listener was added."""
    path = sqlite_file(db_url)
    if path is None:
        return False
    target = os.path.realpath(path)

    def on_connect(conn, _record) -> None:
        if not isinstance(conn, sqlite3.Connection) or _file_of(conn) != target:
            return
        if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            conn.execute("PRAGMA synchronous=NORMAL")

    event.listen(Engine, "connect", on_connect)
    return True
