"""Test doubles for the snapshot store tests: a stand-in for the hub's ``GET /hub/api/user``
(the call ``HubAuth`` makes to identify a token, real wire format) and a helper that runs
the real store service and that stand-in on a background event loop."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

from jupyterhub.services.auth import HubAuth
from tornado import httpserver, web

from cloudhop.hub.snapshot_store import MAX_BODY, SERVICE_NAME, SNAPSHOTS_SCOPE, make_app

ACCESS = f"access:services!service={SERVICE_NAME}"


def scopes_of(name: str, scopes: list[str]) -> list[str]:
    """A token's expanded scopes as the hub reports them. ``[ACCESS]`` alone stands for
    the user's own token, which the hub's ``user`` role gives both the store's access
    scope and all of the user's snapshots; a list naming a snapshot scope is kept as is."""
    if ACCESS in scopes and not any(s.startswith(SNAPSHOTS_SCOPE) for s in scopes):
        return [*scopes, f"{SNAPSHOTS_SCOPE}!user={name}"]
    return list(scopes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WhoAmI(web.RequestHandler):
    """``GET /hub/api/user``: the model of the token's owner, as JupyterHub answers it."""

    def initialize(self, tokens):
        self.tokens = tokens

    def get(self):
        auth = self.request.headers.get("Authorization", "")
        model = self.tokens.get(auth.split(" ", 1)[-1])
        if model is None:
            raise web.HTTPError(403)
        self.finish(json.dumps(model))


class StoreHarness:
    """Runs the store (given backend) plus the whoami double; ``tokens`` maps a token to
    ``(user name, scopes)`` (see :func:`scopes_of`); ``app_options`` go to ``make_app``
    (``quota_bytes``)."""

    def __init__(self, backend, tokens: dict[str, tuple[str, list[str]]], **app_options):
        self.backend = backend
        self.app_options = app_options
        self.tokens = {t: {"kind": "user", "name": n, "scopes": scopes_of(n, s)} for t, (n, s) in tokens.items()}
        self.loop = asyncio.new_event_loop()
        self.hub_port = free_port()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/services/{SERVICE_NAME}/"
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self):
        self._thread.start()

        async def start():
            hub = web.Application([(r"/hub/api/user", WhoAmI, {"tokens": self.tokens})])
            self._servers = [httpserver.HTTPServer(hub)]
            self._servers[0].listen(self.hub_port, "127.0.0.1")
            auth = HubAuth(api_url=f"http://127.0.0.1:{self.hub_port}/hub/api", api_token="service-token",
                           access_scopes={ACCESS}, cache_max_age=0)
            store = httpserver.HTTPServer(make_app(self.backend, auth, f"/services/{SERVICE_NAME}/",
                                                   **self.app_options), max_body_size=MAX_BODY)
            store.listen(self.port, "127.0.0.1")
            self._servers.append(store)

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return self

    def __exit__(self, *exc):
        async def stop():
            for s in self._servers:
                s.stop()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
