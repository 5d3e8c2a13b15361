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
key the hub gave it (:class:`StoreLink`). Every call is awaited on tornado's async client:
nothing blocks the hub's loop. The spawner uses the same link for the spawn form's
"Start from" list (:func:`start_choices`) and for a ``"restore": "class:NAME"`` start
(:func:`class_copy`).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from jupyterhub.apihandlers.base import APIHandler
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .snapshot_classes import visible
from .snapshot_hub_routes import SCHEME
from .snapshot_store import SERVICE_NAME, SNAPSHOTS_SCOPE

#: the store service's environment variable holding the hub's key
KEY_ENV = "CLOUDHOP_STORE_HUB_KEY"


def new_key() -> str:
    return secrets.token_hex(32)


class StoreUnavailable(RuntimeError):
    """The store did not answer (down, restarting)."""


@dataclass
class StoreLink:
    """The hub's calls to the store service: ``url`` its base (``.../services/cloudhop-store/``)."""

    url: str
    key: str

    @classmethod
    def from_config(cls, config) -> "StoreLink | None":
        """The link to the store a hub ``config`` runs (None when it runs none)."""
        try:
            services = config.JupyterHub.services if "services" in config.JupyterHub else []
        except AttributeError:
            return None
        for service in services or []:
            if isinstance(service, dict) and service.get("name") == SERVICE_NAME:
                key = (service.get("environment") or {}).get(KEY_ENV)
                if key and service.get("url"):
                    return cls(service["url"].rstrip("/") + f"/services/{SERVICE_NAME}/", key)
        return None

    async def call(self, method: str, path: str, body: dict | None = None, *, timeout: float = 60):
        """``(status, JSON reply)`` of one call (an error status is returned, not raised)."""
        request = HTTPRequest(self.url + path, method=method,
                              headers={"Authorization": f"{SCHEME} {self.key}",
                                       "Content-Type": "application/json"},
                              body=json.dumps(body) if body is not None else (b"" if method == "POST" else None),
                              request_timeout=timeout, connect_timeout=min(timeout, 10))
        try:
            reply = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as err:
            raise StoreUnavailable(f"the snapshot store did not answer ({type(err).__name__})") from None
        if reply.code == 599:
            raise StoreUnavailable("the snapshot store did not answer")
        try:
            data = json.loads(reply.body or b"{}")
        except ValueError:
            data = {}
        return reply.code, data

    # -- the calls the hub makes ---------------------------------------------------------
    async def snapshots(self, user: str, server: str | None = None) -> list[dict]:
        query = "" if server is None else "?" + urlencode({"server": server})
        status, data = await self.call("GET", f"api/hub/users/{quote(user, safe='')}/snapshots{query}")
        if status != 200:
            raise StoreUnavailable(data.get("message") or f"the snapshot store answered {status}")
        return data.get("snapshots") or []

    async def classes(self) -> list[dict]:
        status, data = await self.call("GET", "api/hub/classes")
        if status != 200:
            raise StoreUnavailable(data.get("message") or f"the snapshot store answered {status}")
        return data.get("classes") or []

    async def restore(self, user: str, server: str, restore: str, groups: list[str]) -> tuple[int, dict]:
        """Let ``user``'s ``server`` restore ``restore`` (an id, ``class:NAME`` - a copy of
        the class is made for the user - or ``latest``): ``(status, {"id", "summary"})``."""
        return await self.call("POST", f"api/hub/users/{quote(user, safe='')}/restore",
                               {"server": server, "restore": restore, "groups": groups})


def add_hub_key(environment: dict) -> None:
    """Give the store service's ``environment`` the hub's key (a new one per hub start)."""
    environment[KEY_ENV] = new_key()


# -- what the spawner asks --------------------------------------------------------------
def _when(created) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(created)) if isinstance(created, (int, float)) else "?"


def choice_label(summary: dict) -> str:
    """``2026-12-04 09:12 UTC, 1.2 GiB, aws/us-east-1 A10G``: a snapshot as the form shows it."""
    from cloudhop.spawner.durable import size_text

    source = summary.get("source") or {}
    where = "/".join(p for p in (source.get("provider"), source.get("region")) if p)
    gpu = source.get("gpu")
    if gpu and gpu != "none":
        where = f"{where} {gpu}".strip()
    parts = [_when(summary.get("created")), size_text(int(summary.get("bytes") or 0))]
    if where:
        parts.append(where)
    if (summary.get("kernels") or {}).get("count"):
        parts.append(f"{summary['kernels']['count']} kernel(s)")
    return ", ".join(parts)


async def start_choices(config, user: str, server: str, groups: list[str]) -> dict:
    """The spawn form's "Start from" list: ``{"line": [{"value", "label"}], "classes":
    [...], "error": str | None}``; the newest of the line is the default (value ``""``)."""
    link = StoreLink.from_config(config)
    if link is None:
        return {"line": [], "classes": [], "error": None}
    try:
        line = await link.snapshots(user, server)
        records = await link.classes()
    except StoreUnavailable as err:
        return {"line": [], "classes": [], "error": str(err)}
    out = []
    for i, summary in enumerate(line):
        label = choice_label(summary)
        out.append({"value": "" if i == 0 else summary["id"],
                    "label": f"Last session ({label})" if i == 0 else f"{summary['id']} ({label})"})
    classes = [{"value": f"class:{r['name']}", "label": f"Class: {r['name']} ({choice_label(r.get('summary') or {})})"}
               for r in records if visible(r, groups) or r.get("owner") == user]
    return {"line": out, "classes": classes, "error": None}


async def class_copy(config, user: str, server: str, name: str, groups: list[str]) -> dict:
    """The user's own copy of class snapshot ``name`` in ``server``'s line, which that
    server may restore (its summary). Raises LookupError (404: not shared with the user,
    or no such class) or StoreUnavailable."""
    link = StoreLink.from_config(config)
    if link is None:
        raise StoreUnavailable("the hub runs no snapshot store")
    status, data = await link.restore(user, server, f"class:{name}", groups)
    if status == 404:
        raise LookupError(data.get("message") or f"restore: no class snapshot {name!r} is shared with you")
    if status != 200:
        raise StoreUnavailable(data.get("message") or f"the snapshot store answered {status}")
    return data["summary"]


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
        return bool(self.has_scope(f"admin:users!user={user_name}"))

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

