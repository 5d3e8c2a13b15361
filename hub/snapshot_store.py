"""The snapshot store: a hub-managed JupyterHub service holding users' snapshots.

API (under the service prefix, ``/services/cloudhop-store/``), token-authenticated
through the hub (``Authorization: token <token>``); the token must carry
``access:services!service=cloudhop-store`` and belong to the user named in the path -
a user reads and writes only their own snapshots - and which of them it may use is its
:class:`Grant`, read from the custom scope :data:`SNAPSHOTS_SCOPE`:

* ``!user=<user>`` (the user's own tokens, through the ``user`` role): all of them;
* ``!server=<user>/<server>`` (a server's own token, a move's token): only the snapshots
  made for that server - stored with such a token, or granted to it by a token of the
  first kind - and only their chunks. Such a token may still send chunks and ask which
  are missing.

::

    POST api/users/{user}/chunks/missing    {"ids": [...]} -> {"missing": [...], "upload": target}
    POST api/users/{user}/chunks            chunk pack (local backend) -> {"stored": n}
    POST api/users/{user}/chunks/uploads    {"ids": [...], "sizes": [...]} -> presigned
                                            upload URLs (bucket backend)
    POST api/users/{user}/chunks/download   {"ids": [...]} -> target
    POST api/users/{user}/chunks/pack       {"ids": [...]} -> chunk pack (local backend)
    GET  api/users/{user}/snapshots         -> {"snapshots": [{"id", "created", "files", "bytes"}]}
    POST api/users/{user}/snapshots         manifest (all chunks present) -> 201 {"id"}
    GET  api/users/{user}/snapshots/{id}    -> manifest
    PUT|GET api/users/{user}/snapshots/{id}/report   restore report (small JSON)
    POST api/users/{user}/snapshots/{id}/servers  {"server": name} -> {"id", "server"}
                                                  (all-snapshots tokens only: lets that
                                                  server's token restore it)

The chunk pack and the restore report are defined once, in
:mod:`cloudhop.extensions.snapshot.protocol` (standard library only), for this service
and its clients alike.

A *target* is ``{"kind": "pack", "url": <relative url>}`` (send or fetch through the
service) or, with a bucket, ``{"kind": "presigned", "urls": {id: url}}`` (straight to the
bucket; for uploads, ``{"kind": "presigned", "url"}`` names where to ask for those URLs,
each signed for its chunk's exact length).

Limits (docs/migration.md, "Store limits"): a request names each chunk once (duplicate
ids are dropped), at most :data:`~cloudhop.extensions.snapshot.protocol.MAX_IDS` of them,
in at most :data:`JSON_MAX` bytes of JSON; a chunk is at most ``MAX_CHUNK`` bytes, a
manifest ``MANIFEST_MAX``, a pack ``PACK_MAX`` of chunk data (a pack reply is streamed,
one chunk in memory at a time); each user keeps at most ``c.CloudhopStore.quota_gib``
(:mod:`.store_quota`), enforced where bytes come in: chunk packs, upload URLs, manifests.

Run by the hub (see :func:`add_store_service`) as ``python -m cloudhop.hub.snapshot_store``;
configured by environment: ``CLOUDHOP_STORE_BACKEND`` (``local`` or ``s3``),
``CLOUDHOP_STORE_DIR`` (local), ``CLOUDHOP_STORE_S3_BUCKET`` / ``_ENDPOINT`` /
``_REGION`` / ``_PREFIX`` plus the usual AWS credential variables (s3);
``CLOUDHOP_STORE_QUOTA_GIB`` (each user's quota, 0 for none).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import os
import sys
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from jupyterhub.services.auth import HubAuth, check_scopes
from tornado import httpserver, ioloop, iostream, web

from cloudhop.extensions.snapshot.protocol import (
    MANIFEST_MAX, MAX_CHUNK, MAX_IDS, PACK_HEADER, PACK_MAX, REPORT_MAX, PackError, RestoreReport, iter_pack,
    pack_header,
)
from cloudhop.spawner.validate import SettingError, require_number

from .services import add_service, exit_with_hub, hub_credentials
from .snapshot_link import SERVICE_NAME
from .store_backends import (
    Backend, BackendError, LocalBackend, S3Backend, check_chunk_id, check_snapshot_id, manifest_chunk_ids,
)
from . import snapshot_line
from .snapshot_keeper import Keeper, Refused
from .store_quota import GIB, QuotaExceeded, Quotas, charge

log = logging.getLogger("cloudhop.store")
#: the largest request body the service accepts: a full chunk pack (a client sends ~17 MiB)
MAX_BODY = PACK_MAX + MAX_IDS * PACK_HEADER.size
#: the largest JSON body naming chunk ids (MAX_IDS ids and sizes take ~400 KB)
JSON_MAX = 1 << 20
#: the custom JupyterHub scope that says which of a user's snapshots a token may use
SNAPSHOTS_SCOPE = "custom:cloudhop-store:snapshots"
#: seconds the store trusts the hub's answer about a token: a revoked or expired token
#: (a move's token) is refused at most this long after the hub stopped accepting it
AUTH_CACHE_SECONDS = 10
#: snapshots each server's line keeps (``c.CloudhopStore.keep_snapshots``)
DEFAULT_KEEP = 5


@dataclass(frozen=True)
class Grant:
    """Which of ``user``'s snapshots a token may use: all of them (``full``) or those made
    for the servers in ``servers`` (names of ``user``'s servers, ``""`` the default one)."""

    full: bool
    servers: frozenset[str]

    @classmethod
    def of(cls, scopes, user: str) -> "Grant":
        """The grant of a token with (expanded) ``scopes`` over ``user``'s snapshots."""
        scopes = set(scopes)
        prefix = f"{SNAPSHOTS_SCOPE}!server={user}/"
        return cls(full=bool(check_scopes({f"{SNAPSHOTS_SCOPE}!user={user}"}, scopes)),
                   servers=frozenset(s[len(prefix):] for s in scopes if s.startswith(prefix)))

    @property
    def any(self) -> bool:
        return self.full or bool(self.servers)


def server_index(server: str) -> str:
    """The store object listing the snapshots made for ``server`` (its name hashed, so any
    server name makes a safe object name; the suffix keeps it out of snapshot listings)."""
    return f"for-server-{hashlib.sha256(server.encode()).hexdigest()[:40]}.ids"


#: one writer at a time per (user, server) index: adding to it is a read-modify-write
_INDEX_LOCKS: dict[tuple[str, str], asyncio.Lock] = {}


class StoreHandler(web.RequestHandler):
    """Base: authenticates the token with the hub, checks the path's user is its owner,
    and keeps the token's :class:`Grant` (``self.grant``)."""

    def initialize(self, backend: Backend, hub_auth: HubAuth, quotas: Quotas, keeper: Keeper):
        self.backend = backend
        self.hub_auth = hub_auth
        self.quotas = quotas
        self.keeper = keeper

    def check_xsrf_cookie(self):
        # token-only API (no cookies are read), so there is no cross-site form to forge
        return

    async def prepare(self):
        token = self.hub_auth.get_token(self, in_cookie=False)
        model = await self.hub_auth.user_for_token(token, sync=False) if token else None
        if not model:
            raise web.HTTPError(403, "a JupyterHub token is required")
        if model.get("kind", "user") != "user":
            raise web.HTTPError(403, "only users keep snapshots")
        if not self.hub_auth.check_scopes(self.hub_auth.access_scopes, model):
            raise web.HTTPError(403, f"the token lacks access to the {SERVICE_NAME} service")
        self.current_user = model
        user = unquote(self.path_kwargs.get("user", ""))
        if user != model["name"]:
            raise web.HTTPError(403, "a user can only use their own snapshots")
        self.user = user
        self.grant = Grant.of(model.get("scopes") or [], user)
        if not self.grant.any:
            raise web.HTTPError(403, f"the token may not use this user's snapshots (it lacks {SNAPSHOTS_SCOPE})")

    # -- what a token limited to some servers may use ------------------------------------
    async def made_for(self, server: str) -> list[str]:
        """The ids of the snapshots made for ``server``."""
        try:
            body = await self.call(self.backend.get_object, self.user, server_index(server))
        except web.HTTPError as err:
            if err.status_code == 404:
                return []
            raise
        return list(json.loads(body).get("snapshots") or [])

    async def allowed_snapshots(self) -> set[str] | None:
        """The snapshot ids this token may use; None for all of them."""
        if self.grant.full:
            return None
        out: set[str] = set()
        for server in self.grant.servers:
            out.update(await self.made_for(server))
        return out

    async def check_snapshot(self, sid: str) -> None:
        """Refuse (403) a snapshot this token may not use."""
        allowed = await self.allowed_snapshots()
        if allowed is not None and sid not in allowed:
            raise web.HTTPError(403, f"this token may use only the snapshots made for its server, not {sid}")

    async def check_chunks(self, ids: list[str]) -> None:
        """Refuse (403) reading chunks that are in no snapshot this token may use."""
        allowed = await self.allowed_snapshots()
        if allowed is None:
            return
        readable: set[str] = set()
        for sid in allowed:
            try:
                _, chunk_ids = await self.call(manifest_chunk_ids, await self.call(
                    self.backend.get_object, self.user, f"{sid}.json"))
            except web.HTTPError:
                continue
            readable |= chunk_ids
        if not set(ids) <= readable:
            raise web.HTTPError(403, "this token may read only the chunks of the snapshots made for its server")

    async def add_to_index(self, server: str, sid: str) -> list[str]:
        """Record that snapshot ``sid`` was made for (or granted to) ``server``."""
        lock = _INDEX_LOCKS.setdefault((self.user, server), asyncio.Lock())
        async with lock:
            sids = await self.made_for(server)
            if sid not in sids:
                sids.append(sid)
                body = json.dumps({"server": server, "snapshots": sids}).encode()
                await self.call(self.backend.put_object, self.user, server_index(server), body)
        return sids

    def write_error(self, status_code, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))

    def json_body(self) -> dict:
        if len(self.request.body) > JSON_MAX:
            raise web.HTTPError(413, f"the request body is {len(self.request.body)} bytes; "
                                     f"this store takes at most {JSON_MAX} bytes of JSON")
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise web.HTTPError(400, "the body must be a JSON object")
        return data

    def ids(self) -> list[str]:
        """The chunk ids the request names (``{"ids": [...]}``), each once, in order: a
        reply never repeats a chunk however often it was asked for."""
        return list(self.chunk_request())

    def chunk_request(self, sized: bool = False) -> dict[str, int | None]:
        """``{id: size}`` of the request's distinct chunk ids (at most ``MAX_IDS``); with
        ``sized``, ``sizes`` must give each id's length (a list beside ``ids``, each a
        byte count up to ``MAX_CHUNK``), else the sizes are None."""
        body = self.json_body()
        ids, sizes = body.get("ids"), body.get("sizes")
        if not isinstance(ids, list):
            raise web.HTTPError(400, "ids must be a list of chunk ids")
        if sized and not (isinstance(sizes, list) and len(sizes) == len(ids)):
            raise web.HTTPError(400, "sizes must be a list of each chunk's length in bytes, one per id")
        out: dict[str, int | None] = {}
        for i, cid in enumerate(ids):
            try:
                cid = check_chunk_id(cid)
            except BackendError as err:
                raise web.HTTPError(400, str(err)) from None
            size = sizes[i] if sized else None
            if sized and not (isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= MAX_CHUNK):
                raise web.HTTPError(413 if isinstance(size, int) and size > MAX_CHUNK else 400,
                                    f"sizes[{i}] must be a chunk's length, 0 to {MAX_CHUNK} bytes, "
                                    f"not {str(size)[:40]}")
            if out.setdefault(cid, size) != size:
                raise web.HTTPError(400, f"sizes: chunk {cid[:12]}... is given two lengths")
            if len(out) > MAX_IDS:
                raise web.HTTPError(400, f"ids: at most {MAX_IDS} distinct chunk ids per request")
        return out

    async def take_quota(self, nbytes: int) -> None:
        """Count ``nbytes`` about to be stored for the user, or refuse (413)."""
        try:
            await self.quotas.take(self.user, nbytes)
        except QuotaExceeded as err:
            raise web.HTTPError(413, str(err)) from None

    async def call(self, fn, *args):
        """Run a (blocking) backend call in a thread, mapping its errors to HTTP."""
        try:
            return await asyncio.to_thread(fn, *args)
        except BackendError as err:
            raise web.HTTPError(err.status, str(err)) from None

    async def keep(self, coro):
        """Await a :class:`.snapshot_keeper.Keeper` call, mapping its refusals to HTTP."""
        try:
            return await coro
        except Refused as err:
            raise web.HTTPError(err.status, str(err)) from None

    def finish_json(self, data, status: int = 200):
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))


class MissingHandler(StoreHandler):
    async def post(self, user):
        ids = self.ids()
        missing = await self.keep(self.keeper.missing(self.user, ids))
        upload = await self.call(self.backend.upload_target, self.user, missing, "")
        self.finish_json({"missing": missing, "upload": upload})


class ChunksHandler(StoreHandler):
    """Chunk pack upload, local backend only: every chunk is checked against its id."""

    async def post(self, user):
        if not self.backend.through_service:
            raise web.HTTPError(405, "this store takes chunks at presigned URLs")
        chunks: dict[str, memoryview] = {}
        try:
            for cid, data in iter_pack(self.request.body):
                if len(data) > MAX_CHUNK:
                    raise web.HTTPError(413, f"chunk {cid[:12]}... is {len(data)} bytes; "
                                             f"this store takes chunks of at most {MAX_CHUNK} bytes")
                chunks[cid] = data
                if len(chunks) > MAX_IDS:
                    raise web.HTTPError(400, f"a chunk pack holds at most {MAX_IDS} chunks")
        except PackError as err:
            raise web.HTTPError(400, str(err)) from None

        def check():
            import blake3  # the service's own dependency; the hub's config does not need it

            for cid, data in chunks.items():
                if blake3.blake3(data).hexdigest() != cid:
                    raise BackendError(f"chunk {cid[:12]}... does not match its id")
            return self.backend.missing(self.user, list(chunks))

        self.keeper.claims.claim(self.user, list(chunks))
        new = await self.call(check)
        # only chunks the user does not keep yet count against the quota
        cost = sum(charge(len(chunks[cid])) for cid in new)
        await self.take_quota(cost)
        try:
            await self.call(lambda: [self.backend.put_chunk(self.user, cid, chunks[cid]) for cid in new])
        except BaseException:
            self.quotas.give_back(self.user, cost)
            raise
        self.finish_json({"stored": len(chunks)})


class UploadsHandler(StoreHandler):
    """Presigned upload URLs (bucket backends): each signed for its chunk's length, and
    their bytes reserved against the user's quota."""

    async def post(self, user):
        if self.backend.through_service:
            raise web.HTTPError(405, "this store takes chunks through the service (POST .../chunks)")
        sizes = self.chunk_request(sized=True)
        self.keeper.claims.claim(self.user, list(sizes))
        try:
            await self.quotas.reserve(self.user, {cid: charge(n) for cid, n in sizes.items()},
                                      getattr(self.backend, "expires", 3600))
        except QuotaExceeded as err:
            raise web.HTTPError(413, str(err)) from None
        self.finish_json(await self.call(self.backend.presign_uploads, self.user, sizes))


class DownloadHandler(StoreHandler):
    async def post(self, user):
        ids = self.ids()
        await self.check_chunks(ids)
        if self.backend.through_service:  # a pack from this service, which finds borrowed chunks
            self.finish_json(await self.call(self.backend.download_target, self.user, ids, ""))
            return
        where, _ = await self.keep(self.keeper.locate(self.user, ids))
        if len(where) <= 1:
            self.finish_json(await self.call(self.backend.download_target, next(iter(where), self.user), ids, ""))
            return
        urls = {}  # chunks borrowed from a class publication are signed for its keys
        for ns, part in where.items():
            urls.update((await self.call(self.backend.download_target, ns, part, ""))["urls"])
        self.finish_json({"kind": "presigned", "urls": urls})


class PackHandler(StoreHandler):
    async def post(self, user):
        if not self.backend.through_service:
            raise web.HTTPError(405, "this store serves chunks at presigned URLs")
        ids = self.ids()
        await self.check_chunks(ids)
        where, _ = await self.keep(self.keeper.locate(self.user, ids))
        home = {cid: ns for ns, part in where.items() for cid in part}
        sizes = await self.call(lambda: [self.backend.chunk_size(home.get(cid, self.user), cid) for cid in ids])
        if sum(sizes) > PACK_MAX:
            raise web.HTTPError(413, f"these {len(ids)} chunks hold {sum(sizes)} bytes; a pack carries "
                                     f"at most {PACK_MAX} bytes of chunks: ask for fewer at a time")
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Length", str(sum(sizes) + len(ids) * PACK_HEADER.size))
        # streamed: one chunk in memory at a time, the next read once the last was sent
        for cid, size in zip(ids, sizes):
            data = await self.call(self.backend.get_chunk, home.get(cid, self.user), cid)
            if len(data) != size:  # changed underneath: end the reply short, the client sees it
                log.warning("chunk %s... of %s changed while it was sent", cid[:12], self.user)
                self.request.connection.close()
                return
            self.write(pack_header(cid, size))
            self.write(data)
            try:
                await self.flush()
            except iostream.StreamClosedError:
                return
        self.finish()


class SnapshotsHandler(StoreHandler):
    async def get(self, user):
        allowed = await self.allowed_snapshots()
        server = self.get_query_argument("server", None)
        if server is not None and ("/" in server or len(server) > 255):
            raise web.HTTPError(400, "server: must be the name of one of your servers ('' for the default one)")
        self.finish_json({"snapshots": await self.call(
            lambda: snapshot_line.list_snapshots(self.backend, self.user, server=server, allowed=allowed))})

    async def post(self, user):
        if not self.grant.full and len(self.grant.servers) != 1:
            raise web.HTTPError(403, "a token for several servers cannot tell which one a snapshot is for")
        body = self.request.body
        if len(body) > MANIFEST_MAX:
            raise web.HTTPError(413, f"the manifest is {len(body)} bytes; this store keeps manifests "
                                     f"of at most {MANIFEST_MAX} bytes")
        # made with a server's token: that server's line, and that server may restore it
        server = None if self.grant.full else next(iter(self.grant.servers))

        async def before_write(sid, line):
            await self.take_quota(charge(len(body)) + charge(0))  # the manifest and its summary
            if line is not None:  # the line's server may restore it (the owner's token named it)
                await self.add_to_index(line, sid)

        summary = await self.keep(self.keeper.store(self.user, body, server=server, before_write=before_write))
        log.info("snapshot %s stored for %s (line %r)", summary["id"], self.user, summary["server"])
        self.finish_json({"id": summary["id"], "server": summary["server"]}, 201)


class SnapshotHandler(StoreHandler):
    async def get(self, user, sid):
        sid = self.sid(sid)
        await self.check_snapshot(sid)
        body = await self.call(self.backend.get_object, self.user, f"{sid}.json")
        self.set_header("Content-Type", "application/json")
        self.finish(body)

    async def delete(self, user, sid):
        """Delete one of the user's snapshots (a token for all of them only); its chunks
        go at the next collection."""
        sid = self.sid(sid)
        if not self.grant.full:
            raise web.HTTPError(403, "only a token for all of this user's snapshots may delete one")
        if not await self.keep(self.keeper.delete(self.user, sid)):
            raise web.HTTPError(404, f"no snapshot {sid}")
        self.set_status(204)
        self.finish()

    @staticmethod
    def sid(sid: str) -> str:
        try:
            return check_snapshot_id(unquote(sid))
        except BackendError as err:
            raise web.HTTPError(400, str(err)) from None


class ReportHandler(SnapshotHandler):
    async def get(self, user, sid):
        sid = self.sid(sid)
        await self.check_snapshot(sid)
        body = await self.call(self.backend.get_object, self.user, f"{sid}.report.json")
        self.set_header("Content-Type", "application/json")
        self.finish(body)

    async def put(self, user, sid):
        sid = self.sid(sid)
        await self.check_snapshot(sid)
        if len(self.request.body) > REPORT_MAX:
            raise web.HTTPError(413, "report too large")
        try:
            RestoreReport.decode(self.request.body)
        except ValueError as err:
            raise web.HTTPError(400, f"not a restore report: {err}") from None
        await self.call(self.backend.get_object, self.user, f"{sid}.json")
        await self.call(self.backend.put_object, self.user, f"{sid}.report.json", self.request.body)
        self.finish_json({"id": sid})


class GrantHandler(SnapshotHandler):
    """Let one of the user's servers restore a snapshot (e.g. one started with the
    ``restore`` option by the user): only a token for all of the user's snapshots may."""

    async def post(self, user, sid):
        sid = self.sid(sid)
        if not self.grant.full:
            raise web.HTTPError(403, "only a token for all of this user's snapshots may grant one to a server")
        server = self.json_body().get("server")
        if not isinstance(server, str) or "/" in server or len(server) > 255:
            raise web.HTTPError(400, "server: must be the name of one of your servers ('' for the default one)")
        await self.call(self.backend.get_object, self.user, f"{sid}.json")
        await self.add_to_index(server, sid)
        self.finish_json({"id": sid, "server": server})


class HealthHandler(web.RequestHandler):
    def get(self):
        self.finish({"ok": True})


def make_app(backend: Backend, hub_auth: HubAuth, prefix: str, *, quota_bytes: int | None = None,
             keep: int = DEFAULT_KEEP, hub_key: str | None = None, keeper: Keeper | None = None,
             **keeper_options) -> web.Application:
    """The store's tornado application; ``prefix`` ends with ``/``; ``quota_bytes``: what
    each user may keep (None: no limit); ``keep``: snapshots each server's line keeps;
    ``hub_key``: the secret the hub's own calls carry (:mod:`.snapshot_hub_routes`;
    None: no such routes); ``keeper_options``: the :class:`.snapshot_keeper.Keeper`'s
    (``grace``, ``min_age``, ``collect_delay``: :mod:`.snapshot_gc`)."""
    from .snapshot_hub_routes import hub_routes  # it builds on this module's handlers

    u = r"(?P<user>[^/]+)"
    quotas = Quotas(backend, quota_bytes)
    if keeper is None:
        keeper = Keeper(backend, quotas, keep=keep, **keeper_options)
    kw = {"backend": backend, "hub_auth": hub_auth, "quotas": keeper.quotas, "keeper": keeper}
    routes = [
        (rf"{prefix}api/users/{u}/chunks/missing", MissingHandler, kw),
        (rf"{prefix}api/users/{u}/chunks/uploads", UploadsHandler, kw),
        (rf"{prefix}api/users/{u}/chunks/download", DownloadHandler, kw),
        (rf"{prefix}api/users/{u}/chunks/pack", PackHandler, kw),
        (rf"{prefix}api/users/{u}/chunks", ChunksHandler, kw),
        (rf"{prefix}api/users/{u}/snapshots", SnapshotsHandler, kw),
        (rf"{prefix}api/users/{u}/snapshots/(?P<sid>[^/]+)/report", ReportHandler, kw),
        (rf"{prefix}api/users/{u}/snapshots/(?P<sid>[^/]+)/servers", GrantHandler, kw),
        (rf"{prefix}api/users/{u}/snapshots/(?P<sid>[^/]+)", SnapshotHandler, kw),
        *(hub_routes(prefix, dict(kw, hub_key=hub_key)) if hub_key else []),
        (rf"{prefix}api/health", HealthHandler),
        # JupyterHub's service health check asks the service's own URL every minute
        (rf"{prefix}", HealthHandler),
    ]
    return web.Application(routes)


def backend_from_env(env=os.environ) -> Backend:
    kind = env.get("CLOUDHOP_STORE_BACKEND", "local")
    if kind == "s3":
        return S3Backend.from_env(env)
    if kind == "local":
        return LocalBackend(env.get("CLOUDHOP_STORE_DIR") or os.path.join(os.getcwd(), "cloudhop-store"))
    raise SystemExit(f"CLOUDHOP_STORE_BACKEND must be 'local' or 's3', not {kind!r}")


def quota_from_env(env=os.environ) -> int | None:
    """Each user's quota in bytes from ``CLOUDHOP_STORE_QUOTA_GIB`` (unset or 0: none)."""
    text = env.get("CLOUDHOP_STORE_QUOTA_GIB", "").strip() or "0"
    try:
        value = float(text)
    except ValueError:
        value = text  # refused below, by name
    try:
        gib = require_number(value, "CLOUDHOP_STORE_QUOTA_GIB", minimum=0, unit="GiB")
    except SettingError as err:
        raise SystemExit(str(err)) from None
    return int(gib * GIB) or None


def keep_from_env(env=os.environ) -> int:
    """Snapshots each server's line keeps, from ``CLOUDHOP_STORE_KEEP_SNAPSHOTS``."""
    text = env.get("CLOUDHOP_STORE_KEEP_SNAPSHOTS", "").strip() or str(DEFAULT_KEEP)
    try:
        value = int(text)
    except ValueError:
        value = text  # refused below, by name
    try:
        return require_number(value, "CLOUDHOP_STORE_KEEP_SNAPSHOTS", minimum=1, integer=True, unit="snapshots")
    except SettingError as err:
        raise SystemExit(str(err)) from None


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)1.1s %(asctime)s cloudhop-store] %(message)s")
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101"))
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", f"/services/{SERVICE_NAME}/")
    backend = backend_from_env()
    app = make_app(backend, HubAuth(cache_max_age=AUTH_CACHE_SECONDS), prefix, quota_bytes=quota_from_env(),
                   keep=keep_from_env(), hub_key=os.environ.get("CLOUDHOP_STORE_HUB_KEY") or None)
    server = httpserver.HTTPServer(app, max_body_size=MAX_BODY)
    server.listen(url.port or 80, url.hostname or "127.0.0.1")
    log.info("snapshot store (%s backend) on %s%s", type(backend).__name__, url.geturl(), prefix)
    exit_with_hub()
    ioloop.IOLoop.current().start()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stable_port(path: str) -> int:
    """A free port picked once and kept in ``path``, so servers that outlive a hub
    restart still find the store at the address they were given."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        port = free_port()
        with open(path, "w") as f:
            f.write(f"{port}\n")
        return port


EXTENSION_ARG = "--ServerApp.jpserver_extensions=cloudhop.extensions=True"


def _then_revoke(hook):
    """A spawner ``post_stop_hook``: ``hook`` (the config's, if any), then revoke the
    stopped server's move and kernel tokens (:func:`.tokens_api.revoke_server_tokens`)."""
    if getattr(hook, "cloudhop_revokes", False):
        return hook

    def post_stop(spawner):
        from .tokens_api import revoke_server_tokens

        try:
            result = hook(spawner) if hook is not None else None
        except BaseException:
            revoke_server_tokens(spawner)
            raise
        if not inspect.isawaitable(result):
            revoke_server_tokens(spawner)
            return result

        async def then():  # the config's hook is a coroutine: revoke after it
            try:
                return await result
            finally:
                revoke_server_tokens(spawner)

        return then()

    post_stop.cloudhop_revokes = True
    return post_stop


def add_store_service(c, *, data_dir: str, port: int, public_url: str | None = None,
                      s3: dict | None = None, env=os.environ) -> None:
    """Add the snapshot store to a JupyterHub config ``c``.

    ``port``: where the service listens on the hub's loopback (given to servers as
    ``CLOUDHOP_STORE_LOCAL_URL``, which only servers of the local provider, on the hub's
    host, use); ``public_url``: the proxy's URL as single-user servers reach it (given to
    them as ``CLOUDHOP_STORE_URL``);
    ``s3``: ``{"bucket", "endpoint_url"?, "region"?, "prefix"?}`` for a bucket (default:
    a directory under ``data_dir``). Credentials are forwarded from ``env`` to the
    service's environment only. Each user's quota is ``c.CloudhopStore.quota_gib``
    (:class:`.config.CloudhopStore`, read from ``c``).

    Also defines Cloudhop's custom scopes and lets every user
    use the service and move their servers (:data:`.tokens_api.USER_SCOPES`), gives
    servers' tokens only the scopes a move needs (:data:`.tokens_api.SERVER_TOKEN_SCOPES`),
    adds the hub's offers and token APIs (:mod:`.offers_api`, :mod:`.tokens_api`), revokes
    a server's move and kernel tokens when it stops (``post_stop_hook``, after any the
    config set), and enables the Cloudhop server extension in every single-user server
    (:data:`EXTENSION_ARG`).
    """
    environment = {"CLOUDHOP_STORE_BACKEND": "local",
                   "CLOUDHOP_STORE_DIR": os.path.join(os.path.abspath(data_dir), "snapshots")}
    if s3:
        environment = {"CLOUDHOP_STORE_BACKEND": "s3", "CLOUDHOP_STORE_S3_BUCKET": s3["bucket"]}
        for key, var in (("endpoint_url", "ENDPOINT"), ("region", "REGION"), ("prefix", "PREFIX")):
            if s3.get(key):
                environment[f"CLOUDHOP_STORE_S3_{var}"] = s3[key]
        environment.update(hub_credentials(env))
    from .config import CloudhopStore

    from .snapshot_link import add_hub_key

    settings = CloudhopStore(config=c)
    environment["CLOUDHOP_STORE_QUOTA_GIB"] = repr(settings.quota_gib)
    environment["CLOUDHOP_STORE_KEEP_SNAPSHOTS"] = str(settings.keep_snapshots)
    add_hub_key(environment)  # the hub's own calls (snapshots_api): the service's environment only
    add_service(c, {
        "name": SERVICE_NAME,
        "url": f"http://127.0.0.1:{port}",
        "command": [sys.executable, "-m", "cloudhop.hub.snapshot_store"],
        "environment": environment,
        "display": False,
    })

    from . import tokens_api
    from . import snapshots_api
    from .offers_api import handlers as offers_handlers
    from .services import setting

    c.JupyterHub.custom_scopes = {**setting(c, "JupyterHub", "custom_scopes", {}), **tokens_api.CUSTOM_SCOPES}
    roles = list(c.JupyterHub.load_roles or []) if "load_roles" in c.JupyterHub else []
    for role in roles:
        if role.get("name") == "user":
            role["scopes"] = sorted(set(role.get("scopes") or ["self"]) | set(tokens_api.USER_SCOPES))
            break
    else:
        roles.append({"name": "user", "scopes": ["self", *tokens_api.USER_SCOPES]})
    c.JupyterHub.load_roles = roles

    current = c.Spawner.server_token_scopes if "server_token_scopes" in c.Spawner else []
    c.Spawner.server_token_scopes = sorted(set(current or []) | set(tokens_api.SERVER_TOKEN_SCOPES))
    c.Spawner.post_stop_hook = _then_revoke(c.Spawner.get("post_stop_hook"))

    extra = list(c.JupyterHub.extra_handlers) if "extra_handlers" in c.JupyterHub else []
    ours = offers_handlers() + tokens_api.handlers() + snapshots_api.handlers()
    c.JupyterHub.extra_handlers = extra + [h for h in ours if h not in extra]

    # the server extension is also enabled by a jupyter_server_config.d file installed with
    # the package; the argument covers editable installs, which do not install that file
    args = list(c.Spawner.args) if "args" in c.Spawner else []
    if EXTENSION_ARG not in args:
        c.Spawner.args = args + [EXTENSION_ARG]
    urls = {"CLOUDHOP_STORE_LOCAL_URL": f"http://127.0.0.1:{port}/services/{SERVICE_NAME}/"}
    if public_url:
        urls["CLOUDHOP_STORE_URL"] = public_url.rstrip("/") + f"/services/{SERVICE_NAME}/"
    c.Spawner.environment.update(urls)


if __name__ == "__main__":
    main()
