"""The hub's record of each move: its source, its target, how far it got and when.

A move's source server asks the hub for the move's token (:mod:`.tokens_api`); the hub
opens the move's record then, and the source reports each phase as it enters it, before
it acts in that phase. The records live in one JSON file in the hub's data folder
(``moves.json``, mode 0600), written to a new file and renamed over the old one before
the hub answers, so a hub or server killed at any moment leaves records that say how
far each move got. :mod:`.move_reconciler` reads them through the hub's API and stops
what a move cut off left behind.

A record::

    {"id": "3f2a...", "user": "ada", "source": "", "target": "site-b-1a2b3c",
     "phase": "restoring", "timeline": {"snapshotting": 1718000000.1, "launching": ...},
     "updated": 1718000004.2, "expires_at": 1718010800.0, "error": null,
     "settled": false, "note": null}

Phases: :data:`IN_FLIGHT` (``snapshotting``, ``launching``, ``restoring``,
``verifying``) in that order, then ``awaiting-accept`` (verified; the source runs until
the user accepts what the move left out) or ``done`` (verified; the source stops), or
``failed`` from any of them. The rules (:meth:`MoveBook.advance`):

* a phase only moves forward; ``failed`` is final, and ``done`` may only turn ``failed``
  (the source's own rollback, when it could not hear the hub record ``done``);
* **a hub restart cuts off every move in flight**: records found in flight when a hub
  loads the file were written by a hub that is gone, and are failed at once
  (:meth:`MoveBook.load`), so a source that carries on after the restart is told at
  its next report, and the move rolls back;
* ``settled`` (set by the reconciler) means nothing is left to do: the target is gone
  after a failure, or the source after ``done``. Settled records are dropped
  :data:`KEEP_SECONDS` after their last update.

Everything here is synchronous and in memory except :meth:`MoveBook.commit`, which
writes the file in a worker thread; the hub calls it before it answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from pathlib import Path

log = logging.getLogger("cloudhop.moves")

#: the phases of a move in flight, in order: a hub restart cuts these off
IN_FLIGHT = ("snapshotting", "launching", "restoring", "verifying")
#: verified, the source waits for the user to accept what was left out (both servers run)
AWAITING = "awaiting-accept"
PHASES = (*IN_FLIGHT, AWAITING, "done", "failed")
#: seconds a settled record is kept (for a look at what happened) before it is dropped,
#: and how many of a user's settled records are kept at most (the newest)
KEEP_SECONDS = 24 * 3600
KEEP_PER_USER = 20
FILE_NAME = "moves.json"


def source_stopped(phase: str) -> str:
    """The error of a move whose source server stopped in ``phase``."""
    return f"the source server stopped while the move was {phase}"


class MoveConflict(Exception):
    """A phase the move cannot take now (409): ``str()`` says why."""


class MoveBook:
    """The records of one hub's moves, kept in the JSON file ``path``."""

    def __init__(self, path: str | os.PathLike, clock=time.time):
        self.path = Path(path)
        self.clock = clock
        self.moves: dict[str, dict] = {}
        #: records :meth:`load` cut off whose move tokens the hub has yet to revoke
        self.cut_off: list[dict] = []
        self._lock: asyncio.Lock | None = None

    # -- the file ------------------------------------------------------------------

    def load(self) -> list[dict]:
        """Read the file; fail the moves found in flight (the hub that recorded them
        is gone). Returns those records (also kept in :attr:`cut_off`). An unreadable
        file is set aside as ``moves.json.bad`` and logged: the moves in it are not
        followed."""
        try:
            data = json.loads(self.path.read_text())
            moves = {m["id"]: m for m in data["moves"] if isinstance(m, dict) and isinstance(m.get("id"), str)}
        except FileNotFoundError:
            moves = {}
        except (OSError, ValueError, KeyError, TypeError) as err:
            bad = self.path.with_name(self.path.name + ".bad")
            log.error("moves: %s is unreadable (%s); set aside as %s, its moves are not followed",
                      self.path, err, bad)
            try:
                os.replace(self.path, bad)
            except OSError:
                pass
            moves = {}
        self.moves = moves
        cut = []
        for m in moves.values():
            if m.get("phase") in IN_FLIGHT:
                self._set(m, "failed", f"the hub restarted while the move was {m['phase']}")
                cut.append(m)
        if cut:
            log.warning("moves: %d move(s) cut off by the hub's restart: %s", len(cut),
                        ", ".join(f"{m['user']}/{m['source']} -> {m['target']}" for m in cut))
        self.cut_off += cut
        return cut

    def dump(self) -> str:
        """The file's text: the records, less settled ones older than :data:`KEEP_SECONDS`
        or beyond a user's newest :data:`KEEP_PER_USER` settled ones."""
        now = self.clock()
        kept: dict[str, int] = {}
        for m in sorted(self.moves.values(), key=lambda m: m.get("updated", now), reverse=True):
            if not m.get("settled"):
                continue
            kept[m["user"]] = kept.get(m["user"], 0) + 1
            if now - m.get("updated", now) > KEEP_SECONDS or kept[m["user"]] > KEEP_PER_USER:
                del self.moves[m["id"]]
        return json.dumps({"moves": list(self.moves.values())}, indent=1)

    def write(self, text: str) -> None:
        """Write ``text`` as the file: a new file (mode 0600), flushed to disk, renamed
        over the old one. Blocks."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    async def commit(self) -> None:
        """Write every change made so far to the file (in a thread; one write at a time,
        each with everything changed before it)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            await asyncio.to_thread(self.write, self.dump())

    # -- the records ---------------------------------------------------------------

    def open(self, user: str, source: str, target: str, expires_at: float) -> dict:
        """A new move of ``user``'s server ``source`` to the new server ``target``, in
        phase ``snapshotting`` (the source asks for its token once its kernels are
        checkpointed, before it sends anything)."""
        now = self.clock()
        m = {"id": uuid.uuid4().hex[:12], "user": user, "source": source, "target": target,
             "phase": IN_FLIGHT[0], "timeline": {IN_FLIGHT[0]: now}, "updated": now,
             "expires_at": expires_at, "error": None, "settled": False, "note": None}
        self.moves[m["id"]] = m
        return m

    def get(self, mid) -> dict | None:
        return self.moves.get(mid) if isinstance(mid, str) else None

    def of_source(self, user: str, source: str) -> list[dict]:
        """The moves of ``user``'s server ``source``, oldest first."""
        return sorted((m for m in self.moves.values() if m["user"] == user and m["source"] == source),
                      key=lambda m: m["timeline"].get(IN_FLIGHT[0], 0))

    def unsettled(self) -> list[dict]:
        return [m for m in self.moves.values() if not m.get("settled")]

    def unaccepted_target(self, user: str, server: str) -> dict | None:
        """The unsettled move whose new server is ``user``'s ``server`` and which is not
        ``done``, None when there is none. Such a server is a copy the move has not handed
        over: whatever stops it, the move fails (or has failed) and the reconciler removes
        it, so its stop keeps nothing (no snapshot). Only the hub writes these records,
        and only for a target name no server of the user had (:mod:`.tokens_api`)."""
        for m in self.unsettled():
            if m["user"] == user and m["target"] == server and m["phase"] != "done":
                return m
        return None

    def replaced_source(self, user: str, server: str, now: float | None = None) -> str | None:
        """The source server that ``user``'s ``server`` is starting to replace: the
        source of the move whose target it is, while that move is in flight
        (:data:`IN_FLIGHT`, the target starts in ``launching``) and has not expired.
        None for any other server, and for a move that failed (replaced by a newer
        move, say): only the one live move of a source lets its target start beside it
        at a policy's ``max_servers`` (:func:`cloudhop.spawner.limits.usage_of`)."""
        now = self.clock() if now is None else now
        for m in self.unsettled():
            if (m["user"] == user and m["target"] == server and m["phase"] in IN_FLIGHT
                    and not (isinstance(m.get("expires_at"), (int, float)) and now > m["expires_at"])):
                return m["source"]
        return None

    def advance(self, m: dict, phase: str, error: str | None = None) -> bool:
        """Move ``m`` to ``phase`` (with ``error`` when it failed). Returns whether it
        changed; raises :class:`MoveConflict` for a phase it cannot take (see the rules
        in this module's docstring) and ValueError for an unknown phase."""
        if phase not in PHASES:
            raise ValueError(f"phase: must be one of {', '.join(PHASES)}, not {phase!r}")
        now = m["phase"]
        if phase == now:
            return False
        if now == "failed":
            raise MoveConflict(f"the move has failed ({m.get('error')}); it takes no other phase")
        if phase == "failed":
            self._set(m, phase, error or "failed")
            return True
        if now == "done":
            raise MoveConflict(f"the move is done; it cannot go back to {phase}")
        if PHASES.index(phase) < PHASES.index(now) or (now == AWAITING and phase != "done"):
            raise MoveConflict(f"the move is {now}; it cannot go back to {phase}")
        self._set(m, phase, None)
        return True

    def settle(self, m: dict, note: str | None = None) -> None:
        """Nothing is left to do for ``m``."""
        m["settled"] = True
        m["note"] = note
        m["updated"] = self.clock()

    def _set(self, m: dict, phase: str, error: str | None) -> None:
        now = self.clock()
        m["phase"] = phase
        m["timeline"][phase] = now
        m["updated"] = now
        if error is not None:
            m["error"] = error


_books: dict[str, MoveBook] = {}


def book_at(path: str | os.PathLike) -> MoveBook:
    """The hub's book kept in ``path``, loaded on first use in this process (that first
    load is where a restarted hub cuts off the moves the gone hub left in flight)."""
    key = os.path.abspath(path)
    book = _books.get(key)
    if book is None:
        book = _books[key] = MoveBook(key)
        book.load()
    return book


#: the config section (``c.CloudhopMoves``) whose ``record_file`` names the hub's book
SECTION = "CloudhopMoves"


def book_of(config) -> MoveBook | None:
    """The book ``c.CloudhopMoves.record_file`` names in the hub's loaded ``config`` (a
    traitlets Config); None when it names none (the hub then keeps no records)."""
    if config is None or SECTION not in config:
        return None
    path = config[SECTION].get("record_file")
    return book_at(path) if isinstance(path, str) and path else None
