"""The hub's Ray API: see and resize a running server's Ray cluster.

    GET  /hub/api/cloudhop/ray/{user}[/{server}]      -> the cluster's status
    POST /hub/api/cloudhop/ray/{user}[/{server}]      {"workers": N} -> resized status

Registered with ``c.JupyterHub.extra_handlers`` (the embedded config does it).

* **GET** is allowed for a token that may manage the server (``servers``: the user, an
  admin) or reach it (``access:servers``: the server's own ``JUPYTERHUB_API_TOKEN``, and
  users the server is shared with, who can see the cluster in the server anyway).
* **POST** launches billable nodes, so it needs ``servers`` on the server, or
  ``access:servers`` held by the owner's own token (the server's token, so the user's
  server extension and panel can ask on the owner's behalf). A user the server is
  shared with gets a 403. The new count is checked against the owner's group policy
  like a spawn (:meth:`cloudhop.spawner.spawner.CloudhopSpawner.resize_ray`): a refusal
  is a 403 naming the rule, the group and what is allowed; a bad count is a 400 naming
  ``workers``.

The work is done by the spawner's Ray launcher and its ``ray_cluster``
(:class:`cloudhop.spawner.ray.cluster.RayCluster`): workers are nodes the hub owns and
tracks, so only the hub may launch or remove them.
"""

from __future__ import annotations

import json

from jupyterhub.apihandlers.base import APIHandler
from tornado import web

from cloudhop.spawner.schema import OptionError
from cloudhop.spawner.policy import PolicyError


class RayClusterAPIHandler(APIHandler):
    def _spawner(self, user_name: str, server_name: str, *, change: bool = False):
        """The server's spawner, once the token may see it (and, with ``change``, resize it)."""
        if self.current_user is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        target = f"{user_name}/{server_name}"
        manage = self.has_scope(f"servers!server={target}")
        if not (manage or self.has_scope(f"access:servers!server={target}")):
            # same answer for "no such server" and "not yours": names are not disclosed
            raise web.HTTPError(404, f"No server {target!r}")
        if change and not manage and not self._is_owner(user_name):
            # access:servers from a share: may look, may not launch nodes billed to the owner
            raise web.HTTPError(403, f"only the owner of {target!r} or an admin may resize its Ray cluster; "
                                     "users it is shared with can see it")
        user = self.find_user(user_name)
        if user is None or server_name not in user.orm_spawners:
            raise web.HTTPError(404, f"No server {target!r}")
        spawner = user.spawners[server_name]
        if not spawner.active:
            raise web.HTTPError(409, f"Server {target!r} is not running", reason="not-running")
        if getattr(spawner, "ray_cluster", None) is None:
            raise web.HTTPError(
                409, f"Server {target!r} has no Ray cluster; start it with the ray option, "
                'e.g. {"ray": {"workers": 1}}', reason="no-ray")
        return spawner

    def _is_owner(self, user_name: str) -> bool:
        me = self.current_user
        return getattr(me, "kind", None) == "user" and me.name == user_name

    async def get(self, user_name: str, server_name: str | None = None):
        cluster = self._spawner(user_name, server_name or "").ray_cluster
        await cluster.refresh()
        self.write(json.dumps(cluster.status()))

    async def post(self, user_name: str, server_name: str | None = None):
        spawner = self._spawner(user_name, server_name or "", change=True)
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
            status = await spawner.resize_ray(body["workers"])
        except PolicyError as err:
            self.set_status(err.status_code)
            self.finish(json.dumps({"status": err.status_code, "message": str(err),
                                    "field": err.field, "rule": err.rule, "group": err.group}))
            return
        except OptionError as err:
            raise web.HTTPError(err.status_code, str(err)) from None
        self.write(json.dumps(status))


def handlers() -> list[tuple]:
    """Routes for ``c.JupyterHub.extra_handlers`` (the hub prefixes them with /hub/)."""
    return [(r"/api/cloudhop/ray/([^/]+)(?:/([^/]+))?/?", RayClusterAPIHandler)]
