"""Request handlers of the Cloudhop server extension; :mod:`.server` wires them to
routes. :class:`CloudhopHandler` is the base every Cloudhop API handler shares, the Ray
routes of :mod:`.ray_api` included (so neither of those modules imports the other).

Every handler needs the server's normal authentication and (for POST) XSRF protection;
under JupyterHub only the server's owner may move or inspect the server, not users it
is shared with (:meth:`CloudhopHandler.check_owner`).
"""

from __future__ import annotations

import asyncio
import json
import os

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from cloudhop.spawner.schema import SNAPSHOT

from . import gpustats
from .hubclient import HubError
from .migrate import Busy, Migrator, NotAccepted, OptionError, Restorer
from .notebook import offer_choices
from .price import PriceLookup
from .unsaved import MAX_PATHS, UnsavedBook


class CloudhopHandler(APIHandler):
    """Base of every Cloudhop API handler (this module's and :mod:`.ray_api`'s): the
    ``cloudhop`` auth resource and the owner rule."""

    auth_resource = "cloudhop"

    def check_owner(self) -> None:
        """Under JupyterHub, users a server is shared with may not move or inspect it."""
        try:
            from jupyterhub.singleuser.extension import JupyterHubIdentityProvider
        except ImportError:  # pragma: no cover - not under JupyterHub
            return
        if not isinstance(self.identity_provider, JupyterHubIdentityProvider):
            return
        if getattr(self.current_user, "username", None) != os.environ.get("JUPYTERHUB_USER"):
            raise web.HTTPError(403, "only the server's owner may do this")

    def json_object(self, example: str) -> dict:
        """The request's JSON body as a dict (``{}`` when empty or not an object, so the
        field it lacks is named); a 400 showing ``example`` when it is not JSON."""
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, f"the body must be JSON like {example}") from None
        return body if isinstance(body, dict) else {}


class MigrationAPIHandler(CloudhopHandler):
    """Base of the move's handlers: the server's :class:`~.migrate.Migrator`, and its
    :class:`~.migrate.Restorer` when it was started from a snapshot."""

    def initialize(self, migrator: Migrator, restorer: Restorer | None = None):
        self.migrator = migrator
        self.restorer = restorer


class MigrationsHandler(MigrationAPIHandler):
    @web.authenticated
    @authorized
    async def post(self):
        self.check_owner()
        try:
            options = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the body must be JSON user_options") from None
        if not self.migrator.settings.store_url or not self.migrator.hub.configured:
            raise web.HTTPError(503, "this server is not started by a Cloudhop hub; nothing to migrate to")
        try:
            await self.migrator.check(options)
            m = self.migrator.start(options)
        except OptionError as err:
            raise web.HTTPError(getattr(err, "status", 400), str(err), reason="bad option") from None
        except Busy as err:
            raise web.HTTPError(409, str(err), reason="busy") from None
        self.set_status(202)
        self.set_header("Location", url_path_join(self.base_url, "cloudhop/api/migrations", m.id))
        self.finish(json.dumps(m.to_json()))


class MigrationHandler(MigrationAPIHandler):
    @web.authenticated
    @authorized
    async def get(self, mid):
        self.check_owner()
        m = self.migrator.migrations.get(mid)
        if m is None:
            raise web.HTTPError(404, "no such migration")
        self.finish(json.dumps(m.to_json()))
        self.migrator.seen(m)


class AcceptHandler(MigrationAPIHandler):
    """``POST .../migrations/{id}/accept``: the user accepts what a move awaiting it left
    out, so this server stops (200 with the move, now ``done``); 409 when the move does not
    wait for that or its target no longer runs, 502 when the hub cannot say."""

    @web.authenticated
    @authorized
    async def post(self, mid):
        self.check_owner()
        m = self.migrator.migrations.get(mid)
        if m is None:
            raise web.HTTPError(404, "no such migration")
        try:
            await self.migrator.accept(m)
        except NotAccepted as err:
            raise web.HTTPError(409, str(err), reason="not awaiting accept") from None
        except HubError as err:
            raise web.HTTPError(502, f"could not ask the hub whether the target runs: {err}") from None
        self.finish(json.dumps(m.to_json()))
        self.migrator.seen(m)


class RestoreHandler(MigrationAPIHandler):
    """``GET``: this server's restore report (404 when it restores none); with
    ``?wait=S`` the answer comes once the restore has ended, or after S seconds (at most
    :attr:`MAX_WAIT`) - a move's source learns the moment it is done, without polling.
    ``POST {"snapshot": id}``: restore that snapshot into this server now (202 with the
    report); 409 when this server already restores one. The restore reads the snapshot
    with this server's own token: only snapshots made for this server."""

    MAX_WAIT = 60

    @web.authenticated
    @authorized
    async def get(self):
        self.check_owner()
        if self.restorer is None or not self.restorer.started:
            raise web.HTTPError(404, "this server was not started from a snapshot")
        try:
            wait = float(self.get_argument("wait", "0"))
        except ValueError:
            raise web.HTTPError(400, "wait: must be a number of seconds") from None
        if not 0 <= wait < float("inf"):
            raise web.HTTPError(400, "wait: must be a number of seconds, 0 or more")
        report = await self.restorer.wait(min(wait, self.MAX_WAIT)) if wait else self.restorer.report
        self.finish(json.dumps(report.to_json()))

    @web.authenticated
    @authorized
    async def post(self):
        self.check_owner()
        sid = self.json_object('{"snapshot": "<id>"}').get("snapshot")
        if not isinstance(sid, str) or not SNAPSHOT.match(sid):
            raise web.HTTPError(400, "snapshot: must be a snapshot id (letters, digits, '-' and '_')")
        if self.restorer is None:
            raise web.HTTPError(503, "this server is not started by a Cloudhop hub; it restores nothing")
        try:
            self.restorer.start(sid)
        except ValueError as err:
            raise web.HTTPError(409, str(err), reason="already restoring") from None
        self.set_status(202)
        self.finish(json.dumps(self.restorer.report.to_json()))


class InfoHandler(MigrationAPIHandler):
    """Where this server runs (from the ``CLOUDHOP_*`` variables set at launch), what it
    costs (:class:`~.price.PriceLookup`: ``price_hour``, ``spot``, ``started``,
    ``spend``, ``price_note``), its moves, whether it was restored from a snapshot
    (``restored``: ``restore`` has its report) and whether it has a Ray cluster (``ray``:
    ``cloudhop/ray`` answers)."""

    def initialize(self, migrator: Migrator, restorer: Restorer | None = None, price: PriceLookup | None = None):
        super().initialize(migrator, restorer)
        self.price = price

    @web.authenticated
    @authorized
    async def get(self):
        from .ray_api import dashboard_port  # that module imports this one

        self.check_owner()
        env = os.environ
        cost = await self.price.get() if self.price is not None else {}
        self.finish(json.dumps({
            "user": env.get("JUPYTERHUB_USER"), "server": env.get("JUPYTERHUB_SERVER_NAME", ""),
            "provider": env.get("CLOUDHOP_PROVIDER"), "region": env.get("CLOUDHOP_REGION"),
            "instance_type": env.get("CLOUDHOP_INSTANCE_TYPE"), "gpu": env.get("CLOUDHOP_GPU"),
            "gpu_count": int(env.get("CLOUDHOP_GPU_COUNT") or 0), **cost,
            "restored": self.restorer is not None and self.restorer.started, "ray": dashboard_port() is not None,
            # the offer a spot interruption moved this server away from (:mod:`.preempt`)
            "rescued_from": env.get("CLOUDHOP_RESCUED_FROM") or None,
            "migrations": [m.to_json() for m in self.migrator.migrations.values()],
        }))


class GPUsHandler(CloudhopHandler):
    """This server's GPUs now (:func:`~.gpustats.sample`, NVML read in a thread)."""

    @web.authenticated
    @authorized
    async def get(self):
        self.check_owner()
        reading = await asyncio.get_running_loop().run_in_executor(None, gpustats.sample)
        self.finish(json.dumps(reading))


class OffersHandler(MigrationAPIHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.check_owner()
        try:
            offers = await self.migrator.hub.offers()
        except HubError as err:
            raise web.HTTPError(502, f"could not read offers from the hub: {err}") from None
        env = os.environ
        here = (env.get("CLOUDHOP_PROVIDER"), env.get("CLOUDHOP_REGION"), env.get("CLOUDHOP_GPU") or "none",
                int(env.get("CLOUDHOP_GPU_COUNT") or 0))
        # a move's choices as cloudhop.panel() lists them (cheapest first), less this place
        targets = [{"label": label, "options": o} for label, o in offer_choices(offers)
                   if (o["provider"], o["region"], o["gpu"], o["gpu_count"]) != here]
        settings = self.migrator.settings
        left_out = {"patterns": list(settings.exclude), "max_file_bytes": int(settings.max_file_bytes)}
        self.finish(json.dumps({"offers": offers, "targets": targets, "left_out": left_out}))


class UnsavedHandler(CloudhopHandler):
    """``POST cloudhop/api/unsaved``: a page's documents with unsaved changes (:mod:`.unsaved`)."""

    _track_activity = False  # a report is not the user's action (their typing was)

    def initialize(self, pages: UnsavedBook):
        self.pages = pages

    @web.authenticated
    @authorized
    async def post(self):
        body = self.json_object('{"client": "page id", "paths": ["analysis.ipynb"]}')
        client, paths = body.get("client"), body.get("paths")
        if not isinstance(client, str) or not 0 < len(client) <= 64:
            raise web.HTTPError(400, "client: must be a page's id, 1 to 64 characters")
        if not isinstance(paths, list) or not all(isinstance(p, str) and 0 < len(p) <= 4096 for p in paths):
            raise web.HTTPError(400, "paths: must be a list of the page's unsaved documents' paths")
        if len(paths) > MAX_PATHS:
            raise web.HTTPError(400, f"paths: at most {MAX_PATHS}")
        owner = getattr(self.current_user, "username", "") or ""
        try:
            self.pages.report(f"{owner}/{client}", paths)
        except ValueError as err:
            raise web.HTTPError(429, str(err)) from None
        self.finish(json.dumps({"unsaved": len(paths)}))
