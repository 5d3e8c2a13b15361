"""The store service's keeper of snapshot lines, class snapshots and garbage collection.

One :class:`Keeper` per store service. It runs the synchronous backend work of
:mod:`.snapshot_line`, :mod:`.snapshot_classes` and :mod:`.snapshot_gc` in threads,
under one asyncio lock per namespace, so that within the service

* storing a manifest (its chunks checked present, then written, then its line pruned)
  and collecting the same user's namespace never interleave;
* a class record, a publication's borrowers and a user's borrow list are each
  read-modify-written by one request at a time.

It also keeps the chunk :class:`~.snapshot_gc.Claims` and schedules a collection of a
user's namespace (and the publications) shortly after snapshots were deleted or pruned.
"""

from __future__ import annotations

import asyncio
import logging

from . import snapshot_classes as classes
from . import snapshot_line as line
from .snapshot_gc import GRACE_SECONDS, Claims, Collected, collect, referenced, sweep
from .store_backends import Backend, BackendError, manifest_chunk_ids, new_snapshot_id
from .store_quota import QuotaExceeded, Quotas, charge

log = logging.getLogger("cloudhop.store")
#: seconds after a deletion before the namespace is collected (deletions come in bursts)
COLLECT_DELAY = 30.0


class Refused(Exception):
    """A request the keeper refuses: ``status`` and a message naming the field."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Keeper:
    def __init__(self, backend: Backend, quotas: Quotas, *, keep: int = 5, grace: float = GRACE_SECONDS,
                 min_age: float | None = None, collect_delay: float = COLLECT_DELAY):
        self.backend = backend
        self.quotas = quotas
        self.keep = keep
        self.grace = grace
        self.min_age = grace if min_age is None else min_age
        self.collect_delay = collect_delay
        self.claims = Claims()
        self._locks: dict[str, asyncio.Lock] = {}
        self._scheduled: dict[str, asyncio.Task] = {}

    def lock(self, ns: str) -> asyncio.Lock:
        return self._locks.setdefault(ns, asyncio.Lock())

    async def run(self, fn, *args, **kw):
        """``fn`` in a thread; backend and class errors become :class:`Refused`."""
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except BackendError as err:
            raise Refused(err.status, str(err)) from None
        except classes.ClassError as err:
            raise Refused(err.status, str(err)) from None

    # -- chunks ------------------------------------------------------------------------
    async def locate(self, user: str, ids: list[str]) -> tuple[dict[str, list[str]], list[str]]:
        """``({namespace: ids}, missing)`` for ``user``'s chunks (see
        :func:`.snapshot_classes.locate`)."""
        return await self.run(classes.locate, self.backend, user, ids)

    async def missing(self, user: str, ids: list[str]) -> list[str]:
        """Which of ``ids`` ``user`` has nowhere; claims the others (the client will not
        send them again, so a collection must leave them for its manifest)."""
        where, missing = await self.locate(user, ids)
        for ns, part in where.items():
            self.claims.claim(ns, part)
        self.claims.claim(user, missing)
        return missing

    # -- the line ----------------------------------------------------------------------
    async def store(self, user: str, body: bytes, *, server: str | None, before_write=None) -> dict:
        """Store a manifest (all its chunks present) in ``server``'s line (None: the one
        its meta names, if any); prune that line. ``before_write(sid, line)``, a coroutine, runs
        under the lock before the manifest is written (quota, index). The summary."""
        data, ids = await self.run(manifest_chunk_ids, body)
        async with self.lock(user):
            where, missing = await self.locate(user, sorted(ids))
            if missing:
                raise Refused(409, f"{len(missing)} chunk(s) of this snapshot are not in the store")
            sid = new_snapshot_id()
            server = server if server is not None else line.meta_server(data)
            if before_write is not None:
                await before_write(sid, server)
            summary = line.summarize(sid, data, server=server, borrows=[ns for ns in where if ns != user])
            await self.run(self.backend.put_object, user, f"{sid}.json", body)
            await self.run(line.write_summary, self.backend, user, summary)
            for ns, part in where.items():
                self.claims.release(ns, part)
            pruned = []
            if server is not None:
                pruned = await self.run(line.prune, self.backend, user, server, self.keep)
        if pruned:
            log.info("line %s/%s keeps %d snapshots: deleted %s", user, server, self.keep, ", ".join(pruned))
            self.schedule_collect(user)
        return summary

    async def delete(self, user: str, sid: str) -> bool:
        async with self.lock(user):
            gone = await self.run(line.delete_snapshot, self.backend, user, sid)
        if gone:
            self.schedule_collect(user)
        return gone

    # -- garbage collection ------------------------------------------------------------
    async def collect_user(self, user: str) -> Collected:
        """Mark and sweep ``user``'s namespace, then recount their quota."""
        async with self.lock(user):
            out = await self.run(collect, self.backend, user, claims=self.claims, grace=self.grace,
                                 min_age=self.min_age)
        await self.quotas.recount(user)
        log.info("collected %s: %d chunks deleted (%d bytes), %d kept", user, out.deleted, out.freed, out.kept)
        return out

    async def collect_publications(self, namespaces=None) -> list[Collected]:
        """Mark and sweep class publications (``namespaces``, default every one; marks:
        its manifest, if still published, and its borrowers' kept manifests)."""
        out = []
        every = await self.run(classes.publications, self.backend)
        for ns in every if namespaces is None else [n for n in every if n in set(namespaces)]:
            async with self.lock(classes.CLASSES):
                marked = await self.run(classes.marks, self.backend, ns)

                def mark_and_sweep(ns=ns, marked=marked):
                    done = sweep(self.backend, ns, referenced(self.backend, ns) | marked,
                                 protected=self.claims.recent(ns, self.grace), min_age=self.min_age)
                    if not line.snapshot_ids(self.backend, ns) and done.kept == 0:
                        classes.forget_publication(self.backend, ns)
                    return done

                out.append(await self.run(mark_and_sweep))
        return out

    async def collect(self, ns: str) -> list[Collected]:
        """Collect namespace ``ns``: a user's (then the publications they borrow from, which
        their deletions may have freed) or a class publication's."""
        if ns.startswith("/class/"):
            return await self.collect_publications([ns])
        out = [await self.collect_user(ns)]
        return out + await self.collect_publications(await self.run(classes.borrows, self.backend, ns))

    def schedule_collect(self, ns: str) -> None:
        """:meth:`collect` ``ns`` ``collect_delay`` seconds from now (once, however many
        deletions come meanwhile)."""
        if ns in self._scheduled and not self._scheduled[ns].done():
            return

        async def later():
            await asyncio.sleep(self.collect_delay)
            try:
                await self.collect(ns)
            except Exception:  # noqa: BLE001 - a collection is retried at the next deletion
                log.exception("collecting %s failed", ns)

        self._scheduled[ns] = asyncio.ensure_future(later())

    # -- classes -----------------------------------------------------------------------
    async def publish(self, owner: str, sid: str, name: str, share: str, *, replace: bool,
                      admin: bool = False) -> dict:
        async with self.lock(classes.CLASSES):
            old = await self.run(classes.get_record, self.backend, name)
            record = await self.run(classes.publish, self.backend, owner, sid, name, share,
                                    replace=replace, admin=admin)
        if old is not None:  # the replaced publication keeps only what students' copies use
            self.schedule_collect(classes.publication_ns(old["publication"]))
        log.info("class snapshot %r published by %s from %s for %s", name, owner, sid, share)
        return record

    async def revoke(self, name: str) -> dict | None:
        async with self.lock(classes.CLASSES):
            record = await self.run(classes.revoke, self.backend, name)
        if record is not None:
            log.info("class snapshot %r revoked", name)
            self.schedule_collect(classes.publication_ns(record["publication"]))
        return record

    async def copy_for(self, user: str, name: str, groups, *, server: str) -> dict:
        """``user``'s own copy of class ``name`` in ``server``'s line (its summary)."""
        async with self.lock(classes.CLASSES), self.lock(user):
            summary = await self.run(classes.copy_for, self.backend, user, name, groups, server=server)
            try:  # the copy's manifest is the student's (its chunks are the publication's)
                await self.quotas.take(user, charge(summary.pop("manifest_bytes")))
            except QuotaExceeded as err:
                await self.run(line.delete_snapshot, self.backend, user, summary["id"])
                raise Refused(413, str(err)) from None
            pruned = await self.run(line.prune, self.backend, user, server, self.keep)
        if pruned:
            self.schedule_collect(user)
        return summary
