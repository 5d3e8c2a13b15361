"""Sharing a live server, the hub's part: the scopes users and their servers get, and a
clear page for a share link that no longer works.

JupyterHub (5 and later) has shares and share codes in its API; what a server's owner
does with them (make a link, share with a user or a group, list, revoke) goes through
their server's ``cloudhop/api/shares`` (:mod:`cloudhop.extensions.sharing`), which calls
the hub with the server's own token. For that:

- every user gets :data:`USER_SCOPES`: ``shares!user`` (share their own servers, nobody
  else's), and ``read:users:name`` / ``read:groups:name``, which JupyterHub asks for to
  share with a user or a group by name (they reveal names only, nothing else);
- a server's own token gets :data:`SERVER_TOKEN_SCOPES`: ``shares`` on that one server.

A user a server is shared with gets JupyterHub's default share, ``access:servers`` on that
server: they use it as its owner does, and their code runs as the owner (docs/teaching.md).
A server shared with a group reaches its members through :mod:`.group_shares` (JupyterHub
itself counts group shares for users, not for their tokens, which is how a server knows
its visitors).

An expired or revoked link answers with :data:`GONE` (:class:`AcceptShareHandler`),
instead of JupyterHub's bare "Share not found or expired" or "Invalid share code".
"""

from __future__ import annotations

from jupyterhub import orm
from jupyterhub.handlers.pages import AcceptShareHandler as _JupyterHubAcceptShare
from tornado import web

USER_SCOPES = ["shares!user", "read:users:name", "read:groups:name"]
SERVER_TOKEN_SCOPES = ["shares!server", "read:users:name", "read:groups:name"]

#: what a person who opens a share link that no longer works reads
GONE = ("This share link no longer works: it expired, or the owner of the server stopped "
        "sharing it. Ask them for a new link.")


def add_sharing_scopes(c) -> None:
    """Give users (their ``user`` role) and their servers' tokens the scopes sharing
    needs, added to what the config already set."""
    from .services import setting

    roles = setting(c, "JupyterHub", "load_roles", [])
    for role in roles:
        if role.get("name") == "user":
            role["scopes"] = sorted(set(role.get("scopes") or ["self"]) | set(USER_SCOPES))
            break
    else:
        roles.append({"name": "user", "scopes": ["self", *USER_SCOPES]})
    c.JupyterHub.load_roles = roles
    current = setting(c, "Spawner", "server_token_scopes", [])
    c.Spawner.server_token_scopes = sorted(set(current or []) | set(SERVER_TOKEN_SCOPES))


class AcceptShareHandler(_JupyterHubAcceptShare):
    """JupyterHub's page that accepts a share link, with :data:`GONE` for a link that is
    unknown, expired or revoked."""

    def _check_code(self) -> None:
        code = self.get_argument("code", "")
        if not code or orm.ShareCode.find(self.db, code=code) is None:
            raise web.HTTPError(404, GONE)

    @web.authenticated
    async def get(self):
        self._check_code()
        return await super().get()

    @web.authenticated
    def post(self):
        self._check_code()
        return super().post()


def handlers() -> list[tuple]:
    """The hub's routes (unprefixed): the accept page, before JupyterHub's own. Called
    as the hub starts, it also makes shares with a group reach its members' tokens
    (:mod:`.group_shares`)."""
    from .group_shares import install

    install()
    return [(r"/accept-share", AcceptShareHandler)]
