"""The Cloudhop jupyter-server extension: REST API of a user's server.

::

    POST {server}/cloudhop/api/migrations          user_options -> 202 {"id", ...}; 409 if one runs
    GET  {server}/cloudhop/api/migrations/{id}     the migration's state (see migrate.Migration)
    POST {server}/cloudhop/api/migrations/{id}/accept   stop this server although the move left files out
    GET  {server}/cloudhop/api/restore             this server's restore report (?wait=S: once it ended)
    POST {server}/cloudhop/api/restore             {"snapshot": id}: restore it into this server now
    POST {server}/cloudhop/api/snapshots           snapshot this server into its own line (hibernate.py)
    GET  {server}/cloudhop/api/info                where this server runs (provider, region, GPU), its price and spend
    GET|POST {server}/cloudhop/api/activity        the cull the hub plans; POST: keep running (activity.py)
    GET  {server}/cloudhop/api/gpus                live use of this server's GPUs (NVML), or why there are none
    GET  {server}/cloudhop/api/offers              offers this user may move to (policy-filtered, from the hub),
                                                   a move's targets cheapest first, and what a move leaves out
    GET|POST|DELETE {server}/cloudhop/api/shares   this server's shares and share links (sharing.py)

The handlers are in :mod:`.handlers` (the server's owner only, under JupyterHub); the
Ray routes in :mod:`.ray_api`; the move's settings (``c.CloudhopMigration.*``) in
:mod:`.migrate`. This module wires the routes.
"""

from __future__ import annotations

import os

from jupyter_server.utils import url_path_join

from . import activity, ray_api, unsaved
from .examples import offer_examples
from .handlers import AcceptHandler
from .handlers import GPUsHandler, InfoHandler, MigrationHandler, MigrationsHandler, OffersHandler, RestoreHandler
from .hibernate import Hibernator, SnapshotsHandler
from .hubclient import HubClient
from .kernelenv import keep_token_from_children
from .migrate import CloudhopMigration, Migrator, Restorer
from .preempt import start_agent
from .price import PriceLookup
from .sharing import SharesHandler


def _load_jupyter_server_extension(serverapp):
    settings = CloudhopMigration(parent=serverapp).settings()
    hub = HubClient.from_env()
    # before anything starts a kernel or terminal: they get a token for this server only
    keep_token_from_children(serverapp, hub)
    migrator = Migrator(serverapp, hub, settings)
    restorer = Restorer(serverapp, hub, settings)  # or later: POST cloudhop/api/restore
    hibernator = Hibernator(serverapp, hub, settings)  # the one snapshot taker: the hub's stops, the spot agent
    snapshot_id = os.environ.get("CLOUDHOP_RESTORE")
    if snapshot_id:
        # runs once the server's event loop starts; the hub sees the server ready meanwhile
        serverapp.io_loop.add_callback(restorer.start, snapshot_id)
        serverapp.log.info("Cloudhop: restoring snapshot %s into this server", snapshot_id)
    kw = {"migrator": migrator, "restorer": restorer}
    base = url_path_join(serverapp.base_url, "cloudhop/api")
    serverapp.web_app.add_handlers(".*$", [
        (url_path_join(base, "migrations"), MigrationsHandler, kw),
        (url_path_join(base, r"migrations/([0-9a-f]{1,32})"), MigrationHandler, kw),
        (url_path_join(base, r"migrations/([0-9a-f]{1,32})/accept"), AcceptHandler, kw),
        (url_path_join(base, "restore"), RestoreHandler, kw),
        (url_path_join(base, "snapshots"), SnapshotsHandler, {"hibernator": hibernator}),
        (url_path_join(base, "info"), InfoHandler, dict(kw, price=PriceLookup(hub))),
        (url_path_join(base, "gpus"), GPUsHandler),
        (url_path_join(base, "offers"), OffersHandler, kw),
        (url_path_join(base, "shares"), SharesHandler, {"hub": hub}),
    ])
    ray_api.load(serverapp)  # Ray status, resize and dashboard routes (docs/ray.md)
    activity.load(serverapp, hub)  # activity reports and the cull warning (activity.py)
    unsaved.load(serverapp)  # pages' unsaved documents, saved before a snapshot (unsaved.py)
    offer_examples(serverapp)  # the example notebooks, once per new workspace (examples.py)
    start_agent(serverapp, hibernator, hub)  # on a spot node: the interruption notice (preempt/)
    serverapp.log.info("Cloudhop server extension loaded")
