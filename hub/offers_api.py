"""The hub's offers API: what a user may launch (or move a project to), after policy.

    GET /hub/api/cloudhop/offers/{user}   -> {"offers": [Offer.to_dict(), ...]}

Registered with ``c.JupyterHub.extra_handlers`` by :func:`cloudhop.hub.snapshot_store.add_store_service`.
Allowed for a token that may read the user's servers (``read:servers``: the user, an
admin, or the user's own server token, whose ``servers!user`` scope includes it). The
offers are the same ones the spawn form shows: the user's spawner's ``user_offers()``.
"""

from __future__ import annotations

import json

from jupyterhub.apihandlers.base import APIHandler
from tornado import web


class OffersAPIHandler(APIHandler):
    async def get(self, user_name: str):
        if self.current_user is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        if not self.has_scope(f"read:servers!user={user_name}"):
            raise web.HTTPError(404, f"No user {user_name!r}")
        user = self.find_user(user_name)
        if user is None:
            raise web.HTTPError(404, f"No user {user_name!r}")
        spawner = user.spawners[""]
        if not hasattr(spawner, "user_offers"):
            raise web.HTTPError(501, "the hub's spawner has no offers")
        offers = await spawner.user_offers()
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"offers": [o.to_dict() for o in offers]}))


def handlers() -> list[tuple]:
    """Routes for ``c.JupyterHub.extra_handlers`` (the hub prefixes them with /hub/)."""
    return [(r"/api/cloudhop/offers/([^/]+)/?", OffersAPIHandler)]
