"""The one client of the hub's REST API that Cloudhop's own processes use: a user's
server (moves, offers, its Ray cluster) and the hub's reaper service (every user's
servers). Asynchronous (tornado's client), so it never blocks an event loop.

A user's server calls with its own token (``JUPYTERHUB_API_TOKEN`` as the hub started it;
:func:`hold_server_token` keeps it for this process and takes it out of what kernels
inherit). That token cannot start or stop the user's other servers
(:data:`cloudhop.hub.tokens_api.SERVER_TOKEN_SCOPES`): for a move it asks the hub for a
short-lived token of its own (:meth:`HubClient.move_token`), which starts and follows the
one new server (:meth:`HubClient.with_token`). The reaper calls with its service token
(:data:`cloudhop.hub.reaper.SCOPES`) and no user, the move reconciler with its own
(:data:`cloudhop.hub.move_reconciler.SCOPES`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

#: the media type that makes the hub's list endpoints answer one page with ``_pagination``
PAGINATION = "application/jupyterhub-pagination+json"
#: seconds a page of users may take before a backing-off reader waits (:attr:`HubClient.back_off`)
SLOW_PAGE = 0.5
#: the longest wait between two pages
MAX_PAUSE = 10.0
#: the variables the hub hands a server its own token in
TOKEN_VARS = ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN")
#: this process's own hub token, once :func:`hold_server_token` took it out of os.environ
_held: dict[str, str] = {}


def hold_server_token(env=os.environ) -> str:
    """Take the server's own token out of ``env`` (every :data:`TOKEN_VARS`), so the
    processes it starts later (kernels, terminals) do not inherit it, and keep it for
    :meth:`HubClient.from_env` in this process. Returns it ("" when there is none);
    calling again returns the one kept."""
    token = env.get("JUPYTERHUB_API_TOKEN") or env.get("JPY_API_TOKEN") or ""
    for name in TOKEN_VARS:
        env.pop(name, None)
    if token:
        _held["token"] = token
    return _held.get("token", "")


class HubError(RuntimeError):
    """The hub refused a request, or could not be reached.

    ``status`` is the HTTP status (None when the hub was not reached), ``message`` the
    hub's own message (its JSON ``message``, else the HTTP reason), ``field`` the option
    it names when its reply has one (else None). ``str()`` gives
    ``"hub: <status> <message>"`` or ``"hub unreachable: <reason>"``."""

    def __init__(self, status: int | None, message: str, field: str | None = None):
        super().__init__(f"hub: {status} {message}" if status is not None else f"hub unreachable: {message}")
        self.status = status
        self.message = message
        self.field = field


class HubClient:
    """Calls to the hub API at ``api_url`` (``.../hub/api``) with ``token``; ``user`` and
    ``server_name`` are the server this client speaks for (empty for a service)."""

    def __init__(self, api_url: str, token: str, user: str = "", server_name: str = ""):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.user = user
        self.server_name = server_name
        #: a background reader (the reaper, the culler) sets this: :meth:`users` then
        #: waits after a slow page (:data:`SLOW_PAGE`) as long as that page took, so it
        #: takes at most about half of a busy hub's time
        self.back_off = False
        #: the last :meth:`users` listing: pages, seconds the hub took, seconds waited
        self.listing: dict = {}
        self.sleep = asyncio.sleep

    @classmethod
    def from_env(cls, env=os.environ) -> "HubClient":
        """The client of the server (or service) the hub started with this environment;
        in a server whose own token was held (:func:`hold_server_token`), with that token."""
        token = _held.get("token") if env is os.environ and _held else env.get("JUPYTERHUB_API_TOKEN", "")
        return cls(env.get("JUPYTERHUB_API_URL", ""), token or "",
                   env.get("JUPYTERHUB_USER", ""), env.get("JUPYTERHUB_SERVER_NAME", ""))

    def with_token(self, token: str) -> "HubClient":
        """The same server's client calling with ``token`` (a move's token)."""
        return HubClient(self.api_url, token, self.user, self.server_name)

    @property
    def configured(self) -> bool:
        return bool(self.api_url and self.token and self.user)

    def _server_path(self, name: str) -> str:
        user = quote(self.user, safe="")
        return f"/users/{user}/servers/{quote(name, safe='')}" if name else f"/users/{user}/server"

    async def request(self, method: str, path: str, body=None, timeout: float = 60,
                      accept: str | None = None):
        """``method`` ``path`` (under ``api_url``) with a JSON ``body``; returns the JSON
        reply (None when empty). Raises :class:`HubError`."""
        headers = {"Authorization": f"token {self.token}", "Content-Type": "application/json"}
        if accept:
            headers["Accept"] = accept
        req = HTTPRequest(
            self.api_url + path, method=method, request_timeout=timeout, headers=headers,
            body=None if body is None else json.dumps(body), allow_nonstandard_methods=True,
        )
        resp = await self._fetch(req)
        return json.loads(resp.body) if resp.body else None

    @staticmethod
    async def _fetch(req: HTTPRequest):
        """Send ``req``; raises :class:`HubError` for a refusal or an unreachable hub."""
        try:
            return await AsyncHTTPClient().fetch(req)
        except HTTPClientError as err:
            message, field = err.message, None
            if err.response is not None and err.response.body:
                try:
                    reply = json.loads(err.response.body)
                    message = reply.get("message") or message
                    field = reply.get("field") if isinstance(reply.get("field"), str) else None
                except (ValueError, AttributeError):
                    pass
            raise HubError(err.code, str(message), field) from None
        except OSError as err:
            raise HubError(None, str(err)) from None

    # -- a user's servers ---------------------------------------------------------------
    async def start_server(self, name: str, options: dict) -> None:
        await self.request("POST", self._server_path(name), options)

    async def stop_server(self, name: str, remove: bool = False) -> None:
        await self.request("DELETE", self._server_path(name), {"remove": True} if remove and name else None)

    async def server(self, name: str) -> dict | None:
        """The hub's model of this user's server ``name`` (None when it has none); the
        token needs ``read:servers`` on that server only."""
        try:
            return await self.request("GET", f"/users/{quote(self.user, safe='')}/servers/{quote(name, safe='')}")
        except HubError as err:
            if err.status == 404:
                return None
            raise

    async def wait_ready(self, name: str, timeout: float) -> str:
        """Follow the hub's progress stream of this user's server ``name`` (``GET
        .../servers/{name}/progress``, ``read:servers`` on it) until its start ends: the hub
        tells the moment it is ready, with no polling. Returns the server's URL (its path).
        Raises RuntimeError with the hub's message when the start failed or the stream ended
        without saying, HubError when the hub refused (400: the server is not starting)
        or could not be reached, TimeoutError after ``timeout`` seconds."""
        events: list[dict] = []
        pending = b""

        def on_chunk(data: bytes) -> None:
            nonlocal pending
            pending += data
            while b"\n\n" in pending:
                block, pending = pending.split(b"\n\n", 1)
                for line in block.split(b"\n"):
                    if line.startswith(b"data:"):
                        try:
                            events.append(json.loads(line[5:]))
                        except ValueError:
                            pass

        user = quote(self.user, safe="")
        req = HTTPRequest(f"{self.api_url}/users/{user}/servers/{quote(name, safe='')}/progress",
                          headers={"Authorization": f"token {self.token}", "Accept": "text/event-stream"},
                          request_timeout=timeout, streaming_callback=on_chunk)
        try:
            await self._fetch(req)
        except HubError as err:
            if err.status == 599 and "timeout" in err.message.lower():
                raise TimeoutError(f"the server {name!r} did not start in {timeout:.0f} s") from None
            raise
        for event in reversed(events):
            if event.get("ready"):
                return event.get("url") or ""
            if event.get("failed"):
                raise RuntimeError(event.get("message") or "the start failed")
        raise RuntimeError(f"the hub's progress of the server {name!r} ended before it was ready")

    # -- Cloudhop's hub endpoints -------------------------------------------------------
    async def offers(self) -> list[dict]:
        """The offers this user may launch, after policy (the hub's offers endpoint)."""
        reply = await self.request("GET", f"/cloudhop/offers/{quote(self.user, safe='')}")
        return reply["offers"]

    async def check_options(self, options: dict) -> dict:
        """Validate user_options as a spawn would (offers and policy); raises HubError
        with status 400/403 and a message naming the field."""
        reply = await self.request("POST", f"/cloudhop/offers/{quote(self.user, safe='')}/check", options)
        return reply["request"]

    def _own_path(self, api: str) -> str:
        """``/cloudhop/<api>/<user>[/<server>]``: a Cloudhop hub endpoint for this server."""
        server = f"/{quote(self.server_name, safe='')}" if self.server_name else ""
        return f"/cloudhop/{api}/{quote(self.user, safe='')}{server}"

    def _ray_path(self) -> str:
        return self._own_path("ray")

    async def move_token(self, target: str, expires_in: int) -> dict:
        """A short-lived token for a move of this server to the new server ``target``
        (:mod:`cloudhop.hub.tokens_api`): ``{"token", "target", "expires_at", "scopes"}``."""
        return await self.request("POST", self._own_path("moves"), {"target": target, "expires_in": expires_in})

    async def report_move(self, change: dict) -> dict:
        """Report a change of this server's move ``change["move"]`` to the hub's record
        (:mod:`cloudhop.hub.tokens_api`): the ``phase`` it enters (and the ``error`` it
        failed with), or, from the reconciler, ``settled``. Returns the record; a
        refusal (409: the hub ended the move) raises HubError."""
        return await self.request("PATCH", self._own_path("moves"), change, timeout=30)

    async def moves(self) -> list[dict]:
        """Every move the hub has not settled (the reconciler's token)."""
        return (await self.request("GET", "/cloudhop/moves", timeout=30))["moves"]

    async def report_activity(self, body: dict) -> dict:
        """Report this server's activity and GPU readings (:mod:`cloudhop.hub.culling_api`);
        returns the hub's answer, ``{"cull": ...}``."""
        return await self.request("POST", self._own_path("activity"), body, timeout=20)

    async def kernel_token(self) -> str:
        """A token for this server's kernels: this server's API only."""
        return (await self.request("POST", self._own_path("kernel-token"), {}, timeout=20))["token"]

    async def rescue(self, body: dict) -> dict:
        """Ask the hub to relaunch this server elsewhere after a spot notice, restoring
        ``body["snapshot"]`` (:mod:`cloudhop.hub.rescue_api`); returns the rescue's record."""
        return await self.request("POST", self._own_path("rescue"), body, timeout=30)

    async def ray_cluster(self) -> dict:
        """The hub's view of this server's Ray cluster (:mod:`cloudhop.hub.ray_api`)."""
        return await self.request("GET", self._ray_path(), timeout=30)

    async def resize_ray(self, body) -> dict:
        """Ask the hub to resize this server's Ray cluster (``{"workers": N}``); waits
        while the hub launches the workers."""
        return await self.request("POST", self._ray_path(), body, timeout=600)

    # -- the reaper ---------------------------------------------------------------------
    async def users(self, page: int = 200, *, active_only: bool = False) -> list[dict]:
        """Every user with their servers' state, read page by page (the hub's
        pagination: ``_pagination.next`` until there is none; a hub that ignores
        :data:`PAGINATION` answers with a plain list). With :attr:`back_off`, a slow page
        is followed by a wait; :attr:`listing` says what the listing took.

        ``active_only``: only the users with an active (ready or pending) server, and only
        those servers (the hub's ``state=active`` filter, one SQL query; ``ready`` would
        test each user's servers in Python), instead of every user with their stopped
        servers too (the reaper's view: a stop may keep its node)."""
        out, offset = [], 0
        self.listing = listing = {"pages": 0, "seconds": 0.0, "paused": 0.0}
        while True:
            params = {"offset": offset, "limit": page}
            params.update({"state": "active"} if active_only else {"include_stopped_servers": "1"})
            query = urlencode(params)
            began = time.monotonic()
            reply = await self.request("GET", f"/users?{query}", timeout=30, accept=PAGINATION)
            took = time.monotonic() - began
            listing["pages"] += 1
            listing["seconds"] += took
            items = reply["items"] if isinstance(reply, dict) else reply
            out += items
            nxt = (reply.get("_pagination") or {}).get("next") if isinstance(reply, dict) else None
            if not nxt:
                return out
            offset = nxt["offset"]
            if self.back_off and took > SLOW_PAGE:  # the hub is busy: let it serve its users first
                wait = min(took, MAX_PAUSE)
                listing["paused"] += wait
                await self.sleep(wait)
