"""The hub's spot rescue API: a preempted server asks to be relaunched elsewhere.

    POST /hub/api/cloudhop/rescue/{user}[/{server}]
         {"snapshot": id, "notice": {...}, "notice_to_snapshot_s": s, "bytes": n}
         -> 202 the rescue's record (a new rescue), 200 the record (a repeated call)
    GET  /hub/api/cloudhop/rescue/{user}[/{server}]  -> {"rescues": [record, ...]}

The caller is the preemption agent in the server (:mod:`cloudhop.extensions.preempt`),
with the server's own token. Like a move (a rescue is a move the hub makes), only the
server's owner may ask, with a token holding ``custom:cloudhop:moves`` on that server
(:meth:`cloudhop.hub.tokens_api.ServerTokenHandler.source`): another user's server is a
404, a user it is shared with a 403, the kernels' token a 404. Only a running spot server
is rescued (else 409).

On a new rescue the hub answers at once, then, in the background:

1. picks the next offer of the server's failover list (:func:`cloudhop.spawner.rescue.next_launch`:
   not the preempted offer; on-demand as ``c.CloudhopRescue.on_demand`` says);
2. stops the server without another snapshot (the spawner's ``hibernated_snapshot`` is
   the agent's, taken on this node);
3. starts the same server name again - so its URL, and the user's open JupyterLab tab,
   stay the same - pinned to that offer with ``restore`` = the snapshot; the spawner
   avoids the preempted offer in its failover walk, and the new server is told it was
   moved after a spot interruption (``CLOUDHOP_RESCUED_FROM``).

The record (``id``, ``user``, ``server``, ``node`` rescued, ``from`` and ``target``
offers, ``spot``, ``snapshot``, ``bytes``, ``notice``, ``notice_to_snapshot_s``,
``phase``: ``relaunching | stopping | starting | running | failed``, ``error``,
``timeline``) is logged and kept in memory for the hub's lifetime (the last
:data:`KEEP` per server). One rescue per node: a call while one is under way, for the
node already rescued, or naming the snapshot of the last rescue, returns that record and
changes nothing. A call that names no
snapshot (the agent's snapshot failed: ``error``) is recorded as failed and relaunches
nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from tornado import web

from cloudhop.spawner.rescue import CloudhopRescue, NoOffer, next_launch, relaunch_options

from .tokens_api import ServerTokenHandler

#: the fields a rescue's POST may carry
FIELDS = ("snapshot", "notice", "notice_to_snapshot_s", "bytes", "error")
#: phases of a rescue that is still under way
UNDER_WAY = ("relaunching", "stopping", "starting")
#: records kept per server
KEEP = 10
#: seconds the hub waits for the stopped server's spawner to let go before it starts again
STOP_WAIT = 600


def check_body(body) -> dict:
    """A rescue's POST body, checked; raises HTTPError 400 naming the field."""
    if not isinstance(body, dict):
        raise web.HTTPError(400, 'body must be JSON like {"snapshot": "<id>", "notice": {...}}')
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise web.HTTPError(400, f"{unknown[0]}: unknown field; send {', '.join(FIELDS)}")
    snapshot = body.get("snapshot")
    if snapshot is not None and (not isinstance(snapshot, str) or not 0 < len(snapshot) <= 128):
        raise web.HTTPError(400, "snapshot: must be the id of the snapshot the agent took")
    if snapshot is None and not isinstance(body.get("error"), str):
        raise web.HTTPError(400, "snapshot: missing; send the snapshot's id, or error when it failed")
    if body.get("notice") is not None and not isinstance(body["notice"], dict):
        raise web.HTTPError(400, "notice: must be an object (the cloud's notice)")
    for name in ("notice_to_snapshot_s", "bytes"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise web.HTTPError(400, f"{name}: must be a number, 0 or more")
    out = dict(body)
    if isinstance(out.get("error"), str):
        out["error"] = out["error"][:2000]
    if out.get("notice") is not None:
        out["notice"] = {str(k)[:40]: v if isinstance(v, (int, float)) else str(v)[:200]
                         for k, v in list(out["notice"].items())[:10]}
    return out


def rescues(settings) -> dict:
    """The hub's rescue records: (user, server) -> [record, ...], newest last."""
    return settings.setdefault("cloudhop_rescues", {})


class RescueHandler(ServerTokenHandler):
    def _line(self, user_name: str, server: str) -> list:
        return rescues(self.settings).setdefault((user_name, server), [])

    async def get(self, user_name: str, server_name: str | None = None):
        server = server_name or ""
        try:
            self.source(user_name, server, ready=False)
        except web.HTTPError as err:
            if err.status_code != 409:  # a stopped server's rescues may still be read
                raise
        self.reply(200, {"rescues": list(rescues(self.settings).get((user_name, server), []))})

    async def post(self, user_name: str | None = None, server_name: str | None = None):
        server = server_name or ""
        try:
            user = self.source(user_name, server, ready=True)
        except web.HTTPError as err:
            # the server already stopped for a rescue: a repeated call gets that rescue
            line = rescues(self.settings).get((user_name, server))
            if err.status_code == 409 and line and line[-1]["phase"] in UNDER_WAY:
                return self.reply(200, line[-1])
            raise
        body = check_body(self.get_json_body())
        spawner = user.spawners[server]
        request = getattr(spawner, "request", None)
        if not getattr(request, "spot", False):
            raise web.HTTPError(409, f"Server {user_name}/{server} is not a spot server; only a spot server is "
                                     "rescued", reason="not-spot")
        line = self._line(user_name, server)
        node = spawner.node.id if getattr(spawner, "node", None) else None
        last = line[-1] if line else None
        if last is not None and (last["phase"] in UNDER_WAY or (node and last["node"] == node)
                                 or (body.get("snapshot") and last["snapshot"] == body.get("snapshot"))):
            self.log.info("Rescue of %s/%s repeated (node %s): %s", user_name, server, node, last["phase"])
            return self.reply(200, last)
        offer = getattr(spawner, "offer", None)
        record = {
            "id": uuid.uuid4().hex[:12], "user": user_name, "server": server, "node": node,
            "from": offer.key if offer else None, "target": None, "spot": None,
            "snapshot": body.get("snapshot"), "bytes": body.get("bytes"), "notice": body.get("notice"),
            "notice_to_snapshot_s": body.get("notice_to_snapshot_s"), "phase": "relaunching",
            "error": None, "timeline": {"relaunching": time.time()},
        }
        line.append(record)
        del line[:-KEEP]
        notice = body.get("notice") or {}
        self.log.warning("Spot rescue %s of %s/%s (node %s, %s): %s %s notice; snapshot %s taken %s s after it",
                         record["id"], user_name, server, node, record["from"], notice.get("cloud"),
                         notice.get("kind"), record["snapshot"], record["notice_to_snapshot_s"])
        if record["snapshot"] is None:
            self._phase(record, "failed", f"the server's snapshot failed: {body.get('error')}")
            return self.reply(200, record)
        self.reply(202, record)
        task = asyncio.ensure_future(self._relaunch(user, spawner, record))
        _pending.add(task)
        task.add_done_callback(_pending.discard)

    def _phase(self, record: dict, phase: str, error: str | None = None) -> None:
        record["phase"] = phase
        record["timeline"][phase] = time.time()
        if error:
            record["error"] = error
            self.log.error("Spot rescue %s of %s/%s failed: %s", record["id"], record["user"], record["server"],
                           error)

    async def _relaunch(self, user, spawner, record: dict) -> None:
        """Stop the server and start it on the next offer, restoring the snapshot."""
        name = spawner.name
        settings = CloudhopRescue(config=self.settings.get("config"))
        try:
            offer, spot = await next_launch(spawner, settings.on_demand)
            record.update(target=offer.key, spot=spot)
            options = relaunch_options(spawner.user_options, offer, spot, record["snapshot"])
            avoid = record["from"] if spot else None
            spawner.hibernated_snapshot = record["snapshot"]  # taken on this node: no other
            self._phase(record, "stopping")
            await self.stop_single_user(user, name)
            deadline = time.monotonic() + STOP_WAIT
            while spawner._stop_pending or spawner.active:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the server did not stop within {STOP_WAIT} s")
                await asyncio.sleep(0.2)
            # the server's spawner after the stop is a new object (JupyterHub drops a stopped
            # one): made now, so the start below uses it and finds the rescue on it
            spawner = user.spawners[name]
            spawner.rescue = {"avoid": avoid, "from": record["from"], "notice": record["notice"]}
            self._phase(record, "starting")
            self.log.warning("Spot rescue %s: starting %s/%s on %s (%s), restoring %s", record["id"], user.name,
                             name, offer.key, "spot" if spot else "on-demand", record["snapshot"])
            await self.spawn_single_user(user, name, options=options)
            while spawner.pending:
                await asyncio.sleep(0.2)
            if not spawner.ready:
                raise RuntimeError(f"the new server on {offer.key} did not start (the hub's log says why)")
            record["node_after"] = spawner.node.id if getattr(spawner, "node", None) else None
            self._phase(record, "running")
            self.log.warning("Spot rescue %s: %s/%s runs again on %s, %.1f s after the hub heard of it",
                             record["id"], user.name, name, offer.key,
                             record["timeline"]["running"] - record["timeline"]["relaunching"])
        except NoOffer as err:
            self._phase(record, "failed", f"no offer to relaunch on: {err}")
        except Exception as err:  # noqa: BLE001 - recorded and logged; the user sees the server stopped
            self._phase(record, "failed", f"{type(err).__name__}: {err}")
        finally:
            spawner.rescue = None


_pending: set = set()


def handlers() -> list[tuple]:
    """Routes of the rescue API (the hub prefixes them with /hub/)."""
    return [(r"/api/cloudhop/rescue/([^/]+)(?:/([^/]+))?/?", RescueHandler)]
