"""Sharing this server: JupyterHub's shares and share codes, made and revoked by its owner.

::

    GET    {server}/cloudhop/api/shares    {"shares": [{"kind", "name", "created_at"}],
                                            "codes": [{"id", "created_at", "expires_at", "exchange_count"}]}
    POST   {server}/cloudhop/api/shares    {"code": true, "expires_in": seconds}: a share link
                                           -> {"id", "code", "accept_url", "expires_at"}
                                           {"user": name} or {"group": name}: share with them
    DELETE {server}/cloudhop/api/shares    ?code=<id> (a link: no one new may join with it),
                                           ?user=<name>, ?group=<name>, or nothing (stop sharing:
                                           every share and every link)

Every call goes through the hub's API with this server's own token, which holds
``shares!server`` and ``read:users:name``/``read:groups:name`` (:mod:`cloudhop.hub.sharing`),
so a user can share this server and nothing else. Only the owner may call these routes,
and not with the kernels' token (:meth:`SharesHandler.check_not_kernels`): code in a
notebook cannot share the server behind its user's back.

A user the server is shared with runs code **as the owner** (kernels and terminals are the
owner's processes; docs/teaching.md). Revoking takes effect at once: the server forgets
the hub's cached answers about who may enter (:func:`forget_access`) and closes every
kernel and terminal connection that is not the owner's, so the next request of a user
who lost access is checked with the hub again and refused. Connections of users who keep
access reconnect on their own.
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote, urlencode

from jupyter_server.auth.decorator import authorized
from tornado import web

from .handlers import CloudhopHandler
from .hubclient import HubClient, HubError

#: a share link's life: JupyterHub's limits (one minute to one year), a day by default
MIN_EXPIRES, MAX_EXPIRES, DEFAULT_EXPIRES = 60, 365 * 86400, 86400


def _name(body: dict, key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > 255:
        raise web.HTTPError(400, f"{key}: a {key} name is needed, not {value!r}")
    return value.strip()


class SharesHandler(CloudhopHandler):
    """The routes above; the hub's answers are passed on, its refusals as 4xx naming why."""

    def initialize(self, hub: HubClient):
        self.hub = hub

    def check_owner(self) -> None:
        super().check_owner()
        self.check_not_kernels()

    def check_not_kernels(self) -> None:
        """Refuse the kernels' token (the one the server put in its kernels' environment,
        :mod:`.kernelenv`): sharing is the owner's act in their browser."""
        kernels = os.environ.get("JUPYTERHUB_API_TOKEN")
        header = self.request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        sent = value.strip() if scheme.lower() in ("token", "bearer") else self.get_argument("token", "")
        if kernels and sent == kernels:
            raise web.HTTPError(403, "a notebook's kernel may not share this server: share it from "
                                     "JupyterLab's Cloudhop sidebar")

    def _path(self, api: str) -> str:
        return f"/{api}/{quote(self.hub.user, safe='')}/{quote(self.hub.server_name, safe='')}"

    async def _hub(self, method: str, path: str, body=None):
        try:
            return await self.hub.request(method, path, body, timeout=30)
        except HubError as err:
            status = err.status if err.status in (400, 403, 404) else 502
            raise web.HTTPError(status, f"the hub refused: {err.message}" if err.status else str(err)) from None

    @web.authenticated
    @authorized
    async def get(self):
        self.check_owner()
        shares = await self._hub("GET", self._path("shares"))
        codes = await self._hub("GET", self._path("share-codes"))
        self.finish(json.dumps({
            "shares": [{"kind": s["kind"], "name": (s.get(s["kind"]) or {}).get("name"),
                        "created_at": s.get("created_at")} for s in shares.get("items", [])],
            "codes": [{k: c.get(k) for k in ("id", "created_at", "expires_at", "exchange_count")}
                      for c in codes.get("items", [])],
        }))

    @web.authenticated
    @authorized
    async def post(self):
        self.check_owner()
        body = self.json_object('{"code": true, "expires_in": 86400}')
        if sum(k in body for k in ("code", "user", "group")) != 1:
            raise web.HTTPError(400, 'give one of "code": true, "user": name or "group": name')
        if "code" in body:
            expires = body.get("expires_in", DEFAULT_EXPIRES)
            if isinstance(expires, bool) or not isinstance(expires, int) or not MIN_EXPIRES <= expires <= MAX_EXPIRES:
                raise web.HTTPError(400, f"expires_in: seconds from {MIN_EXPIRES} to {MAX_EXPIRES}, not {expires!r}")
            made = await self._hub("POST", self._path("share-codes"), {"expires_in": expires})
            self.finish(json.dumps({k: made.get(k) for k in ("id", "code", "accept_url", "full_accept_url", "expires_at")}))
            return
        kind = "user" if "user" in body else "group"
        name = _name(body, kind)
        if kind == "user" and name == self.hub.user:
            raise web.HTTPError(400, "user: this is your own server")
        share = await self._hub("POST", self._path("shares"), {kind: name})
        forget_hub_answers(self)  # they may have been refused a moment ago: let them in now
        self.finish(json.dumps({"kind": kind, "name": name, "created_at": share.get("created_at")}))

    @web.authenticated
    @authorized
    async def delete(self):
        self.check_owner()
        code, user, group = (self.get_argument(k, None) for k in ("code", "user", "group"))
        if code:
            await self._hub("DELETE", self._path("share-codes") + "?" + urlencode({"id": code}))
        elif user or group:
            await self._hub("PATCH", self._path("shares"), {"user": user} if user else {"group": group})
        else:
            await self._hub("DELETE", self._path("share-codes"))
            await self._hub("DELETE", self._path("shares"))
        if not code:  # a deleted link takes nobody's access away
            forget_access(self)
        self.set_status(204)
        self.finish()


def forget_access(handler: web.RequestHandler, owner: str | None = None) -> int:
    """Make the next request of every user but the owner be checked with the hub again:
    forget the hub's cached answers, and close the open kernel and terminal connections
    that are not the owner's. Returns how many connections were closed."""
    owner = owner or os.environ.get("JUPYTERHUB_USER")
    forget_hub_answers(handler)
    closed = 0
    for socket in _open_sockets(handler.settings):
        user = getattr(socket, "current_user", None)
        if getattr(user, "username", None) != owner:
            socket.close(4003, "access to this server was revoked")
            closed += 1
    handler.log.info("Cloudhop: access revoked; %d connection(s) of other users closed", closed)
    return closed


def forget_hub_answers(handler: web.RequestHandler) -> None:
    """Forget what the hub answered about users' tokens (JupyterHub caches it for 5
    minutes), so a change of who may enter counts from the next request."""
    hub_auth = getattr(handler.identity_provider, "hub_auth", None)
    if hub_auth is not None:
        hub_auth.cache.clear()


def _open_sockets(settings: dict) -> list:
    """The open websocket handlers of kernels and terminals."""
    sockets = []
    try:
        from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection

        sockets += [c.websocket_handler for c in list(ZMQChannelsWebsocketConnection._open_sockets)]
    except ImportError:  # pragma: no cover - an older jupyter_server
        pass
    terminals = settings.get("terminal_manager")
    for term in list(getattr(terminals, "ptys_by_name", {}).values()):
        sockets += list(getattr(term, "clients", []))
    return sockets
