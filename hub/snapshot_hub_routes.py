"""The snapshot store's routes for the hub itself (not for users' tokens).

The hub's own APIs (:mod:`.snapshots_api`) and its spawner decide *who* may do what
(the owner, an admin, a member of a class's group: the hub knows users, admins and
groups); these routes then do it in the store, the one process that writes it. They are
authenticated by a secret the hub makes at each start and hands only to the service's
environment and its own calls (``Authorization: cloudhop-hub <key>``,
``CLOUDHOP_STORE_HUB_KEY``); it never reaches a user's server::

    GET    api/hub/users/{user}/snapshots[?server=NAME]   {"snapshots": [summary, ...]} newest first
    DELETE api/hub/users/{user}/snapshots/{id}            204; 404 when there is none
    POST   api/hub/users/{user}/restore   {"server", "restore", "groups"} -> {"id", "summary"}:
           "restore" is a snapshot id of the user's, "class:NAME" (the user's own copy is
           made: 404 unless shared with "groups") or "latest" (the newest of the server's
           line; {"id": null} when it has none); the server may then restore it
    POST   api/hub/users/{user}/collect                   collect the user's chunks (and the class
           publications they borrow from) now -> figures
    GET    api/hub/classes                                {"classes": [record, ...]}
    POST   api/hub/classes  {"owner", "snapshot", "name", "share", "replace", "admin", "server"?}
           -> 201 record ("server": the publishing token's server, whose snapshot it must be)
    DELETE api/hub/classes/{name}?by=USER[&admin=1]       revoke -> record; 404, or 403 for another's
"""

from __future__ import annotations

import hmac
from urllib.parse import unquote

from tornado import web

from . import snapshot_classes as classes
from . import snapshot_line as line
from .snapshot_link import SCHEME
from .snapshot_store import Grant, SnapshotHandler, StoreHandler


class HubRouteHandler(StoreHandler):
    """Base: the request carries the hub's key; the path's user (if any) is taken as is."""

    def initialize(self, hub_key: str, **kw):
        super().initialize(**kw)
        self.hub_key = hub_key

    async def prepare(self):
        given = self.request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"{SCHEME} {self.hub_key}".encode()):
            raise web.HTTPError(403, "these routes are the hub's own")
        self.user = unquote(self.path_kwargs.get("user", ""))
        self.grant = Grant(full=True, servers=frozenset())

    def server_arg(self, value) -> str:
        if not isinstance(value, str) or "/" in value or len(value) > 255:
            raise web.HTTPError(400, "server: must be the name of one of the user's servers ('' for the default one)")
        return value


class HubSnapshotsHandler(HubRouteHandler):
    async def get(self, user):
        server = self.get_query_argument("server", None)
        if server is not None:
            self.server_arg(server)
        self.finish_json({"snapshots": await self.call(
            lambda: line.list_snapshots(self.backend, self.user, server=server))})


class HubSnapshotHandler(HubRouteHandler):
    async def delete(self, user, sid):
        sid = SnapshotHandler.sid(sid)
        if not await self.keep(self.keeper.delete(self.user, sid)):
            raise web.HTTPError(404, f"no snapshot {sid}")
        self.set_status(204)
        self.finish()


class HubRestoreHandler(HubRouteHandler):
    async def post(self, user):
        body = self.json_body()
        server = self.server_arg(body.get("server", ""))
        restore = body.get("restore")
        groups = body.get("groups") or []
        if not isinstance(restore, str):
            raise web.HTTPError(400, "restore: must be a snapshot id, 'class:NAME' or 'latest'")
        if restore.startswith("class:"):
            summary = await self.keep(self.keeper.copy_for(self.user, restore[len("class:"):], groups, server=server))
        elif restore == "latest":
            found = await self.call(lambda: line.list_snapshots(self.backend, self.user, server=server))
            if not found:
                self.finish_json({"id": None, "summary": None})
                return
            summary = found[0]
        else:
            sid = SnapshotHandler.sid(restore)
            summary = await self.call(line.read_summary, self.backend, self.user, sid)
            if summary is None:  # the same answer for another user's id: ids are per user
                raise web.HTTPError(404, f"restore: {self.user} has no snapshot {sid!r}")
        await self.add_to_index(server, summary["id"])
        self.finish_json({"id": summary["id"], "summary": summary})


class HubCollectHandler(HubRouteHandler):
    async def post(self, user):
        mine, *pubs = await self.keep(self.keeper.collect(self.user))
        self.finish_json({"user": mine.to_dict(), "publications": [p.to_dict() for p in pubs],
                          "usage": await self.quotas.usage(self.user)})


class HubClassesHandler(HubRouteHandler):
    async def get(self):
        self.finish_json({"classes": await self.call(classes.list_records, self.backend)})

    async def post(self):
        body = self.json_body()
        owner, sid = body.get("owner"), SnapshotHandler.sid(body.get("snapshot"))
        if not isinstance(owner, str) or not owner:
            raise web.HTTPError(400, "owner: must be the publishing user's name")
        if body.get("server") is not None:  # published with a server's token: only its snapshots
            self.user = owner
            if sid not in await self.made_for(self.server_arg(body["server"])):
                raise web.HTTPError(404, f"snapshot: the server has no snapshot {sid!r}")
        record = await self.keep(self.keeper.publish(
            owner, sid, body.get("name"), body.get("share"), replace=body.get("replace") is True,
            admin=body.get("admin") is True))
        self.finish_json(record, 201)


class HubClassHandler(HubRouteHandler):
    async def delete(self, name):
        by, admin = self.get_query_argument("by", ""), self.get_query_argument("admin", "") == "1"
        try:
            record = await self.call(classes.get_record, self.backend, unquote(name))
        except classes.ClassError as err:
            raise web.HTTPError(400, str(err)) from None
        if record is None:
            raise web.HTTPError(404, f"no class snapshot {unquote(name)!r}")
        if record.get("owner") != by and not admin:
            raise web.HTTPError(403, f"the class snapshot {record['name']!r} was published by another user")
        self.finish_json(await self.keep(self.keeper.revoke(record["name"])))


def hub_routes(prefix: str, kw: dict) -> list[tuple]:
    """The routes above, under the store's ``prefix``; ``kw``: the handlers' arguments
    (the store's, plus ``hub_key``)."""
    u = r"(?P<user>[^/]+)"
    return [
        (rf"{prefix}api/hub/users/{u}/snapshots", HubSnapshotsHandler, kw),
        (rf"{prefix}api/hub/users/{u}/snapshots/(?P<sid>[^/]+)", HubSnapshotHandler, kw),
        (rf"{prefix}api/hub/users/{u}/restore", HubRestoreHandler, kw),
        (rf"{prefix}api/hub/users/{u}/collect", HubCollectHandler, kw),
        (rf"{prefix}api/hub/classes", HubClassesHandler, kw),
        (rf"{prefix}api/hub/classes/(?P<name>[^/]+)", HubClassHandler, kw),
    ]
