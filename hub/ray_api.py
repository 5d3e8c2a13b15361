"""The hub's Ray API: see and resize a running server's Ray cluster.

    GET  /hub/api/cloudhop/ray/{user}[/{server}]      -> the cluster's status
    POST /hub/api/cloudhop/ray/{user}[/{server}]      {"workers": N} -> resized status

Registered with ``c.JupyterHub.extra_handlers`` (the embedded config does it). Allowed
for a token that may manage the server (``servers``: the user, an admin) or reach it
(``access:servers``: the server's own ``JUPYTERHUB_API_TOKEN``, so the user's server
extension can ask on the user's behalf; anyone who can already run code in the server
gains nothing new). The work is done by the spawner's ``ray_cluster``
(:class:`cloudhop.spawner.ray.cluster.RayCluster`): workers are nodes the hub owns and
tracks, so only the hub may launch or remove them.
"""

from __future__ import annotations

import json

from jupyterhub.apihandlers.base import APIHandler
from tornado import web

from cloudhop.spawner.options import OptionError


class RayClusterAPIHandler(APIHandler):
    def _cluster(self, user_name: str, server_name: str):
        if self.current_user is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        target = f"{user_name}/{server_name}"
        if not (self.has_scope(f"servers!server={target}") or self.has_scope(f"access:servers!server={target}")):
            # same answer for "no such server" and "not yours": names are not disclosed
            raise web.HTTPError(404, f"No server {target!r}")
        user = self.find_user(user_name)
        if user is None or server_name not in user.orm_spawners:
            raise web.HTTPError(404, f"No server {target!r}")
        spawner = user.spawners[server_name]
        if not spawner.active:
            raise web.HTTPError(409, f"Server {target!r} is not running", reason="not-running")
        cluster = getattr(spawner, "ray_cluster", None)
        if cluster is None:
            raise web.HTTPError(
                409, f"Server {target!r} has no Ray cluster; start it with the ray option, "
                'e.g. {"ray": {"workers": 1}}', reason="no-ray")
        return cluster

    async def get(self, user_name: str, server_name: str | None = None):
        cluster = self._cluster(user_name, server_name or "")
        await cluster.refresh()
        self.write(json.dumps(cluster.status()))

    async def post(self, user_name: str, server_name: str | None = None):
        cluster = self._cluster(user_name, server_name or "")
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "body must be JSON like {\"workers\": 2}") from None
        if not isinstance(body, dict) or "workers" not in body:
            raise web.HTTPError(400, "workers: missing; send {\"workers\": N}")
        unknown = sorted(set(body) - {"workers"})
        if unknown:
            raise web.HTTPError(400, f"{unknown[0]}: unknown field; only 'workers' can change")
        try:
            status = await cluster.scale(body["workers"])
        except OptionError as err:
            raise web.HTTPError(400, str(err)) from None
        self.write(json.dumps(status))


def handlers() -> list[tuple]:
    """Routes for ``c.JupyterHub.extra_handlers`` (the hub prefixes them with /hub/)."""
    return [(r"/api/cloudhop/ray/([^/]+)(?:/([^/]+))?/?", RayClusterAPIHandler)]
