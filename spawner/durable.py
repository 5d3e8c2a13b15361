"""Hibernate on stop, resume on start: the hub's half of durable workspaces.

A stop (the Home page, REST ``DELETE``, the idle culler, a budget: every one is a hub
stop, so every one comes here through :meth:`CloudhopSpawner.stop`) first asks the
running server to snapshot itself - ``POST {server}/cloudhop/api/snapshots`` with
``{"reason": "stop", "kernels": <hibernate_kernels>}`` (``"cull"`` for a server whose
culling limit has passed), answered by
:mod:`cloudhop.extensions.hibernate` - and terminates the node only once that snapshot
is stored. When it fails (store down, quota full, node unreachable, timeout) the node
is *kept*: the server is marked stopped, its nodes are listed under ``kept`` in its
state with the reason (shown on the Home page and logged), and nothing is terminated
until an admin decides (``cloudhop nodes terminate ID --discard``). docs/durability.md
says what is kept and what is not.

A start restores the server's line of snapshots: with no ``restore`` option its newest
snapshot, with ``"restore": "<id>"`` that one (404 when the store has no such snapshot
for this server), with ``"restore": "none"`` nothing. The spawner reads the line from
the snapshot store with the server's own token (which may use only the snapshots made
for its server), and waits for the server's restore report before it reports ready.

Everything here is a network call awaited on the hub's loop (tornado's async client);
nothing blocks it.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

#: the server's endpoint that snapshots it (:mod:`cloudhop.extensions.hibernate`)
SNAPSHOT_PATH = "cloudhop/api/snapshots"
#: the server's restore report (:mod:`cloudhop.extensions.handlers`)
RESTORE_PATH = "cloudhop/api/restore"
#: the ``restore`` option's value that starts a server empty
RESTORE_NONE = "none"
#: the store service's environment variable, as the hub gives it to servers on its host
STORE_URL_ENV = "CLOUDHOP_STORE_LOCAL_URL"
GIB = 1 << 30


class HibernateError(RuntimeError):
    """The snapshot of a stop failed; the message says why (shown to the user and admin)."""


class RestoreError(RuntimeError):
    """The restore of a start failed; the message names the file when one is at fault."""


class NoSuchSnapshot(LookupError):
    """The ``restore`` option names no snapshot this server may restore."""


def size_text(nbytes: int) -> str:
    """``1.2 GiB``, ``340 MiB``, ``12 KiB``: a size as the spawn page shows it."""
    for unit, scale in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _message(err: HTTPClientError) -> str:
    """The JSON ``message`` of an error reply (Jupyter's and the store's), else its reason;
    on one line of at most 500 characters (it goes into the hub's log and the Home page)."""
    body = getattr(err.response, "body", None) if err.response is not None else None
    try:
        text = json.loads(body or b"{}").get("message") or err.message or str(err)
    except (ValueError, AttributeError):
        text = err.message or str(err)
    return " ".join(str(text).split())[:500]


async def _call(method: str, url: str, token: str, *, body: dict | None = None,
                timeout: float = 60) -> dict:
    """One JSON call with ``token``; raises HTTPClientError (with a reply) or OSError."""
    request = HTTPRequest(url, method=method, headers={"Authorization": f"token {token}",
                                                       "Content-Type": "application/json"},
                          body=None if body is None else json.dumps(body),
                          request_timeout=timeout, connect_timeout=min(timeout, 20))
    reply = await AsyncHTTPClient().fetch(request)
    return json.loads(reply.body or b"{}")


async def hibernate(server_url: str, token: str, *, kernels: bool, timeout: float, reason: str = "stop") -> dict:
    """Ask the server at ``server_url`` (its base URL, ending in ``/``) to snapshot its
    workspace (and with ``kernels`` its kernels' state) into the store under its own
    line; ``reason`` goes into the snapshot's ``meta`` ("stop", or "cull" for a server the
    culling policy stops). Returns the server's answer (``id``, ``bytes``, ``files``, ``kernels``,
    ``skipped``, ``seconds``); raises :class:`HibernateError` saying why it failed."""
    try:
        reply = await _call("POST", server_url + SNAPSHOT_PATH, token,
                            body={"reason": reason, "kernels": kernels}, timeout=timeout)
    except HTTPClientError as err:
        if err.code == 599:
            raise HibernateError(f"the server did not answer within {timeout:.0f} s "
                                 f"(c.CloudhopSpawner.hibernate_timeout)") from None
        raise HibernateError(_message(err)) from None
    except (OSError, asyncio.TimeoutError) as err:
        raise HibernateError(f"the node is unreachable ({type(err).__name__}: {err})") from None
    if not isinstance(reply, dict) or not isinstance(reply.get("id"), str):
        raise HibernateError("the server's answer named no snapshot")
    return reply


@dataclass
class StoreLine:
    """The snapshots of one server as its own token sees them in the store: ``url`` the
    store service's URL (ending in ``/``), ``user`` the owner, ``token`` the server's
    token (``!server``-scoped: only the snapshots made for this server)."""

    url: str
    user: str
    token: str
    server: str = ""

    def _url(self, path: str) -> str:
        return f"{self.url}api/users/{quote(self.user, safe='')}/{path}"

    async def newest(self) -> dict | None:
        """The newest snapshot of the line (``id``, ``created``, ``bytes``...), None if none."""
        reply = await _call("GET", self._url(f"snapshots?server={quote(self.server, safe='')}"), self.token)
        items = [s for s in reply.get("snapshots") or [] if isinstance(s, dict) and s.get("id")]
        return max(items, key=lambda s: (_number(s.get("created")), s["id"])) if items else None

    async def find(self, sid: str) -> dict:
        """The snapshot ``sid`` of the line (its ``id`` and ``bytes``); raises
        :class:`NoSuchSnapshot` when the store has none this server may restore (the
        same answer for "not there" and "not yours": ids are not disclosed)."""
        try:
            manifest = await _call("GET", self._url(f"snapshots/{quote(sid, safe='')}"), self.token)
        except HTTPClientError as err:
            if err.code in (400, 403, 404):
                raise NoSuchSnapshot(f"restore: no snapshot {sid!r} of this server") from None
            raise
        files = [f for f in manifest.get("files") or [] if isinstance(f, dict)]
        return {"id": sid, "created": manifest.get("created"),
                "bytes": sum(f.get("size") or 0 for f in files if isinstance(f.get("size"), int))}


async def wait_restored(server_url: str, token: str, *, timeout: float, interval: float,
                        progress=None) -> dict:
    """Wait until the server at ``server_url`` has restored its snapshot: its restore
    report's ``state`` is ``done`` (returned). ``progress(received, total)`` is called as
    bytes come in. Raises :class:`RestoreError` with the report's error (which names the
    file at fault) when it failed, or when it takes longer than ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            report = await _call("GET", server_url + RESTORE_PATH, token, timeout=30)
        except HTTPClientError as err:
            if err.code not in (404, 502, 503, 599):
                raise RestoreError(f"the server's restore report is unreadable: {_message(err)}") from None
            report = None  # the server is not up yet, or its extension not loaded yet
        except OSError:
            report = None
        if report:
            if report.get("state") == "done":
                return report
            if report.get("state") == "failed":
                raise RestoreError(report.get("error") or "the restore failed")
            now = (report.get("bytes_received") or 0, report.get("bytes_total") or 0)
            if progress and now != last:
                progress(*now)
                last = now
        await asyncio.sleep(interval)
    raise RestoreError(f"the restore did not finish within {timeout:.0f} s (c.CloudhopSpawner.restore_timeout)")


def call_token(user, server: str) -> str:
    """A new token of ``user``'s (a JupyterHub ``User``) for calling the API of their
    server ``server`` alone, living ten minutes at most: the hub's call to a server whose
    own token it does not know (JupyterHub keeps tokens hashed). :func:`forget_token`
    deletes it after the call."""
    return user.new_api_token(note=f"cloudhop hibernate {server}", expires_in=600,
                              scopes=[f"access:servers!server={user.name}/{server}"])


def forget_token(user, token: str) -> None:
    """Delete ``token`` (from :func:`call_token`) from the hub's database."""
    from jupyterhub import orm

    row = orm.APIToken.find(user.db, token)
    if row is not None:
        user.db.delete(row)
        user.db.commit()


def token_id(user, token: str | None) -> int | None:
    """The database id of ``user``'s token ``token`` (not the token: the state may hold
    it), None when unknown."""
    from jupyterhub import orm

    row = orm.APIToken.find(user.db, token) if token else None
    return row.id if row is not None else None


def forget_token_id(user, tid) -> None:
    """Delete ``user``'s token with database id ``tid`` (a kept node's server token, once
    that node is gone)."""
    from jupyterhub import orm

    row = user.db.query(orm.APIToken).filter_by(id=tid).first() if isinstance(tid, int) else None
    if row is not None and row.user_id == user.orm_user.id:
        user.db.delete(row)
        user.db.commit()


def kept_entry(refs: list[dict], reason: str, *, node: dict | None = None, offer: dict | None = None,
               request: dict | None = None, token: int | None = None) -> dict:
    """The state's record of the nodes a stop kept because its snapshot failed: the
    nodes (``NodeRef`` dicts), why, when, the notebook node with its offer and request,
    and the database id of the node's server token (kept valid so a retry can still
    snapshot it; deleted once the node goes)."""
    return {"nodes": list(refs), "reason": reason, "at": time.time(), "node": node, "offer": offer,
            "request": request, "token": token}
