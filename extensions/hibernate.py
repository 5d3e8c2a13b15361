"""The server's half of a hibernating stop: ``POST {server}/cloudhop/api/snapshots``.

::

    POST {server}/cloudhop/api/snapshots   {"reason": "stop" | "cull", "kernels": true}
         -> 200 {"id", "bytes", "bytes_sent", "files", "kernels", "skipped", "seconds"}
    POST {server}/cloudhop/api/snapshots   {"name": "week3", "share": "group:students" | "all",
                                            "replace": false, "kernels": true}
         -> 200 {..., "class": record}: the same snapshot (kind "class"), then published as
            a class snapshot through the hub (``POST /hub/api/cloudhop/classes``, which
            decides who may publish; an existing name needs "replace": true)

Takes a snapshot of the workspace and (with ``kernels``) the state of each session's
kernel into the snapshot store, under this server's own line (stored with the server's
own token, so the store indexes it for this server and only this server may restore
it). The hub calls it with the server's token before it terminates the node
(:mod:`cloudhop.spawner.durable`); the preemption agent calls :meth:`Hibernator.take`
in-process. The capture itself is :mod:`.capture`, the one path moves use too.

The manifest's ``meta``: ``kind`` (``"hibernate"`` here, or the caller's), ``server``
(this server's name), ``source`` (provider, region, GPU), ``kernels`` (each session with
its variables and what its checkpoint skipped), ``skipped`` (workspace paths left out
and kernel variables not kept) and ``reason``.

A failure answers with the reason as the message: 507 for a full quota (the store's
"snapshot quota full (used X of Y)"), 502 when the store refused or could not be
reached, 500 for anything else (a kernel that cannot be checkpointed); 409 while
another snapshot of this server is being taken.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import time

from jupyter_server.auth.decorator import authorized
from tornado import web

from .capture import capture, checkpoint_kernels, kernel_skipped, source_meta
from .unsaved import save_open_documents
from .handlers import CloudhopHandler
from .hubclient import HubError
from .migrate import hold
from .snapshot.client import StoreClient, StoreError

log = logging.getLogger("cloudhop.hibernate")
#: what may ask for a snapshot, and so name its reason: a hub stop ("stop", or "cull" when
#: the culling policy's limit for the server had passed: the culler's stop), a spot
#: notice, the user
REASONS = ("stop", "cull", "preempt", "manual")
KINDS = ("hibernate", "preempt", "class", "migration")


#: a class snapshot's fields (``name`` publishes the snapshot under that name, for ``share``)
CLASS_FIELDS = ("name", "share", "replace")


def class_request(body: dict) -> dict | None:
    """The class publication a request asks for (``name``, ``share``, ``replace``), None
    without a ``name``; a 400 naming the field that is wrong (the hub checks the rest)."""
    if body.get("name") is None:
        if any(body.get(f) is not None for f in CLASS_FIELDS[1:]):
            raise web.HTTPError(400, "name: share and replace publish a class snapshot, which needs a name")
        return None
    if not isinstance(body["name"], str):
        raise web.HTTPError(400, "name: must be the class snapshot's name, like \"week3\"")
    share, replace = body.get("share", "all"), body.get("replace", False)
    if not isinstance(share, str):
        raise web.HTTPError(400, "share: must be \"all\" or \"group:<name>\"")
    if not isinstance(replace, bool):
        raise web.HTTPError(400, "replace: must be true or false")
    return {"name": body["name"], "share": share, "replace": replace}


class Busy(RuntimeError):
    """Another snapshot of this server is being taken."""


class Hibernator:
    """Takes snapshots of this server into its own line. ``settings``: the moves'
    settings (:class:`~.migrate.CloudhopMigration`: store URL, excludes, kernel timeout)."""

    def __init__(self, serverapp, hub, settings):
        self.app = serverapp
        self.hub = hub
        self.settings = settings
        self._lock = asyncio.Lock()

    async def take(self, *, reason: str = "stop", kernels: bool = True, kind: str = "hibernate",
                   extra_meta: dict | None = None) -> dict:
        """Snapshot this server now; returns the answer of the endpoint. Raises
        :class:`Busy` while another runs, StoreError when the store refuses."""
        if self._lock.locked():
            raise Busy("a snapshot of this server is already being taken")
        async with self._lock:
            await hold("hibernate")  # a test's hold (migrate.HOLD_ENV); unset, nothing waits
            started = time.monotonic()
            workdir = tempfile.mkdtemp(prefix="cloudhop-hibernate-")
            store = StoreClient(self.settings.store_url, self.hub.user, self.hub.token)
            try:
                # what the user's pages have not saved yet, saved first (or listed as left out)
                unsaved = await save_open_documents(self.app, self.settings.save_timeout)
                found = await checkpoint_kernels(self.app, workdir, self.settings.kernel_timeout) if kernels else []
                left_out = await asyncio.to_thread(self._left_out)
                skipped = unsaved + left_out + kernel_skipped(found)
                meta = {**(extra_meta or {}), "kind": kind, "server": self.hub.server_name, "source": source_meta(),
                        "reason": reason, "skipped": skipped}
                sid, manifest, stats = await capture(self.app, store, found, excludes=self.settings.excludes,
                                                     meta=meta)
            finally:
                store.close()
                shutil.rmtree(workdir, ignore_errors=True)
            answer = {
                "id": sid, "bytes": stats.bytes_total, "bytes_sent": stats.bytes_sent, "files": stats.files,
                "kernels": [{"path": k["path"], "variables": k["variables"], "skipped": k["skipped"]} for k in found],
                "skipped": skipped, "seconds": round(time.monotonic() - started, 3),
            }
            log.info("snapshot %s of this server (%s): %d files, %d bytes (%d sent), %d kernel(s) in %.1f s",
                     sid, reason, stats.files, stats.bytes_total, stats.bytes_sent, len(found), answer["seconds"])
            return answer

    def _left_out(self) -> list[dict]:
        """The workspace paths a snapshot leaves out now (the excludes' walk; blocks)."""
        excludes = self.settings.excludes
        for _ in excludes.walk(self.app.root_dir):
            pass
        return [s.to_json() for s in excludes.skipped]


class SnapshotsHandler(CloudhopHandler):
    """``POST cloudhop/api/snapshots``: see the module's docstring."""

    def initialize(self, hibernator: Hibernator):
        self.hibernator = hibernator

    @web.authenticated
    @authorized
    async def post(self):
        self.check_owner()
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the body must be JSON like {\"reason\": \"stop\", \"kernels\": true}") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "the body must be a JSON object")
        unknown = sorted(set(body) - {"reason", "kernels", *CLASS_FIELDS})
        if unknown:
            raise web.HTTPError(400, f"{unknown[0]}: unknown field; valid: 'reason', 'kernels', "
                                     f"{', '.join(repr(f) for f in CLASS_FIELDS)}")
        publish = class_request(body)
        reason, kernels = body.get("reason", "manual" if publish else "stop"), body.get("kernels", True)
        if reason not in REASONS:
            raise web.HTTPError(400, f"reason: must be one of {', '.join(REASONS)}, not {str(reason)[:40]!r}")
        if not isinstance(kernels, bool):
            raise web.HTTPError(400, f"kernels: must be true or false, not {str(kernels)[:40]!r}")
        if not self.hibernator.settings.store_url or not self.hibernator.hub.configured:
            raise web.HTTPError(503, "this server is not started by a Cloudhop hub; there is no store to snapshot to")
        try:
            answer = await self.hibernator.take(reason=reason, kernels=kernels,
                                                **({"kind": "class"} if publish else {}))
        except Busy as err:
            raise web.HTTPError(409, str(err), reason="busy") from None
        except StoreError as err:
            status = 507 if err.status == 413 else 502
            message = str(err).removeprefix("snapshot store: 413 ")
            raise web.HTTPError(status, message) from None
        except Exception as err:  # noqa: BLE001 - a kernel that cannot be checkpointed, a file that changed
            log.exception("snapshot of this server failed")
            raise web.HTTPError(500, f"the snapshot failed: {err}") from None
        if publish:  # a class snapshot (docs/teaching.md): the hub decides who may publish
            try:
                answer["class"] = await self.hibernator.hub.request(
                    "POST", "/cloudhop/classes", {"snapshot": answer["id"], **publish})
            except HubError as err:
                raise web.HTTPError(err.status if err.status and 400 <= err.status < 500 else 502,
                                    f"the snapshot {answer['id']} was stored but not published: {err.message}") from None
        self.finish(json.dumps(answer))
