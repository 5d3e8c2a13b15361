"""The user's server talking to the hub's REST API with its own token.

The server's ``JUPYTERHUB_API_TOKEN`` carries only what a migration needs on top of
the default server role: ``servers!user`` (start and stop this user's servers) and
access to the snapshot store (see :data:`cloudhop.hub.snapshot_store.SERVER_TOKEN_SCOPES`).
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest


class HubError(RuntimeError):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class HubClient:
    def __init__(self, api_url: str, token: str, user: str, server_name: str = ""):
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.user = user
        self.server_name = server_name

    @classmethod
    def from_env(cls, env=os.environ) -> "HubClient":
        return cls(env.get("JUPYTERHUB_API_URL", ""), env.get("JUPYTERHUB_API_TOKEN", ""),
                   env.get("JUPYTERHUB_USER", ""), env.get("JUPYTERHUB_SERVER_NAME", ""))

    @property
    def configured(self) -> bool:
        return bool(self.api_url and self.token and self.user)

    def _server_path(self, name: str) -> str:
        user = quote(self.user, safe="")
        return f"/users/{user}/servers/{quote(name, safe='')}" if name else f"/users/{user}/server"

    async def request(self, method: str, path: str, body=None, timeout: float = 60):
        req = HTTPRequest(
            self.api_url + path, method=method, request_timeout=timeout,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
            body=None if body is None else json.dumps(body), allow_nonstandard_methods=True,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req)
        except HTTPClientError as err:
            message = err.message
            if err.response is not None and err.response.body:
                try:
                    message = json.loads(err.response.body).get("message") or message
                except ValueError:
                    pass
            raise HubError(f"hub: {err.code} {message}", err.code) from None
        except OSError as err:
            raise HubError(f"hub unreachable: {err}") from None
        return json.loads(resp.body) if resp.body else None

    async def start_server(self, name: str, options: dict) -> None:
        await self.request("POST", self._server_path(name), options)

    async def stop_server(self, name: str, remove: bool = False) -> None:
        await self.request("DELETE", self._server_path(name), {"remove": True} if remove and name else None)

    async def server(self, name: str) -> dict | None:
        """The hub's model of this user's server ``name`` (None when it has none)."""
        model = await self.request("GET", f"/users/{quote(self.user, safe='')}")
        return (model.get("servers") or {}).get(name)

    async def offers(self) -> list[dict]:
        """The offers this user may launch, after policy (the hub's offers endpoint)."""
        reply = await self.request("GET", f"/cloudhop/offers/{quote(self.user, safe='')}")
        return reply["offers"]

    async def check_options(self, options: dict) -> dict:
        """Validate user_options as a spawn would (offers and policy); raises HubError
        with status 400/403 and a message naming the field."""
        reply = await self.request("POST", f"/cloudhop/offers/{quote(self.user, safe='')}/check", options)
        return reply["request"]
