"""Activity reports of a user's server to the hub, and the cull warning JupyterLab shows.

Every ``CLOUDHOP_ACTIVITY_SECONDS`` (default 60) the server tells the hub
(``POST /hub/api/cloudhop/activity/...``, :mod:`cloudhop.hub.culling_api`) whether it is
busy, with its GPU readings (:func:`.gpustats.sample`, NVML in a thread). Busy means:

* a kernel is executing (``execution_state`` "busy": a long training step sends no
  messages, so JupyterHub's own activity tracking would not see it), or
* one of its GPUs is at or above ``CLOUDHOP_GPU_BUSY_PERCENT`` (default 10) utilisation
  (a job started from a terminal, or a kernel waiting on the GPU).

A busy report moves the server's ``last_activity`` on the hub to now. The hub answers
with the cull the policy plans within the warning window (or null); the server keeps
it for the routes below, which the JupyterLab extension polls to show a notification
with a "Keep running" button::

    GET  {server}/cloudhop/api/activity   -> {"cull": {...} | null, "reported": iso | null, "error": text | null}
    POST {server}/cloudhop/api/activity   "keep running": reports activity now -> the same

The GET does not count as activity itself (an open tab polling it would otherwise keep
the server alive for ever). ``CLOUDHOP_NVML_MODULE`` names the NVML binding (pynvml).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.ioloop import PeriodicCallback

from . import gpustats
from .handlers import CloudhopHandler
from .hubclient import HubError

REPORT_ENV = "CLOUDHOP_ACTIVITY_SECONDS"
GPU_BUSY_ENV = "CLOUDHOP_GPU_BUSY_PERCENT"
NVML_ENV = "CLOUDHOP_NVML_MODULE"


def _number(env, name: str, default: float, low: float, high: float) -> float:
    try:
        value = float(env.get(name) or default)
    except ValueError:
        return default
    return min(high, max(low, value))


def gpu_busy(reading: dict, threshold: float) -> int | None:
    """The highest utilisation (percent) among the GPUs of ``reading`` (a
    :func:`.gpustats.sample`) at or above ``threshold``, else None."""
    utils = [g["utilization"] for g in reading.get("gpus") or [] if g.get("utilization") is not None]
    top = max(utils, default=None)
    return top if top is not None and top >= threshold else None


def busy_kernels(kernel_manager) -> int:
    """How many of the server's kernels are executing now."""
    try:
        kernels = kernel_manager.list_kernels()
    except Exception:  # noqa: BLE001 - no kernel manager: nothing is busy
        return 0
    return sum(1 for k in kernels if k.get("execution_state") == "busy")


class ActivityReporter:
    """Reports this server's activity to the hub and keeps the hub's cull plan."""

    def __init__(self, serverapp, hub, env=os.environ):
        self.serverapp = serverapp
        self.hub = hub
        self.interval = _number(env, REPORT_ENV, 60, 1, 3600)
        self.threshold = _number(env, GPU_BUSY_ENV, 10, 0, 100)
        self.nvml_module = env.get(NVML_ENV) or "pynvml"
        self.cull: dict | None = None
        self.reported: str | None = None
        self.error: str | None = None
        self._timer: PeriodicCallback | None = None
        self._lock = asyncio.Lock()

    def state(self) -> dict:
        return {"cull": self.cull, "reported": self.reported, "error": self.error,
                "interval": self.interval}

    async def reasons(self, keep: bool = False) -> tuple[list[str], list[dict]]:
        """Why the server is busy now (empty: idle), and its GPU readings."""
        why = ["keep running"] if keep else []
        if busy_kernels(self.serverapp.kernel_manager):
            why.append("kernel busy")
        reading = await asyncio.get_running_loop().run_in_executor(None, gpustats.sample, self.nvml_module)
        top = gpu_busy(reading, self.threshold)
        if top is not None:
            why.append(f"GPU {top}%")
        gpus = [{k: g.get(k) for k in ("index", "uuid", "name", "utilization", "memory_used", "memory_total")}
                for g in reading.get("gpus") or []]
        return why, gpus

    async def report(self, keep: bool = False) -> dict:
        """One report to the hub; returns :meth:`state`. A hub that cannot be reached is
        said in ``error`` and tried again at the next report."""
        async with self._lock:
            why, gpus = await self.reasons(keep)
            body = {"active": bool(why), "why": ", ".join(why) or None, "gpus": gpus}
            try:
                reply = await self.hub.report_activity(body)
            except HubError as err:
                if str(err) != self.error:  # once per kind of failure, not every report
                    self.serverapp.log.warning("Cloudhop: activity report failed: %s", err)
                self.error = str(err)
            else:
                self.cull, self.error = (reply or {}).get("cull"), None
                self.reported = datetime.datetime.now(datetime.timezone.utc).isoformat()
            return self.state()

    def start(self) -> None:
        """Report now and then every ``interval`` seconds (only when the server was
        started by a hub)."""
        if not self.hub.configured:
            return
        self.serverapp.io_loop.add_callback(self.report)
        self._timer = PeriodicCallback(self.report, self.interval * 1000)
        self._timer.start()


class ActivityHandler(CloudhopHandler):
    """``GET``: the cull the hub plans; ``POST``: "keep running"."""

    _track_activity = False  # polling the warning is not using the server

    def initialize(self, reporter: ActivityReporter):
        self.reporter = reporter

    @web.authenticated
    @authorized
    async def get(self):
        self.check_owner()
        self.finish(json.dumps(self.reporter.state()))

    @web.authenticated
    @authorized
    async def post(self):
        self.check_owner()
        self._track_activity = True  # "keep running" is the user's own action
        self.finish(json.dumps(await self.reporter.report(keep=True)))


def load(serverapp, hub) -> ActivityReporter:
    """Start this server's activity reports and add the ``activity`` route."""
    from jupyter_server.utils import url_path_join

    reporter = ActivityReporter(serverapp, hub)
    serverapp.web_app.add_handlers(".*$", [
        (url_path_join(serverapp.base_url, "cloudhop/api/activity"), ActivityHandler, {"reporter": reporter}),
    ])
    reporter.start()
    return reporter
