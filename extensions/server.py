"""The Cloudhop jupyter-server extension: REST API of a user's server.

::

    POST {server}/cloudhop/api/migrations          user_options -> 202 {"id", ...}; 409 if one runs
    GET  {server}/cloudhop/api/migrations/{id}     the migration's state (see migrate.Migration)
    GET  {server}/cloudhop/api/restore             this server's restore report (a migration target)
    GET  {server}/cloudhop/api/info                where this server runs (provider, region, GPU)
    GET  {server}/cloudhop/api/offers              offers this user may move to (policy-filtered, from the hub)

Every handler needs the server's normal authentication and (for POST) XSRF protection;
under JupyterHub only the server's owner may use them, not users it is shared with.
"""

from __future__ import annotations

import json
import math
import os

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from traitlets import Float, List, Unicode
from traitlets.config import Configurable

from . import ray_api
from .hubclient import HubClient, HubError
from .migrate import Busy, Migrator, OptionError, Restorer, Settings
from .snapshot import Excludes
from .snapshot.excludes import DEFAULT_MAX_FILE_BYTES, DEFAULT_PATTERNS


def _default_store_url(env) -> str:
    """The store as the hub announced it; a server of the local provider runs on the
    hub's machine and reaches the service directly instead of through the proxy."""
    if env.get("CLOUDHOP_PROVIDER") == "local" and env.get("CLOUDHOP_STORE_LOCAL_URL"):
        return env["CLOUDHOP_STORE_LOCAL_URL"]
    return env.get("CLOUDHOP_STORE_URL", "")


class CloudhopMigration(Configurable):
    """Settings of migrations from and into this server (``c.CloudhopMigration.*``)."""

    store_url = Unicode(
        help="URL of the hub's snapshot store service. Default: $CLOUDHOP_STORE_URL, set by the "
        "hub ($CLOUDHOP_STORE_LOCAL_URL on the local provider, whose servers share the hub's host).",
    ).tag(config=True)
    launch_timeout = Float(900, help="Seconds to wait for the target server to start.").tag(config=True)
    restore_timeout = Float(1800, help="Seconds to wait for the target to restore files and kernels.").tag(config=True)
    kernel_timeout = Float(600, help="Seconds one kernel may take to checkpoint or restore "
                           "(including waiting for a cell that is running).").tag(config=True)
    stop_delay = Float(10, help="Seconds the source keeps running after a migration is done, "
                       "until a client has read the final state.").tag(config=True)
    exclude = List(Unicode(), list(DEFAULT_PATTERNS),
                   help="Glob patterns of workspace paths a snapshot leaves out.").tag(config=True)
    max_file_bytes = Float(DEFAULT_MAX_FILE_BYTES, help="Files larger than this (bytes) are left out "
                           "of a snapshot, with a warning.").tag(config=True)

    def settings(self) -> Settings:
        """The checked settings (:class:`Settings` names a bad one as ``c.CloudhopMigration.<name>``)."""
        limit = self.max_file_bytes
        # NaN or infinity has no int(): pass it on as is, for Settings to refuse by name
        limit = int(limit) if math.isfinite(limit) else limit
        return Settings(
            store_url=self.store_url or _default_store_url(os.environ),
            launch_timeout=self.launch_timeout, restore_timeout=self.restore_timeout,
            kernel_timeout=self.kernel_timeout, stop_delay=self.stop_delay,
            excludes=Excludes(patterns=tuple(self.exclude), max_file_bytes=limit),
        )


class CloudhopHandler(APIHandler):
    auth_resource = "cloudhop"

    def initialize(self, migrator: Migrator, restorer: Restorer | None = None):
        self.migrator = migrator
        self.restorer = restorer

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


class MigrationsHandler(CloudhopHandler):
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


class MigrationHandler(CloudhopHandler):
    @web.authenticated
    @authorized
    async def get(self, mid):
        self.check_owner()
        m = self.migrator.migrations.get(mid)
        if m is None:
            raise web.HTTPError(404, "no such migration")
        self.finish(json.dumps(m.to_json()))
        self.migrator.seen(m)


class RestoreHandler(CloudhopHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.check_owner()
        if self.restorer is None:
            raise web.HTTPError(404, "this server was not started from a snapshot")
        self.finish(json.dumps(self.restorer.report))


class InfoHandler(CloudhopHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.check_owner()
        env = os.environ
        self.finish(json.dumps({
            "user": env.get("JUPYTERHUB_USER"), "server": env.get("JUPYTERHUB_SERVER_NAME", ""),
            "provider": env.get("CLOUDHOP_PROVIDER"), "region": env.get("CLOUDHOP_REGION"),
            "instance_type": env.get("CLOUDHOP_INSTANCE_TYPE"), "gpu": env.get("CLOUDHOP_GPU"),
            "gpu_count": int(env.get("CLOUDHOP_GPU_COUNT") or 0),
            "migrations": [m.to_json() for m in self.migrator.migrations.values()],
        }))


class OffersHandler(CloudhopHandler):
    @web.authenticated
    @authorized
    async def get(self):
        self.check_owner()
        try:
            offers = await self.migrator.hub.offers()
        except HubError as err:
            raise web.HTTPError(502, f"could not read offers from the hub: {err}") from None
        self.finish(json.dumps({"offers": offers}))


def _load_jupyter_server_extension(serverapp):
    conf = CloudhopMigration(parent=serverapp)
    hub = HubClient.from_env()
    settings = conf.settings()
    migrator = Migrator(serverapp, hub, settings)
    restorer = None
    snapshot_id = os.environ.get("CLOUDHOP_RESTORE")
    if snapshot_id:
        restorer = Restorer(serverapp, hub, settings, snapshot_id)
        # runs once the server's event loop starts; the hub sees the server ready meanwhile
        serverapp.io_loop.add_callback(restorer.run)
        serverapp.log.info("Cloudhop: restoring snapshot %s into this server", snapshot_id)
    kw = {"migrator": migrator, "restorer": restorer}
    base = url_path_join(serverapp.base_url, "cloudhop/api")
    serverapp.web_app.add_handlers(".*$", [
        (url_path_join(base, "migrations"), MigrationsHandler, kw),
        (url_path_join(base, r"migrations/([0-9a-f]{1,32})"), MigrationHandler, kw),
        (url_path_join(base, "restore"), RestoreHandler, kw),
        (url_path_join(base, "info"), InfoHandler, kw),
        (url_path_join(base, "offers"), OffersHandler, kw),
    ])
    ray_api.load(serverapp)  # Ray status, resize and dashboard routes (docs/ray.md)
    serverapp.log.info("Cloudhop server extension loaded")
