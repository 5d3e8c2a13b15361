"""The hub's snapshot API: each server's line of snapshots and class snapshots.

    GET    /hub/api/cloudhop/snapshots/{user}[?server=NAME]  -> {"snapshots": [summary, ...]}
           newest first (summary: :mod:`.snapshot_line`): the owner (a server's own token:
           only its server's line) or an admin; anyone else 404, as for no such user
    DELETE /hub/api/cloudhop/snapshots/{user}/{id}      -> 204: the owner only (a token for
           all of their snapshots); 404 for anyone else and for no such snapshot
    GET    /hub/api/cloudhop/classes                    -> {"classes": [record, ...]} the class
           snapshots the caller may start from (shared with them, or theirs)
    POST   /hub/api/cloudhop/classes  {"snapshot", "name", "share", "replace"?} -> 201 record:
           an admin, or a member of ``c.CloudhopStore.class_publishers``, publishes one of
           their snapshots (with a server's token: one made for that server); an existing
           name needs ``"replace": true`` (409 without)
    DELETE /hub/api/cloudhop/classes/{name}             -> the revoked record: its publisher or
           an admin; students' copies stay

The hub decides who may do what (it knows users, admins and groups); the store service
does it, through its routes for the hub (:mod:`.snapshot_hub_routes`), called with the
key the hub gave it (:mod:`.snapshot_link`). Every call is awaited on tornado's async
client: nothing blocks the hub's loop.
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlencode

from jupyterhub.apihandlers.base import APIHandler
from tornado import web

from .snapshot_classes import visible
from .snapshot_link import StoreLink, StoreUnavailable
from .snapshot_store import SNAPSHOTS_SCOPE

# -- the hub's API -------------------------------------------------------------------------
class _SnapshotAPI(APIHandler):
    def link(self) -> StoreLink:
        link = StoreLink.from_config(self.settings.get("config"))
        if link is None:
            raise web.HTTPError(404, "this hub runs no snapshot store")
        return link

    def me(self):
        me = self.current_user
        if me is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        return me

    def is_admin_of(self, user_name: str) -> bool:
        # no hub user's name holds a "/"; the store's class namespaces do
        return "/" not in user_name and bool(self.has_scope(f"admin:users!user={user_name}"))

    def owns(self, user_name: str) -> bool:
        me = self.current_user
        return getattr(me, "kind", None) == "user" and me.name == user_name

    async def store(self, method: str, path: str, body=None):
        try:
            status, data = await self.link().call(method, path, body)
        except StoreUnavailable as err:
            raise web.HTTPError(503, str(err)) from None
        if status >= 400:
            raise web.HTTPError(status, data.get("message") or "the snapshot store refused")
        return status, data

    def reply(self, status: int, body) -> None:
        self.set_status(status)
        if status == 204:
            self.finish()
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class SnapshotsAPIHandler(_SnapshotAPI):
    async def get(self, user_name: str):
        self.me()
        server = self.get_query_argument("server", None)
        if self.owns(user_name) and self.has_scope(f"{SNAPSHOTS_SCOPE}!user={user_name}"):
            pass
        elif self.owns(user_name) and server is not None and self.has_scope(
                f"{SNAPSHOTS_SCOPE}!server={user_name}/{server}"):
            pass  # a server's own token: its own line
        elif not self.is_admin_of(user_name):
            raise web.HTTPError(404, f"No snapshots of {user_name!r} this token may read")
        if server is not None and ("/" in server or len(server) > 255):
            raise web.HTTPError(400, "server: must be the name of one of the user's servers ('' for the default one)")
        query = "" if server is None else "?" + urlencode({"server": server})
        _, data = await self.store("GET", f"api/hub/users/{quote(user_name, safe='')}/snapshots{query}")
        self.reply(200, data)


class SnapshotAPIHandler(_SnapshotAPI):
    async def delete(self, user_name: str, sid: str):
        self.me()
        if not self.owns(user_name):
            raise web.HTTPError(404, f"No snapshot {sid!r} of {user_name!r} this token may delete")
        if not self.has_scope(f"{SNAPSHOTS_SCOPE}!user={user_name}"):
            raise web.HTTPError(403, f"only a token for all of {user_name}'s snapshots may delete one "
                                     f"(it lacks {SNAPSHOTS_SCOPE}!user)")
        await self.store("DELETE", f"api/hub/users/{quote(user_name, safe='')}/snapshots/{quote(sid, safe='')}")
        self.reply(204, None)


def publishers(config) -> list[str]:
    from .config import CloudhopStore

    return list(CloudhopStore(config=config).class_publishers)


class ClassesAPIHandler(_SnapshotAPI):
    def groups(self, me) -> list[str]:
        return [g.name for g in getattr(me, "groups", None) or []]

    async def get(self):
        me = self.me()
        _, data = await self.store("GET", "api/hub/classes")
        mine = [r for r in data.get("classes") or []
                if getattr(me, "kind", None) == "user"
                and (visible(r, self.groups(me)) or r.get("owner") == me.name or me.admin)]
        self.reply(200, {"classes": mine})

    async def post(self):
        me = self.me()
        if getattr(me, "kind", None) != "user":
            raise web.HTTPError(403, "only users publish class snapshots")
        allowed = publishers(self.settings.get("config"))
        if not (me.admin or set(self.groups(me)) & set(allowed)):
            raise web.HTTPError(403, "publishing a class snapshot needs an admin or a member of "
                                     f"c.CloudhopStore.class_publishers ({', '.join(allowed) or 'none set'})")
        body = self.get_json_body() or {}
        if not isinstance(body, dict):
            raise web.HTTPError(400, 'body must be JSON like {"snapshot": ID, "name": "week3", "share": "all"}')
        unknown = sorted(set(body) - {"snapshot", "name", "share", "replace"})
        if unknown:
            raise web.HTTPError(400, f"{unknown[0]}: unknown field; the fields are snapshot, name, share, replace")
        if "replace" in body and not isinstance(body["replace"], bool):
            raise web.HTTPError(400, "replace: must be true or false")
        server = None
        if not self.has_scope(f"{SNAPSHOTS_SCOPE}!user={me.name}"):
            # a server's own token may publish only the snapshots made for its server
            prefix = f"{SNAPSHOTS_SCOPE}!server={me.name}/"
            servers = [s[len(prefix):] for s in self.expanded_scopes if s.startswith(prefix)]
            if len(servers) != 1:
                raise web.HTTPError(403, f"publishing needs a token that may use the snapshot ({SNAPSHOTS_SCOPE})")
            server = servers[0]
        _, record = await self.store("POST", "api/hub/classes", {
            "owner": me.name, "snapshot": body.get("snapshot"), "name": body.get("name"),
            "share": body.get("share"), "replace": body.get("replace") is True, "admin": bool(me.admin),
            "server": server})
        self.reply(201, record)


class ClassAPIHandler(_SnapshotAPI):
    async def delete(self, name: str):
        me = self.me()
        if getattr(me, "kind", None) != "user":
            raise web.HTTPError(403, "only users revoke class snapshots")
        query = urlencode({"by": me.name, **({"admin": "1"} if me.admin else {})})
        _, record = await self.store("DELETE", f"api/hub/classes/{quote(name, safe='')}?{query}")
        self.reply(200, record)


def handlers() -> list[tuple]:
    """Routes for ``c.JupyterHub.extra_handlers`` (the hub prefixes them with /hub/)."""
    return [
        (r"/api/cloudhop/snapshots/([^/]+)/?", SnapshotsAPIHandler),
        (r"/api/cloudhop/snapshots/([^/]+)/([^/]+)/?", SnapshotAPIHandler),
        (r"/api/cloudhop/classes/?", ClassesAPIHandler),
        (r"/api/cloudhop/classes/([^/]+)/?", ClassAPIHandler),
    ]

