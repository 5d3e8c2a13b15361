"""The JupyterHub application ``cloudhop up`` runs: JupyterHub, plus Cloudhop's hub APIs
and a shutdown with a bound.

Routes. Cloudhop's hub APIs act on the hub's own objects (a user's offers under their
group policy, move and kernel tokens in the hub's database, a live server's Ray
cluster), so they cannot be a JupyterHub service. JupyterHub deprecated its config hook
for in-process routes (``c.JupyterHub.extra_handlers``); :class:`CloudhopHub` registers
them itself in :meth:`~CloudhopHub.init_handlers`, the way an application built on
JupyterHub adds its own. ``c.JupyterHub.extra_handlers`` stays for the operator's own
routes (with JupyterHub's deprecation warning, which is about them).

Shutdown. On a signal, JupyterHub stops its managed services one after another, each
with up to 10 s for SIGINT, 5 s for SIGTERM and 5 s for SIGKILL, and keeps checking the
services' health and the proxy's routes meanwhile (a health check that lands after a
service's route is removed fails with ``'NoneType' object has no attribute 'proto'``;
a route check deletes the services' routes as stale, with a warning each). Here those
checks stop first and the services are stopped all at once with short grace periods
(:data:`SERVICE_STOP_SECONDS`), so the hub and its services are gone within seconds.

Database. A SQLite database is put in write-ahead-log mode before JupyterHub opens it,
its connections synced at checkpoints (:mod:`.hub_db`): JupyterHub commits on the hub's
loop, and such a commit holds it for a fraction of what a rollback-journal commit does.
"""

from __future__ import annotations

import asyncio

from jupyterhub.app import JupyterHub

#: seconds a service gets after SIGINT, after SIGTERM, and after SIGKILL
SERVICE_STOP_SECONDS = (3, 2, 2)


def cloudhop_routes() -> list[tuple]:
    """Cloudhop's hub API routes (unprefixed, as ``extra_handlers`` takes them): offers,
    move and kernel tokens, Ray clusters, and the page that accepts a share link."""
    from . import tokens_api
    from .offers_api import handlers as offers_handlers
    from .ray_api import handlers as ray_handlers
    from .snapshots_api import handlers as snapshot_handlers  # snapshot lines, class snapshots
    from .rescue_api import handlers as rescue_handlers  # spot rescues
    from .sharing import handlers as sharing_handlers
    from .culling_api import handlers as activity_handlers  # servers' activity reports
    from .usage_api import handlers as usage_handlers  # spend and budgets
    from .kept_api import handlers as kept_handlers  # nodes stops kept (docs/durability.md)
    from .launch_steps_api import handlers as launch_step_handlers  # cloud nodes' bootstrap steps

    return [*offers_handlers(), *tokens_api.handlers(), *ray_handlers(), *rescue_handlers(), *sharing_handlers(),
            *activity_handlers(), *snapshot_handlers(), *usage_handlers(), *kept_handlers(),
            *launch_step_handlers()]


def leave_routes_to_the_app(c) -> None:
    """Remove Cloudhop's own routes from ``c.JupyterHub.extra_handlers`` (the config
    functions shared with a plain ``jupyterhub`` put them there), keeping the operator's:
    :class:`CloudhopHub` registers Cloudhop's."""
    if "extra_handlers" not in c.JupyterHub:
        return
    ours = cloudhop_routes()
    c.JupyterHub.extra_handlers = [h for h in c.JupyterHub.extra_handlers if tuple(h) not in ours]


class CloudhopHub(JupyterHub):
    """JupyterHub with Cloudhop's hub APIs and a bounded shutdown (see the module)."""

    _stopping = False

    def init_db(self):
        from .hub_db import sync_at_checkpoints, use_wal

        # commits that hold the hub's loop for a fraction of the time (hub_db.py)
        if use_wal(self.db_url, self.log):
            sync_at_checkpoints(self.db_url)
        super().init_db()

    def init_handlers(self):
        super().init_handlers()
        from . import metrics

        metrics.install(self)  # Cloudhop's families on /hub/metrics
        operators = [tuple(h) for h in self.extra_handlers]
        ours = [h for h in cloudhop_routes() if h not in operators]
        # first: JupyterHub's own API ends in a catch-all 404 for /hub/api/; a page of
        # JupyterHub's that Cloudhop's replaces (accept-share) is taken out
        ours = self.add_url_prefix(self.hub_prefix, ours)
        replaced = {h[0] for h in ours}
        self.handlers[:] = [*ours, *(h for h in self.handlers if h[0] not in replaced)]

    async def start(self):
        from .budget_watch import start_watcher

        await super().start()
        # budgets that hold: the hub stops servers whose users' budget is spent
        self._periodic_callbacks["cloudhop-budgets"] = start_watcher(self)

    async def check_services_health(self):
        if self._stopping:  # the services are going away on purpose
            return
        try:
            await super().check_services_health()
        except AttributeError:  # a check under way when the shutdown removed a service's route
            if not self._stopping:
                raise

    async def cleanup(self):
        self._stopping = True
        # no more route and health checks (JupyterHub's stop() does this; a signal's
        # shutdown does not): they would find the services' routes half removed
        for pc in getattr(self, "_periodic_callbacks", {}).values():
            pc.stop()
        services = [s for s in self._service_map.values() if s.managed and s.spawner is not None]
        if services:
            self.log.info("Stopping %i services...", len(services))
            await asyncio.gather(*(self._stop_service(s) for s in services))
        await super().cleanup()  # the services are gone: JupyterHub's own pass returns at once

    async def _stop_service(self, service) -> None:
        spawner = service.spawner
        spawner.interrupt_timeout, spawner.term_timeout, spawner.kill_timeout = SERVICE_STOP_SECONDS
        try:
            await service.stop()
        except Exception as err:  # one stubborn service must not keep the others up
            self.log.error("Could not stop service %s: %s", service.name, err)


main = CloudhopHub.launch_instance
