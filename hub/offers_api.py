"""The hub's offers API: what a user may launch (or move a project to), after policy.

    GET  /hub/api/cloudhop/offers/{user}         -> {"offers": [Offer.to_dict(), ...]}
    POST /hub/api/cloudhop/offers/{user}/check   user_options -> {"request": {...}}, or
                                                 400/403 {"message": "<field>: ..."}

The check validates options exactly as a spawn would (same offers, same group policy),
so a migration with a typo fails at once, before its snapshot is taken. It checks them
for a new server beside every server the user runs (the policy's totals: servers, GPUs,
USD/hour, budget), since a move's target runs beside its source until the move is done;
the spawn checks them again under the user's lock.

Registered with ``c.JupyterHub.extra_handlers`` by :func:`cloudhop.hub.snapshot_store.add_store_service`.
Allowed for a token that may read the user's servers (``read:servers``: the user, an
admin, or the user's own server token, whose ``servers!user`` scope includes it). The
offers are the same ones the spawn form shows: the user's spawner's ``user_offers()``.
"""

from __future__ import annotations

import json

from jupyterhub.apihandlers.base import APIHandler
from tornado import web


class _UserSpawnerHandler(APIHandler):
    def readable_user(self, user_name: str):
        """The user, once the token may read their servers (403 without credentials;
        404 for another user, as for one that does not exist)."""
        if self.current_user is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        if not self.has_scope(f"read:servers!user={user_name}"):
            raise web.HTTPError(404, f"No user {user_name!r}")
        user = self.find_user(user_name)
        if user is None:
            raise web.HTTPError(404, f"No user {user_name!r}")
        return user

    def user_spawner(self, user_name: str):
        spawner = self.readable_user(user_name).spawners[""]
        if not hasattr(spawner, "user_offers"):
            raise web.HTTPError(501, "the hub's spawner has no offers")
        return spawner


class OffersAPIHandler(_UserSpawnerHandler):
    async def get(self, user_name: str):
        spawner = self.user_spawner(user_name)
        offers = await spawner.user_offers()
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"offers": [o.to_dict() for o in offers]}))


class OptionsCheckHandler(_UserSpawnerHandler):
    async def post(self, user_name: str):
        from cloudhop.spawner.policy import validate_request
        from cloudhop.spawner.schema import OptionError

        spawner = self.user_spawner(user_name)
        try:
            raw = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "user_options: the body is not JSON") from None
        offers = await spawner.all_offers()
        try:
            request = validate_request(
                raw, offers, spawner.policy, spawner.user_groups(),
                providers=spawner.providers, price_of=getattr(spawner, "_first_price", None),
            )
            spawner.check_new_server(request, offers)
        except OptionError as err:
            raise web.HTTPError(err.status, str(err)) from None
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"request": request.to_dict()}, default=str))


def handlers() -> list[tuple]:
    """Routes for ``c.JupyterHub.extra_handlers`` (the hub prefixes them with /hub/)."""
    return [
        (r"/api/cloudhop/offers/([^/]+)/check", OptionsCheckHandler),
        (r"/api/cloudhop/offers/([^/]+)/?", OffersAPIHandler),
    ]
