"""The spend ledger: every node's running time, priced, in one SQLite database.

Each node a server owns (its notebook node and each Ray worker, on any provider) is one
*interval*: opened when the node is recorded in the server's state, priced then at its
offer's on-demand or spot price (USD/hour), closed when the node leaves the state (a
stop, a Ray scale-down) or when the reaper terminates it. An interval that is open costs
up to now, so spend grows while a node runs; a hub that is killed leaves its intervals
open in the database, and the restarted hub's servers keep them (their nodes are still
in their state). :mod:`.spend` keeps a server's intervals in line with its state.

The ledger is what ``Policy.spend`` counts by default (:mod:`.policy`), and what the
hub's usage API, the Home page and the budget watcher read. It also keeps the budgets
an admin set at runtime (they override ``c.Policy.groups``'s ``usd``) and the notices
the budget watcher leaves for a user (why a server was stopped).

``c.CloudhopLedger.path`` names the database; ``cloudhop up`` puts it in its data folder
(``ledger.sqlite``, mode 0600). Without a path (a spawner built outside ``cloudhop
up``, a unit test), the ledger is kept in memory, one per config, and lost when the
process ends.

Every call is synchronous and short: the database is in WAL mode with ``synchronous
= NORMAL`` (a committed write survives the process being killed; it costs no fsync),
and each query reads through an index on the user, the group or the open node.
``benchmarks/ledger.py`` measures a spawn's reads and writes against a ledger of
10,000 closed intervals and 1,000 users (well under a millisecond each), which is why
they run on the hub's event loop. A ledger that cannot be written raises
:class:`LedgerError`; the spawner then refuses new servers rather than run uncounted.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from collections.abc import Iterable

from traitlets import Unicode
from traitlets.config import Configurable

SCHEMA = """
CREATE TABLE IF NOT EXISTS intervals (
    id INTEGER PRIMARY KEY,
    provider TEXT NOT NULL, node TEXT NOT NULL,
    user TEXT NOT NULL, server TEXT NOT NULL, role TEXT NOT NULL,
    region TEXT, offer TEXT, usd_hour REAL NOT NULL,
    t0 REAL NOT NULL, t1 REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS open_node ON intervals(provider, node) WHERE t1 IS NULL;
CREATE INDEX IF NOT EXISTS by_user ON intervals(user, t1);
CREATE TABLE IF NOT EXISTS interval_groups (
    grp TEXT NOT NULL, interval INTEGER NOT NULL, PRIMARY KEY (grp, interval)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS budgets (
    grp TEXT PRIMARY KEY, usd REAL NOT NULL, set_by TEXT, set_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS notices (
    id INTEGER PRIMARY KEY, user TEXT NOT NULL, server TEXT NOT NULL,
    kind TEXT NOT NULL, message TEXT NOT NULL, at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS notices_by_user ON notices(user, at);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, at REAL NOT NULL);
"""

#: spend of the intervals a WHERE clause selects, from ``?1`` (since) to ``?2`` (now)
_SPEND = ("SELECT COALESCE(SUM(i.usd_hour * (MIN(COALESCE(i.t1, ?2), ?2) - MAX(i.t0, ?1))), 0) / 3600.0 "
          "FROM intervals i {join} WHERE (i.t1 IS NULL OR i.t1 > ?1) AND i.t0 < ?2 AND {where}")


class LedgerError(Exception):
    """The ledger's database cannot be read or written; the message says which file and why."""


@dataclass(frozen=True)
class Interval:
    """One node's time: ``t0``/``t1`` in epoch seconds (``t1`` None while open)."""

    provider: str
    node: str
    user: str
    server: str
    role: str
    region: str | None
    offer: str | None
    usd_hour: float
    t0: float
    t1: float | None = None

    def usd(self, since: float, now: float) -> float:
        end = min(self.t1 if self.t1 is not None else now, now)
        return max(0.0, end - max(self.t0, since)) * self.usd_hour / 3600.0


@dataclass(frozen=True)
class Wanted:
    """A node a server owns now, as :meth:`Ledger.sync_server` takes it."""

    provider: str
    node: str
    role: str
    region: str | None
    offer: str | None
    usd_hour: float
    t0: float


def epoch(when) -> float:
    """Epoch seconds of a UTC datetime or ISO 8601 text (naive ones are read as UTC) or a number."""
    if isinstance(when, str):
        when = datetime.datetime.fromisoformat(when.replace("Z", "+00:00"))
    if isinstance(when, datetime.datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        return when.timestamp()
    return float(when)


class Ledger:
    """One ledger database (a file, or ``":memory:"``). Thread-safe: one connection
    behind a lock."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    # -- connection ---------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                if self.path != ":memory:":
                    _touch_private(self.path)
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=2.0)
                if self.path != ":memory:":
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(SCHEMA)
            except (OSError, sqlite3.Error) as err:
                raise LedgerError(f"the spend ledger {self.path} cannot be opened: {err}") from None
            self._db = db
        return self._db

    def _run(self, fn, *, write: bool):
        with self._lock:
            try:
                db = self._conn()
                if not write:
                    return fn(db)
                db.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(db)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                return out
            except sqlite3.Error as err:
                what = "written" if write else "read"
                raise LedgerError(f"the spend ledger {self.path} cannot be {what}: {err}") from None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- writes ---------------------------------------------------------------------

    def check_writable(self) -> None:
        """Raise :class:`LedgerError` unless a write reaches the database now."""
        self._run(lambda db: db.execute("INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?)", (time.time(),)),
                  write=True)

    def sync_server(self, user: str, server: str, groups: Iterable[str], wanted: Iterable[Wanted],
                    now: float | None = None) -> tuple[int, int]:
        """Make the open intervals of ``user``'s server ``server`` be exactly ``wanted``:
        close the others (at ``now``), open the missing ones (counted for ``groups``).
        Returns (opened, closed)."""
        now = time.time() if now is None else now
        wanted = {(w.provider, w.node): w for w in wanted}
        groups = sorted(set(groups))

        def change(db):
            rows = db.execute("SELECT id, provider, node FROM intervals WHERE user = ? AND server = ? AND t1 IS NULL",
                              (user, server)).fetchall()
            have = {(p, n) for _, p, n in rows}
            gone = [(now, i) for i, p, n in rows if (p, n) not in wanted]
            db.executemany("UPDATE intervals SET t1 = MAX(t0, ?) WHERE id = ?", gone)
            opened = 0
            for key, w in wanted.items():
                if key in have:
                    continue
                cur = db.execute(
                    "INSERT OR IGNORE INTO intervals (provider, node, user, server, role, region, offer, usd_hour, t0) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (w.provider, w.node, user, server, w.role, w.region, w.offer, float(w.usd_hour), min(w.t0, now)))
                if cur.rowcount:
                    opened += 1
                    db.executemany("INSERT OR IGNORE INTO interval_groups (grp, interval) VALUES (?, ?)",
                                   [(g, cur.lastrowid) for g in groups])
            return opened, len(gone)

        # nothing to open: a read first spares a write lock when nothing is open either
        if not wanted and not self._run(lambda db: db.execute(
                "SELECT 1 FROM intervals WHERE user = ? AND server = ? AND t1 IS NULL LIMIT 1",
                (user, server)).fetchone(), write=False):
            return 0, 0
        return self._run(change, write=True)

    def close_node(self, provider: str, node: str, now: float | None = None) -> bool:
        """Close the open interval of one node (the reaper terminated it). True if one was open."""
        now = time.time() if now is None else now
        return bool(self._run(lambda db: db.execute(
            "UPDATE intervals SET t1 = MAX(t0, ?) WHERE provider = ? AND node = ? AND t1 IS NULL",
            (now, provider, node)).rowcount, write=True))

    def set_budget(self, group: str, usd: float, by: str | None = None) -> None:
        """An admin's budget for ``group`` (USD per period), overriding the config's."""
        self._run(lambda db: db.execute(
            "INSERT OR REPLACE INTO budgets (grp, usd, set_by, set_at) VALUES (?, ?, ?, ?)",
            (group, float(usd), by, time.time())), write=True)

    def add_notice(self, user: str, server: str, kind: str, message: str, now: float | None = None) -> None:
        self._run(lambda db: db.execute(
            "INSERT INTO notices (user, server, kind, message, at) VALUES (?, ?, ?, ?, ?)",
            (user, server, kind, message, time.time() if now is None else now)), write=True)

    # -- reads ----------------------------------------------------------------------

    def spent(self, *, since, user: str | None = None, group: str | None = None,
              now: float | None = None) -> float:
        """USD spent from ``since`` to ``now`` by ``user``'s nodes, or by the nodes
        counted for ``group`` (exactly one of the two)."""
        if (user is None) == (group is None):
            raise ValueError("spent() takes a user or a group")
        now = time.time() if now is None else now
        if user is not None:
            sql, arg = _SPEND.format(join="", where="i.user = ?3"), user
        else:
            sql = _SPEND.format(join="JOIN interval_groups g ON g.interval = i.id", where="g.grp = ?3")
            arg = group
        return float(self._run(lambda db: db.execute(sql, (epoch(since), now, arg)).fetchone()[0], write=False))

    def by_server(self, user: str, *, since, now: float | None = None) -> dict[str, float]:
        """USD per server name of ``user`` from ``since`` to ``now``."""
        now = time.time() if now is None else now
        sql = _SPEND.format(join="", where="i.user = ?3").replace("SELECT ", "SELECT i.server, ", 1) + " GROUP BY i.server"
        rows = self._run(lambda db: db.execute(sql, (epoch(since), now, user)).fetchall(), write=False)
        return {server: float(usd) for server, usd in rows}

    def by_user(self, *, since, now: float | None = None) -> dict[str, float]:
        """USD per user from ``since`` to ``now``."""
        now = time.time() if now is None else now
        sql = _SPEND.format(join="", where="1").replace("SELECT ", "SELECT i.user, ", 1) + " GROUP BY i.user"
        rows = self._run(lambda db: db.execute(sql, (epoch(since), now)).fetchall(), write=False)
        return {user: float(usd) for user, usd in rows}

    def users_of_group(self, group: str, *, since, now: float | None = None) -> dict[str, float]:
        """USD per user of the intervals counted for ``group`` from ``since`` to ``now``."""
        now = time.time() if now is None else now
        sql = (_SPEND.format(join="JOIN interval_groups g ON g.interval = i.id", where="g.grp = ?3")
               .replace("SELECT ", "SELECT i.user, ", 1) + " GROUP BY i.user")
        rows = self._run(lambda db: db.execute(sql, (epoch(since), now, group)).fetchall(), write=False)
        return {user: float(usd) for user, usd in rows}

    def intervals(self, *, user: str | None = None, server: str | None = None,
                  open_only: bool = False, since=None) -> list[Interval]:
        """The intervals of ``user`` (and ``server``), those open or ending after ``since``."""
        where, args = ["1"], []
        if user is not None:
            where.append("user = ?")
            args.append(user)
        if server is not None:
            where.append("server = ?")
            args.append(server)
        if open_only:
            where.append("t1 IS NULL")
        elif since is not None:
            where.append("(t1 IS NULL OR t1 > ?)")
            args.append(epoch(since))
        sql = ("SELECT provider, node, user, server, role, region, offer, usd_hour, t0, t1 FROM intervals WHERE "
               + " AND ".join(where) + " ORDER BY t0")
        return [Interval(*row) for row in self._run(lambda db: db.execute(sql, args).fetchall(), write=False)]

    def budgets(self) -> dict[str, float]:
        """The budgets admins set at runtime: group -> USD."""
        return dict(self._run(lambda db: db.execute("SELECT grp, usd FROM budgets").fetchall(), write=False))

    def notices(self, user: str, *, since=None) -> list[dict]:
        """The notices left for ``user`` (newest first), those after ``since`` if given."""
        rows = self._run(lambda db: db.execute(
            "SELECT server, kind, message, at FROM notices WHERE user = ? AND at >= ? ORDER BY at DESC LIMIT 20",
            (user, epoch(since) if since is not None else 0.0)).fetchall(), write=False)
        return [{"server": s, "kind": k, "message": m, "at": a} for s, k, m, a in rows]


def _touch_private(path: str) -> None:
    """Create the database file with mode 0600 if it does not exist (SQLite's journals
    take the database's mode)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


class CloudhopLedger(Configurable):
    """Where the spend ledger is kept (``c.CloudhopLedger.path``)."""

    path = Unicode(
        "",
        help="""SQLite file of the spend ledger (every node's priced running time, the
        budgets admins set at runtime). `cloudhop up` keeps it in its data folder as
        ledger.sqlite. Empty: in memory, lost when the hub stops (for tests).""",
    ).tag(config=True)


_LEDGERS: dict = {}
_LEDGERS_LOCK = threading.Lock()


def ledger_for(config) -> Ledger:
    """The process's ledger for a traitlets ``config``: one per file (every spawner,
    policy and API of the hub shares it), or one in memory per config without a path."""
    path = CloudhopLedger(config=config).path
    key = os.path.abspath(path) if path else ("memory", id(config))
    with _LEDGERS_LOCK:
        if key not in _LEDGERS:
            _LEDGERS[key] = Ledger(key if path else ":memory:")
            if not path:
                _LEDGERS[key]._config = config  # keeps id(config) from being reused while cached
        return _LEDGERS[key]
