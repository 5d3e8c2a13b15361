"""The hub's token API: a move's short-lived token, and the token of a server's kernels.

    POST /hub/api/cloudhop/moves/{user}[/{server}]          {"target": name, "expires_in": s}
         -> 201 {"token", "target", "expires_at", "scopes"}
    POST /hub/api/cloudhop/kernel-token/{user}[/{server}]
         -> 201 {"token", "scopes"}

A running server asks for both with its own token, which may do little else
(:data:`SERVER_TOKEN_SCOPES`): it cannot start, stop or read the user's other servers,
nor their snapshots. Only the server's owner may ask, with a token that holds
:data:`MOVES_SCOPE` on that server (the server's own token, or the user's own tokens):
not the kernels' token, not a user the server is shared with. The server must be
running (or, for the kernels' token, starting). A refusal is a 4xx naming the field or the rule.

**A move's token** (:func:`move_scopes`) may start the one new server ``target`` with the
move's options (the spawner checks them against the policy like any spawn), follow it,
stop and remove it, and use the snapshot store for that server only: store the
snapshot it is restored from and read its restore report. It expires after
``expires_in`` seconds (at most :data:`MOVE_TOKEN_MAX_SECONDS`). The target must be a
name the user has no server by, so a move never touches an existing server. One move per
server at a time: while a move token of this server is live and its target exists,
another is refused (409); otherwise the server's earlier move tokens are revoked first.

**The kernels' token** (:func:`kernel_scopes`) holds ``access:servers`` on this one
server: its REST API (``cloudhop.panel()``, ``cloudhop.migrate()``) and, as the owner,
the hub's Ray API for this server. The server puts it in its kernels' environment
instead of its own token (:mod:`cloudhop.extensions.kernelenv`). Asking again revokes
the server's earlier kernel token.

Both kinds are revoked when their server stops (:func:`revoke_server_tokens`, the
spawners' ``post_stop_hook`` as :func:`cloudhop.hub.snapshot_store.add_store_service`
sets it). Registered with ``c.JupyterHub.extra_handlers`` by that function too.
"""

from __future__ import annotations

import json

from jupyterhub import orm
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.utils import isoformat
from tornado import web

from .snapshot_store import SERVICE_NAME, SNAPSHOTS_SCOPE

#: the custom scope that lets a token ask for a move's token and the kernels' token
MOVES_SCOPE = "custom:cloudhop:moves"
#: the custom scopes Cloudhop defines (``c.JupyterHub.custom_scopes``)
CUSTOM_SCOPES = {
    SNAPSHOTS_SCOPE: {
        "description": "Use snapshots in Cloudhop's snapshot store: with !user all of the "
                       "user's, with !server those made for that server.",
    },
    MOVES_SCOPE: {
        "description": "Move a Cloudhop server: get a short-lived token for one new server "
                       "of its user, and the token of the server's kernels.",
    },
}
#: what the ``user`` role gets on top of ``self``: the store, all of the user's snapshots
#: and moves of the user's servers (a token can only hold what its user holds)
USER_SCOPES = [f"access:services!service={SERVICE_NAME}", f"{SNAPSHOTS_SCOPE}!user",
               f"{MOVES_SCOPE}!user"]
#: a single-user server's own token (``JUPYTERHUB_API_TOKEN``; JupyterHub resolves each
#: ``!server`` to that server): JupyterHub's default ``server`` role (activity, its own
#: API), reading the user's server models (the hub's offers API and option check), stopping
#: itself once a move is done, the snapshots made for it (a move's target restores its
#: snapshot), and asking for a move's token and its kernels' token.
SERVER_TOKEN_SCOPES = [
    "users:activity!user",
    "access:servers!server",
    "read:servers!user",
    "delete:servers!server",
    f"access:services!service={SERVICE_NAME}",
    f"{SNAPSHOTS_SCOPE}!server",
    f"{MOVES_SCOPE}!server",
]
#: the longest a move's token may live, and its lifetime when the request names none
MOVE_TOKEN_MAX_SECONDS = 24 * 3600
MOVE_TOKEN_DEFAULT_SECONDS = 3 * 3600
#: how the tokens are found again (their note): a move's is followed by JSON
#: ``[source, target]``, the kernels' by JSON ``source``
MOVE_NOTE = "cloudhop move "
KERNEL_NOTE = "cloudhop kernels "


def move_scopes(user: str, target: str) -> list[str]:
    """The scopes of a move's token for ``user``'s new server ``target``."""
    server = f"{user}/{target}"
    return [f"servers!server={server}", f"access:services!service={SERVICE_NAME}",
            f"{SNAPSHOTS_SCOPE}!server={server}"]


def kernel_scopes(user: str, server: str) -> list[str]:
    """The scopes of the token of ``user``'s server ``server``'s kernels."""
    return [f"access:servers!server={user}/{server}"]


def check_target(target, source: str, existing) -> str:
    """``target`` if it can name a move's new server: a string of 1-255 characters
    without ``/``, not the source and not one of the ``existing`` server names. Raises
    HTTPError 400 (bad name) or 409 (taken), naming ``target``."""
    if not isinstance(target, str) or not 0 < len(target) <= 255 or "/" in target:
        raise web.HTTPError(400, "target: must be a server name of 1 to 255 characters without '/'")
    if target == source or target in existing:
        raise web.HTTPError(409, f"target: the user already has a server named {target!r}; "
                                 "a move starts a new one")
    return target


def check_expires_in(value) -> int:
    """A move token's lifetime in seconds: ``value`` (an integer from 1 to
    :data:`MOVE_TOKEN_MAX_SECONDS`), or the default when None. Raises HTTPError 400."""
    if value is None:
        return MOVE_TOKEN_DEFAULT_SECONDS
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MOVE_TOKEN_MAX_SECONDS:
        raise web.HTTPError(400, f"expires_in: must be a whole number of seconds from 1 to "
                                 f"{MOVE_TOKEN_MAX_SECONDS}, not {value!r}")
    return value


def _note_value(token, prefix: str):
    """The JSON after ``prefix`` in ``token``'s note; None for other tokens."""
    note = token.note or ""
    if not note.startswith(prefix):
        return None
    try:
        return json.loads(note[len(prefix):])
    except ValueError:
        return None


def move_tokens(orm_user, source: str) -> list:
    """The live move tokens of ``orm_user``'s server ``source``, as ``(token, target)``."""
    out = []
    for token in list(orm_user.api_tokens):
        value = _note_value(token, MOVE_NOTE)
        if isinstance(value, list) and len(value) == 2 and value[0] == source and not token.expired:
            out.append((token, value[1]))
    return out


def kernel_tokens(orm_user, server: str) -> list:
    return [t for t in list(orm_user.api_tokens) if _note_value(t, KERNEL_NOTE) == server]


def revoke_server_tokens(spawner) -> None:
    """Delete the move and kernel tokens of ``spawner``'s server (its post-stop hook)."""
    user = spawner.user
    tokens = [t for t, _ in move_tokens(user.orm_user, spawner.name)] + kernel_tokens(user.orm_user, spawner.name)
    for token in tokens:
        user.db.delete(token)
    if tokens:
        user.db.commit()
        spawner.log.info("Revoked %d move/kernel token(s) of %s", len(tokens), spawner._log_name)


class ServerTokenHandler(APIHandler):
    """Base: the running server ``user/server`` the current token may ask tokens for."""

    def source(self, user_name: str, server_name: str, *, ready: bool):
        """The owner (a User) of the server, once the checks pass; with ``ready`` the
        server must be running, else it may also be starting (its extension asks for
        the kernels' token while it loads)."""
        me = self.current_user
        if me is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        target = f"{user_name}/{server_name}"
        if not self.has_scope(f"{MOVES_SCOPE}!server={target}"):
            # same answer for "no such server" and "not yours": names are not disclosed
            raise web.HTTPError(404, f"No server {target!r} this token may move")
        if getattr(me, "kind", None) != "user" or me.name != user_name:
            raise web.HTTPError(403, f"only the owner of {target!r} may ask for its tokens")
        user = self.find_user(user_name)
        if user is None or server_name not in user.orm_spawners:
            raise web.HTTPError(404, f"No server {target!r}")
        spawner = user.spawners[server_name]
        if not (spawner.ready if ready else spawner.active):
            raise web.HTTPError(409, f"Server {target!r} is not running", reason="not-running")
        return user

    def mint(self, user, *, note: str, scopes: list[str], expires_in: int | None = None):
        """A new token of ``user``; its value and its database row."""
        try:
            token = user.new_api_token(note=note, scopes=scopes, expires_in=expires_in)
        except ValueError as err:  # scopes the user does not hold (a changed user role)
            raise web.HTTPError(403, f"scopes: {err}") from None
        return token, orm.APIToken.find(self.db, token)

    def reply(self, status: int, body: dict) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class MoveTokenHandler(ServerTokenHandler):
    async def post(self, user_name: str, server_name: str | None = None):
        source = server_name or ""
        user = self.source(user_name, source, ready=True)
        body = self.get_json_body() or {}
        if not isinstance(body, dict):
            raise web.HTTPError(400, 'body must be JSON like {"target": "name", "expires_in": 3600}')
        unknown = sorted(set(body) - {"target", "expires_in"})
        if unknown:
            raise web.HTTPError(400, f"{unknown[0]}: unknown field; send target and expires_in")
        target = check_target(body.get("target"), source, user.orm_spawners)
        expires_in = check_expires_in(body.get("expires_in"))
        earlier = move_tokens(user.orm_user, source)
        busy = [t for _, t in earlier if t in user.orm_spawners]
        if busy:
            raise web.HTTPError(409, f"target: a move of this server to {busy[0]!r} is under way; "
                                     "one move at a time")
        for token, _ in earlier:
            self.db.delete(token)
        scopes = move_scopes(user_name, target)
        token, row = self.mint(user, note=MOVE_NOTE + json.dumps([source, target]), scopes=scopes,
                               expires_in=expires_in)
        self.log.info("Move token for %s/%s -> %s (%d s)", user_name, source, target, expires_in)
        self.reply(201, {"token": token, "target": target, "scopes": sorted(row.scopes),
                         "expires_at": isoformat(row.expires_at)})


class KernelTokenHandler(ServerTokenHandler):
    async def post(self, user_name: str, server_name: str | None = None):
        server = server_name or ""
        user = self.source(user_name, server, ready=False)
        for token in kernel_tokens(user.orm_user, server):
            self.db.delete(token)
        token, row = self.mint(user, note=KERNEL_NOTE + json.dumps(server),
                               scopes=kernel_scopes(user_name, server))
        self.reply(201, {"token": token, "scopes": sorted(row.scopes)})


def handlers() -> list[tuple]:
    """Routes for ``c.JupyterHub.extra_handlers`` (the hub prefixes them with /hub/)."""
    return [
        (r"/api/cloudhop/moves/([^/]+)(?:/([^/]+))?/?", MoveTokenHandler),
        (r"/api/cloudhop/kernel-token/([^/]+)(?:/([^/]+))?/?", KernelTokenHandler),
    ]
