"""The hub's launch-step endpoint: a cloud node's bootstrap says which step it finished.

::

    POST /hub/api/cloudhop/launch-steps/{user}[/{server}]   {"step": "driver" | "image" | "server"}
      -> 200 {"marked": bool}

Called by the node's start script (``spawner/templates/user-data.yaml``) with the
server's own token, from its root-only environment file, once it has checked the GPU
driver and container runtime, pulled the image, and started the server. Only that token
is taken: not the user's other tokens, not an admin's (a timeline is what the node
said), so a user cannot write another server's timeline, and a 404 does not say which
servers exist. ``marked`` is false for a step already marked or a server without a
timeline (a local server). Each step becomes a phase of the server's launch timeline
(:mod:`cloudhop.spawner.timeline`): in its state and on its progress page. Another
step, or a body that is not ``{"step": ...}``, is a 400 naming ``step``.
"""

from __future__ import annotations

import hmac
import json

from jupyterhub.apihandlers.base import APIHandler
from tornado import web

from cloudhop.spawner import launch_timeline


class LaunchStepHandler(APIHandler):
    async def post(self, user_name: str, server_name: str | None = None):
        server_name = server_name or ""
        target = f"{user_name}/{server_name}"
        if self.current_user is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        user = self.find_user(user_name)
        spawner = user.spawners.get(server_name) if user is not None and server_name in user.orm_spawners else None
        token = self.get_auth_token() or ""
        own = getattr(spawner, "api_token", None) or ""
        if spawner is None or not own or not hmac.compare_digest(token.encode(), own.encode()):
            raise web.HTTPError(404, f"No server {target!r} this token may report launch steps for")
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise web.HTTPError(400, 'step: the body must be {"step": "driver" | "image" | "server"}')
        try:
            marked = launch_timeline.node_step(spawner, body.get("step"))
        except ValueError as err:
            raise web.HTTPError(400, str(err)) from None
        self.finish(json.dumps({"marked": marked}))


def handlers() -> list[tuple]:
    """Routes (unprefixed, as ``extra_handlers`` takes them)."""
    return [(r"/api/cloudhop/launch-steps/([^/]+)(?:/([^/]+))?/?", LaunchStepHandler)]
