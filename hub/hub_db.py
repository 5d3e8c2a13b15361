"""The hub's own database: a SQLite file is switched to write-ahead logging.

JupyterHub commits on the hub's event loop, a dozen times or so for each user who logs
in, starts and stops a server. In SQLite's default rollback-journal mode each commit
syncs the journal, the database and the folder (about 9 ms each on this kind of disk),
and every other request waits meanwhile; with write-ahead logging a commit appends to one
log and syncs it once (about 2 ms), and readers never wait for a writer. The setting is
kept in the file, so it is made once, before JupyterHub opens the database; SQLite's
default ``synchronous`` level stays, so a committed transaction survives a power cut as
before. A database that is not a local SQLite file is left as it is.
"""

from __future__ import annotations

import contextlib
import sqlite3

from sqlalchemy.engine import make_url


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
