"""The move reconciler: a hub-managed service that cleans up after moves cut off by a
fault (a hub, source or target killed, a source that could not stop itself).

Every ``interval`` seconds it reads the hub's unsettled move records
(``GET /hub/api/cloudhop/moves``, :mod:`.move_book`), the models of each move's source
and target servers, and does what :func:`decide` says, through the hub's REST API with
its service token (:data:`SCOPES`). The rule, in short: **a move that had not reached
``done`` (or ``awaiting-accept``) when it was cut off is rolled back**: its target is
stopped and removed, its source is never touched. **A move the hub recorded ``done``
is finished**: if its source still runs ``finish_after`` seconds later while the target
runs, the source is stopped. It only ever stops servers; the move's snapshot stays in
the store. In detail, by the record's phase:

* in flight (``snapshotting`` .. ``verifying``): the source server stopped (killed,
  culled, removed), or the move's token expired -> the move fails. (A hub restart
  already failed every move in flight when the new hub read the records.)
* ``failed``: the target is stopped and removed (a start under way is interrupted; one
  being stopped, or checked by a hub that just started, is waited for); once it is gone
  the record is settled.
* ``awaiting-accept`` (verified; both run until the user accepts what was left out):
  the target stopped -> the move fails (and the above removes it); the source stopped ->
  settled, the target runs on; the move's token expired (``expires_at``) with both
  running -> the move fails and its target is removed: a move's target starts beside its
  source uncounted by ``max_servers``, so two servers run for the move's life only.
* ``done``: the source stopped -> settled. Still running ``finish_after`` seconds after
  this reconciler first saw ``done``: stopped if the target runs; if the target does not
  run, the source is kept and the record settled.

Run by the hub (:func:`add_move_reconciler`) as ``python -m cloudhop.hub.move_reconciler``,
configured by ``JUPYTERHUB_API_URL``/``JUPYTERHUB_API_TOKEN`` (set by the hub) and
``CLOUDHOP_MOVES_SETTINGS`` (JSON: interval, finish_after). It exits when the hub that
started it is gone; the next hub starts its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import dataclass

from cloudhop.extensions.hubclient import HubClient, HubError
from cloudhop.spawner.validate import Number
from traitlets import Bool, Unicode
from traitlets.config import LoggingConfigurable

from .move_book import AWAITING, FILE_NAME, IN_FLIGHT, source_stopped
from .services import add_service, hub_is_gone, hub_pid
from .tokens_api import MOVES_SCOPE

SERVICE_NAME = "cloudhop-moves"
SETTINGS_ENV = "CLOUDHOP_MOVES_SETTINGS"
#: what the reconciler's token may do: read and stop (and remove) any server, read and
#: fail or settle any move record - not start a server, nor mint a move's token (the hub
#: gives those to a server's owner only)
SCOPES = ["read:servers", "delete:servers", MOVES_SCOPE]

log = logging.getLogger("cloudhop.moves")


class CloudhopMoves(LoggingConfigurable):
    """The move records and their reconciler (docs/migration.md, "Faults")."""

    enabled = Bool(True, help="Run the move reconciler as a hub-managed service.").tag(config=True)
    interval = Number(15.0, rule={"minimum": 0, "strict": True},
                      help="Seconds between the reconciler's sweeps.").tag(config=True)
    finish_after = Number(
        60.0, rule={"minimum": 0},
        help="Seconds a source server may keep running after its move is done before the "
        "reconciler stops it (the source stops itself once a client has read done, within "
        "its c.CloudhopMigration.stop_delay; keep this longer).",
    ).tag(config=True)
    record_file = Unicode(
        "", help="The JSON file the hub keeps move records in. Default: moves.json in the "
        "data folder.",
    ).tag(config=True)


@dataclass(frozen=True)
class Action:
    """What to do about one move: ``kind`` is ``wait``, ``fail`` (with ``text`` as the
    error), ``remove-target``, ``stop-source`` or ``settle`` (with ``text`` as the note)."""

    kind: str
    text: str = ""


def server_state(model: dict | None) -> str:
    """``absent``, ``starting``, ``pending`` (stopping, or being checked by a hub that
    just started), ``running`` or ``stopped``, from the hub's model of a server (None:
    it has none)."""
    if model is None:
        return "absent"
    if model.get("pending"):
        return "starting" if model["pending"] == "spawn" else "pending"
    return "running" if model.get("ready") else "stopped"


def decide(move: dict, source: dict | None, target: dict | None, *, now: float,
           done_since: float | None, finish_after: float) -> Action:
    """The rule for one unsettled ``move`` record, given the hub's models of its
    ``source`` and ``target`` servers (None when the user has no such server), the time
    ``now`` and when this reconciler first saw the move ``done`` (``done_since``). See
    the module's docstring."""
    phase = move.get("phase")
    src, tgt = server_state(source), server_state(target)
    if phase in IN_FLIGHT:
        if src in ("absent", "stopped"):
            return Action("fail", source_stopped(phase))
        if isinstance(move.get("expires_at"), (int, float)) and now > move["expires_at"]:
            return Action("fail", f"the move's token expired while the move was {phase}")
        return Action("wait")
    if phase == "failed":  # a start under way is interrupted: a booting VM costs too
        if tgt == "absent":
            return Action("settle", "rolled back: the new server is gone; the source was not touched")
        return Action("wait") if tgt == "pending" else Action("remove-target")
    if phase == AWAITING:
        if tgt in ("absent", "stopped"):
            return Action("fail", "the new server stopped before the user accepted what the move left out")
        if src in ("absent", "stopped"):
            return Action("settle", "the source stopped before the user accepted; the new server runs on")
        if isinstance(move.get("expires_at"), (int, float)) and now > move["expires_at"]:
            # both run only for the move's life: its target started beside its source
            # uncounted by max_servers (cloudhop.spawner.limits.usage_of)
            return Action("fail", "the move expired before the user accepted what it left out; "
                                  "the new server is removed, the source runs on")
        return Action("wait")
    if phase == "done":
        if src in ("absent", "stopped"):
            return Action("settle", "finished: the source has stopped")
        if src in ("pending", "starting") or done_since is None or now - done_since < finish_after:
            return Action("wait")
        if tgt == "running":
            return Action("stop-source")
        if tgt in ("pending", "starting"):
            return Action("wait")
        return Action("settle", "the new server stopped after the move was done; the source keeps running")
    return Action("wait")


class Reconciler:
    """One hub's reconciler, calling the hub as ``hub`` (a service's client, no user)."""

    def __init__(self, hub: HubClient, *, finish_after: float = 60.0, clock=time.time):
        self.hub = hub
        self.finish_after = finish_after
        self.clock = clock
        self.done_seen: dict[str, float] = {}

    def client(self, move: dict) -> HubClient:
        """The hub client for ``move``'s user and source server."""
        return HubClient(self.hub.api_url, self.hub.token, move["user"], move["source"])

    async def sweep(self) -> list[tuple[str, Action]]:
        """One look at every unsettled move; returns ``(move id, action)`` for each
        action taken. A move whose servers the hub cannot tell about is left for the next
        sweep (never acted on partial knowledge)."""
        try:
            moves = await self.hub.moves()
        except HubError as err:
            log.warning("moves: cannot read the hub's move records (%s); trying again later", err)
            return []
        live = {m["id"] for m in moves}
        self.done_seen = {k: v for k, v in self.done_seen.items() if k in live}
        taken = []
        for move in moves:
            try:
                taken += await self.reconcile(move)
            except HubError as err:
                log.warning("moves: %s (%s/%s -> %s): %s", move["id"], move["user"], move["source"],
                            move["target"], err)
        return taken

    async def reconcile(self, move: dict) -> list[tuple[str, Action]]:
        """Act on ``move`` until the rule says wait (at most a few steps: fail, then
        remove the target, say)."""
        taken = []
        hub = self.client(move)
        for _ in range(3):
            if move.get("phase") == "done":
                self.done_seen.setdefault(move["id"], self.clock())
            action = decide(move, await hub.server(move["source"]), await hub.server(move["target"]),
                            now=self.clock(), done_since=self.done_seen.get(move["id"]),
                            finish_after=self.finish_after)
            if action.kind == "wait":
                break
            log.warning("moves: %s (%s/%s -> %s, %s): %s%s", move["id"], move["user"], move["source"],
                        move["target"], move.get("phase"), action.kind, f": {action.text}" if action.text else "")
            taken.append((move["id"], action))
            if action.kind == "fail":
                move = await hub.report_move({"move": move["id"], "phase": "failed", "error": action.text})
            elif action.kind == "settle":
                await hub.report_move({"move": move["id"], "settled": True, "note": action.text})
                break
            elif action.kind == "remove-target":
                await hub.stop_server(move["target"], remove=True)
                break  # settled at a later sweep, once the hub has removed it
            elif action.kind == "stop-source":
                await hub.stop_server(move["source"])
                break
        return taken

    async def run(self, interval: float) -> None:
        """Sweep every ``interval`` seconds while the hub that started us lives."""
        parent = hub_pid()
        while not hub_is_gone(parent):
            await self.sweep()
            deadline = time.monotonic() + interval
            while time.monotonic() < deadline and not hub_is_gone(parent):
                await asyncio.sleep(min(1.0, interval))
        log.info("moves: the hub is gone; exiting")


def add_move_reconciler(c, *, data_dir: str) -> dict:
    """Keep move records in ``data_dir`` (unless ``c.CloudhopMoves.record_file`` names
    another file) and add the reconciler service and its role to a JupyterHub config
    ``c``, as ``c.CloudhopMoves.*`` sets it; call it after
    :func:`cloudhop.hub.snapshot_store.add_store_service`, which defines the moves scope.
    Returns the service entry, ``{}`` if disabled (the hub then still keeps records)."""
    conf = CloudhopMoves(config=c)
    if not conf.record_file:
        c.CloudhopMoves.record_file = os.path.join(os.path.abspath(data_dir), FILE_NAME)
    if not conf.enabled:
        return {}
    service = {
        "name": SERVICE_NAME,
        "command": [sys.executable, "-m", "cloudhop.hub.move_reconciler"],
        "environment": {SETTINGS_ENV: json.dumps({"interval": conf.interval, "finish_after": conf.finish_after})},
        "display": False,
    }
    add_service(c, service, {"name": SERVICE_NAME, "scopes": list(SCOPES), "services": [SERVICE_NAME]})
    return service


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s moves] %(message)s")
    settings = json.loads(os.environ.get(SETTINGS_ENV) or "{}")
    hub = HubClient(os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"])
    # checked by CloudhopMoves when the hub wrote the settings
    reconciler = Reconciler(hub, finish_after=settings.get("finish_after", 60.0))
    interval = settings.get("interval", 15.0)
    log.info("moves: reconciling every %.1fs, finishing done moves after %.0fs", interval, reconciler.finish_after)
    try:
        asyncio.run(reconciler.run(interval))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
