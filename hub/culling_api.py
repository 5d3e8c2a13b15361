"""The hub's activity endpoint: a server reports what keeps it busy and its GPU use, and
learns when it will be culled.

::

    POST /hub/api/cloudhop/activity/{user}[/{server}]
         {"active": bool, "why": "kernel busy" | "gpu" | "keep running" | ...,
          "gpus": [{"index", "uuid", "name", "utilization", "memory_used", "memory_total"}]}
      -> 200 {"cull": Decision.to_json() or null}

Called by the server extension (:mod:`cloudhop.extensions.activity`) with the server's
own token, which holds ``users:activity`` for its user (JupyterHub's own activity
endpoint needs the same); the kernels' token does not. ``active`` true moves the
server's (and the user's) ``last_activity`` to now, as JupyterHub's activity endpoint
would; the GPU readings become the per-server GPU metrics (:mod:`.metrics`). The reply
says when the culling policy (:mod:`.culling`) will stop the server, once it is within
the warning window (``cull`` is null otherwise, and when no culler runs). A body that
does not fit is a 400 naming the field.
"""

from __future__ import annotations

import json

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.utils import utcnow
from tornado import web

from . import metrics
from .culling import CullSettings

#: the most GPUs one report may list, and the longest text in it
MAX_GPUS = 64
MAX_TEXT = 128


def _check_gpus(gpus) -> list[dict]:
    """The report's ``gpus``, checked; a ValueError names the bad field."""
    if not isinstance(gpus, list) or len(gpus) > MAX_GPUS:
        raise ValueError(f"gpus: must be a list of at most {MAX_GPUS} readings")
    out = []
    for i, g in enumerate(gpus):
        where = f"gpus[{i}]"
        if not isinstance(g, dict):
            raise ValueError(f"{where}: must be an object")
        reading = {}
        for key in ("index", "uuid", "name"):
            value = g.get(key)
            if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
                raise ValueError(f"{where}.{key}: must be a text of at most {MAX_TEXT} characters")
            reading[key] = value or ""
        for key, top in (("utilization", 100), ("memory_used", 2**60), ("memory_total", 2**60)):
            value = g.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value <= top):
                raise ValueError(f"{where}.{key}: must be a number from 0 to {top}, or null")
            reading[key] = value
        out.append(reading)
    return out


def server_gpu_of(spawner) -> str:
    """The GPU type the server runs on: its offer's, else the option it asked for."""
    offer = getattr(spawner, "offer", None)
    gpu = getattr(offer, "gpu", None) or (spawner.user_options or {}).get("gpu")
    return gpu if isinstance(gpu, str) and gpu and gpu != "auto" else "none"


class ActivityHandler(APIHandler):
    def _log(self):
        """Every server reports once a minute: an answered report is logged at debug
        level, so the hub's log is not one line per server per minute; a refusal is
        logged as JupyterHub logs any request."""
        if self.get_status() < 300:
            self.log.debug("%d %s %s %.2fms", self.get_status(), self.request.method, self.request.uri,
                           1000.0 * self.request.request_time())
            return
        super()._log()

    def settings_of_culling(self) -> CullSettings:
        settings = self.settings.get("cloudhop_cull_settings")
        if settings is None:
            settings = self.settings["cloudhop_cull_settings"] = CullSettings.from_config(self.settings["config"])
        return settings

    async def post(self, user_name: str, server_name: str | None = None):
        server_name = server_name or ""
        target = f"{user_name}/{server_name}"
        if self.current_user is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        if not self.has_scope(f"users:activity!user={user_name}"):
            raise web.HTTPError(404, f"No server {target!r} this token may report activity for")
        user = self.find_user(user_name)
        if user is None or server_name not in user.orm_spawners:
            raise web.HTTPError(404, f"No server {target!r}")
        spawner = user.spawners[server_name]
        if not spawner.active:
            raise web.HTTPError(409, f"Server {target!r} is not running", reason="not-running")
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "the body must be a JSON object")
        active = body.get("active", False)
        if not isinstance(active, bool):
            raise web.HTTPError(400, "active: must be true or false")
        why = body.get("why")
        if why is not None and (not isinstance(why, str) or len(why) > MAX_TEXT):
            raise web.HTTPError(400, f"why: must be a text of at most {MAX_TEXT} characters")
        try:
            gpus = _check_gpus(body.get("gpus", []))
        except ValueError as err:
            raise web.HTTPError(400, str(err)) from None
        orm_spawner = user.orm_spawners[server_name]
        if active:
            now = utcnow(with_tz=False)
            if not orm_spawner.last_activity or now > orm_spawner.last_activity:
                orm_spawner.last_activity = now
            if not user.last_activity or now > user.last_activity:
                user.last_activity = now
            self.db.commit()
            self.log.debug("Activity on server %s: %s", target, why or "reported")
        metrics.record_gpus(user_name, server_name, gpus)
        settings = self.settings_of_culling()
        cull = None
        if settings.enabled:
            decision = settings.decide(groups=[g.name for g in user.groups], gpu=server_gpu_of(spawner),
                                       started=orm_spawner.started, last_activity=orm_spawner.last_activity)
            if decision.action != "keep":
                cull = decision.to_json()
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"cull": cull}))


def handlers() -> list[tuple]:
    """Routes (unprefixed, as ``extra_handlers`` takes them)."""
    return [(r"/api/cloudhop/activity/([^/]+)(?:/([^/]+))?/?", ActivityHandler)]
