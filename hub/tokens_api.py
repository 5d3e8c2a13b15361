"""The hub's token API: a move's short-lived token, and the token of a server's kernels.

    POST /hub/api/cloudhop/moves/{user}[/{server}]          {"target": name, "expires_in": s}
         -> 201 {"token", "target", "expires_at", "scopes", "move"}
    PATCH /hub/api/cloudhop/moves/{user}[/{server}]         {"move": id, "phase": p, "error"?: text}
         -> 200 the move's record
    GET  /hub/api/cloudhop/moves/{user}[/{server}]          -> {"moves": [record, ...]}
    GET  /hub/api/cloudhop/moves                            -> {"moves": [every unsettled record]}
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
stop and remove it, use its API (to ask it to restore the move's snapshot and wait for
that: :mod:`cloudhop.extensions.target`), and use the snapshot store for that server
only: store the snapshot it is restored from and read its restore report. It expires after
``expires_in`` seconds (at most :data:`MOVE_TOKEN_MAX_SECONDS`). The target must be a
name the user has no server by, so a move never touches an existing server. One move per
server at a time: while a move token of this server is live and its target exists,
another is refused (409); otherwise the server's earlier move tokens are revoked first.

**The move's record** (:mod:`.move_book`, kept in ``c.CloudhopMoves.record_file``, which
:func:`cloudhop.hub.move_reconciler.add_move_reconciler` sets): the hub opens it with the
token (``move`` in the reply is its id) and the source reports each phase with ``PATCH``
before it acts in it; a refusal (409: the move was cut off, or ``done`` while the target
does not run) ends the move there. Failing a move revokes its token. The reconciler
(a token holding :data:`MOVES_SCOPE` for every server) lists the unsettled records, fails
the ones cut off and settles them (``{"move", "settled": true, "note"}``); only it may
settle. Without a record file the hub keeps no records and the reply has no ``move``.

**The kernels' token** (:func:`kernel_scopes`) holds ``access:servers`` on this one
server: its REST API (``cloudhop.panel()``, ``cloudhop.migrate()``) and, as the owner,
the hub's Ray API for this server. The server puts it in its kernels' environment
instead of its own token (:mod:`cloudhop.extensions.kernelenv`). Asking again revokes
the server's earlier kernel token.

Both kinds are revoked when their server stops (:func:`revoke_server_tokens`, the
spawners' ``post_stop_hook`` as :func:`cloudhop.hub.snapshot_store.add_store_service`
sets it), and the server's moves still in flight fail then. Registered with
``c.JupyterHub.extra_handlers`` by that function too.
"""

from __future__ import annotations

import json
import time

from jupyterhub import orm
from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.utils import isoformat
from tornado import web

from .move_book import (
    IN_FLIGHT,
    PHASES,
    MoveBook,
    MoveConflict,
    book_of,
    source_stopped,
)
from . import metrics
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
    return [f"servers!server={server}", f"access:servers!server={server}",
            f"access:services!service={SERVICE_NAME}", f"{SNAPSHOTS_SCOPE}!server={server}"]


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
    """Delete the move and kernel tokens of ``spawner``'s server (its post-stop hook), and
    fail its moves still in flight: a stopped source carries no move on."""
    user = spawner.user
    tokens = [t for t, _ in move_tokens(user.orm_user, spawner.name)] + kernel_tokens(user.orm_user, spawner.name)
    for token in tokens:
        user.db.delete(token)
    if tokens:
        user.db.commit()
        spawner.log.info("Revoked %d move/kernel token(s) of %s", len(tokens), spawner._log_name)
    book = book_of(getattr(spawner, "config", None))
    if book is not None:
        cut = [m for m in book.of_source(user.name, spawner.name) if m["phase"] in IN_FLIGHT]
        for m in cut:
            book.advance(m, "failed", source_stopped(m["phase"]))
        if cut:
            spawner.log.warning("%s stopped during %d move(s); they fail and roll back",
                                spawner._log_name, len(cut))
            _background(book.commit())


def _background(coro) -> None:
    """Run ``coro`` on the hub's loop without waiting for it (from a synchronous hook)."""
    import asyncio

    task = asyncio.ensure_future(coro)
    _pending.add(task)
    task.add_done_callback(_pending.discard)


_pending: set = set()


def revoke_move_token(orm_user, source: str, target: str, db) -> int:
    """Delete the move tokens of ``orm_user``'s move ``source`` -> ``target``; how many."""
    tokens = [t for t, tgt in move_tokens(orm_user, source) if tgt == target]
    for token in tokens:
        db.delete(token)
    if tokens:
        db.commit()
    return len(tokens)


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
    async def post(self, user_name: str | None = None, server_name: str | None = None):
        if user_name is None:
            raise web.HTTPError(405)
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
        body = {"token": token, "target": target, "scopes": sorted(row.scopes),
                "expires_at": isoformat(row.expires_at)}
        book = await self.book()
        if book is not None:
            for m in book.of_source(user_name, source):  # the one move at a time replaces these
                if m["phase"] in IN_FLIGHT:
                    book.advance(m, "failed", f"a new move of this server (to {target!r}) replaced it")
            body["move"] = book.open(user_name, source, target, time.time() + expires_in)["id"]
            await book.commit()
        self.reply(201, body)

    async def get(self, user_name: str | None = None, server_name: str | None = None):
        if user_name is None:  # every unsettled move: the reconciler's list
            if not self.has_scope(MOVES_SCOPE):
                raise web.HTTPError(403, f"listing every move needs the scope {MOVES_SCOPE}")
        else:
            self.check_move_access(user_name, server_name or "")
        book = await self.book()
        if book is None:
            moves = []
        elif user_name is None:
            moves = book.unsettled()
        else:
            moves = book.of_source(user_name, server_name or "")
        self.reply(200, {"moves": moves})

    async def patch(self, user_name: str | None = None, server_name: str | None = None):
        if user_name is None:
            raise web.HTTPError(405)
        source = server_name or ""
        owner = self.check_move_access(user_name, source)
        body = self.get_json_body()
        if not isinstance(body, dict):
            raise web.HTTPError(400, 'body must be JSON like {"move": "<id>", "phase": "launching"}')
        change = check_move_change(body, owner=owner)
        book = await self.book()
        m = book.get(change["move"]) if book is not None else None
        if m is None or m["user"] != user_name or m["source"] != source:
            raise web.HTTPError(404, f"move: this server has no move {change['move']!r}")
        phase = change.get("phase")
        if phase == "done" and m["phase"] not in ("done", "failed"):
            self.check_target_runs(user_name, m["target"])
        try:
            changed = phase is not None and book.advance(m, phase, change.get("error"))
        except MoveConflict as err:
            raise web.HTTPError(409, f"phase: {err}") from None
        orm_user = orm.User.find(self.db, user_name)
        if changed and phase == "failed" and orm_user is not None:
            n = revoke_move_token(orm_user, source, m["target"], self.db)
            self.log.warning("Move %s of %s/%s -> %s failed: %s (revoked %d token(s))", m["id"], user_name,
                             source, m["target"], m["error"], n)
        if changed:
            metrics.observe_move(m, change.get("bytes"))
        if change.get("settled"):
            book.settle(m, change.get("note"))
        await book.commit()
        self.reply(200, m)

    async def book(self) -> MoveBook | None:
        """The hub's move records (None when the hub keeps none). A first look after the
        hub started revokes the tokens of the moves it cut off."""
        book = book_of(self.settings.get("config"))
        if book is not None and book.cut_off:
            cut, book.cut_off = book.cut_off, []
            for m in cut:
                orm_user = orm.User.find(self.db, m["user"])
                if orm_user is not None:
                    revoke_move_token(orm_user, m["source"], m["target"], self.db)
            await book.commit()
        return book

    def check_move_access(self, user_name: str, source: str) -> bool:
        """That the current token may see and report the moves of ``user/source``: the
        owner's (True), or a token holding :data:`MOVES_SCOPE` for every server (False)."""
        if self.current_user is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        server = f"{user_name}/{source}"
        if not self.has_scope(f"{MOVES_SCOPE}!server={server}"):
            raise web.HTTPError(404, f"No server {server!r} this token may move")
        me = self.current_user
        if getattr(me, "kind", None) == "user" and me.name == user_name:
            return True
        if self.has_scope(MOVES_SCOPE):
            return False
        raise web.HTTPError(403, f"only the owner of {server!r} may report its moves")

    def check_target_runs(self, user_name: str, target: str) -> None:
        """A move is ``done`` only while its new server runs (its files and kernels are
        there); raises HTTPError 409 otherwise."""
        user = self.find_user(user_name)
        spawner = user.spawners[target] if user is not None and target in user.orm_spawners else None
        if spawner is None or not spawner.ready:
            raise web.HTTPError(409, f"phase: the new server {target!r} is not running; the move cannot be done")


#: the fields of a move's PATCH, and the longest text its error and note may hold
MOVE_CHANGE_FIELDS = ("move", "phase", "error", "settled", "note", "bytes")
TEXT_MAX = 2000


def check_move_change(body: dict, *, owner: bool) -> dict:
    """A move's PATCH ``body``, checked: ``move`` (its id), ``phase`` (one of
    :data:`~.move_book.PHASES`), ``error`` (text), ``bytes`` (what the move sent to the
    store, a whole number, for the hub's metrics), and only for the reconciler
    (``owner`` False) ``settled`` (true) and ``note`` (text); the reconciler's only
    phase is ``failed``. Raises HTTPError 400 naming the field, 403 for what the token
    may not change."""
    unknown = sorted(set(body) - set(MOVE_CHANGE_FIELDS))
    if unknown:
        raise web.HTTPError(400, f"{unknown[0]}: unknown field; send {', '.join(MOVE_CHANGE_FIELDS)}")
    if not isinstance(body.get("move"), str) or not body["move"]:
        raise web.HTTPError(400, "move: must be the id of a move of this server")
    phase = body.get("phase")
    if phase is not None and phase not in PHASES:
        raise web.HTTPError(400, f"phase: must be one of {', '.join(PHASES)}, not {phase!r}")
    for name in ("error", "note"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise web.HTTPError(400, f"{name}: must be text")
    if "settled" in body and body["settled"] is not True:
        raise web.HTTPError(400, "settled: must be true")
    nbytes = body.get("bytes")  # what the move sent to the store, for the metrics
    if nbytes is not None and (isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0):
        raise web.HTTPError(400, "bytes: must be a whole number of bytes >= 0")
    if owner and ("settled" in body or "note" in body):
        raise web.HTTPError(403, "settled: only the hub's reconciler settles a move")
    if not owner and phase not in (None, "failed"):
        raise web.HTTPError(403, "phase: only the move's source reports its progress; the reconciler may "
                                 "only fail a move")
    out = dict(body)
    for name in ("error", "note"):
        if isinstance(out.get(name), str):
            out[name] = out[name][:TEXT_MAX]
    return out


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
        (r"/api/cloudhop/moves/?", MoveTokenHandler),
        (r"/api/cloudhop/moves/([^/]+)(?:/([^/]+))?/?", MoveTokenHandler),
        (r"/api/cloudhop/kernel-token/([^/]+)(?:/([^/]+))?/?", KernelTokenHandler),
    ]
