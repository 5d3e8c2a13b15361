"""Per-user quotas of the snapshot store (``c.CloudhopStore.quota_gib``).

A user's *usage* is what their namespace holds in the backend: chunks, manifests,
restore reports and indexes, each counted as at least :data:`MIN_CHARGE` bytes (the disk
block it takes, so a flood of tiny chunks is not free). Chunks a user already keeps cost
nothing again: only chunks the store lacks are charged.

Where the figure comes from, and what it costs:

* The first time the service sees a user (so after every restart) it scans that user's
  namespace once (:meth:`~.store_backends.Backend.sizes`): a directory walk on the local
  backend, a bucket listing on S3 (one request per 1,000 objects; ~4,000 chunks per GiB
  stored).
* Then the figure is kept in memory. The local backend's chunks and every manifest are
  written by the service, which adds what it writes. S3 chunks go straight to the bucket,
  so issuing presigned upload URLs *reserves* their signed lengths until a later scan
  finds them stored (then the scan's total holds them) or their URLs have expired unused.
* The figure only errs high (a reservation never used, a report overwritten, a chunk an
  operator removed), and a request it would refuse first rescans (at most once per
  :data:`RESCAN_SECONDS` per user), so such an error never refuses an upload that fits.
  What it does not know after a restart: presigned URLs issued before it and not used
  yet. A user can therefore exceed the quota by what they were allowed to reserve within
  the URLs' lifetime (an hour) before a restart.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

GIB = 1 << 30
#: the least a stored object counts for (bytes)
MIN_CHARGE = 4096
#: a request the usage figure would refuse rescans first, at most this often per user
RESCAN_SECONDS = 30.0


def charge(size: int) -> int:
    """What an object of ``size`` bytes counts for."""
    return max(int(size), MIN_CHARGE)


def human(n: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} bytes"


class QuotaExceeded(ValueError):
    """An upload would take a user past the quota; the message names both figures."""


@dataclass
class _Usage:
    #: bytes found by the last scan plus what the service wrote since
    known: int = 0
    #: chunk id -> (bytes, when its presigned URL expires), not yet seen stored
    reserved: dict[str, tuple[int, float]] = field(default_factory=dict)
    scanned_at: float | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def total(self) -> int:
        return self.known + sum(n for n, _ in self.reserved.values())


class Quotas:
    """Each user's usage of ``backend`` and the ``limit`` (bytes; None: unlimited).

    Coroutines, run on the service's event loop; a scan runs in a thread."""

    def __init__(self, backend, limit: int | None, *, clock=time.monotonic):
        self.backend = backend
        self.limit = limit or None
        self.clock = clock
        self._users: dict[str, _Usage] = {}

    async def usage(self, user: str) -> int:
        """``user``'s usage in bytes, as far as the service knows (scanning it first
        if it has not yet)."""
        state = self._users.setdefault(user, _Usage())
        async with state.lock:
            if state.scanned_at is None:
                await self._scan(user, state)
            return state.total

    async def recount(self, user: str) -> int:
        """Scan ``user``'s namespace again (after a garbage collection freed some of it);
        their usage."""
        state = self._users.setdefault(user, _Usage())
        async with state.lock:
            await self._scan(user, state)
            return state.total

    async def take(self, user: str, nbytes: int) -> None:
        """Count ``nbytes`` the service is about to write for ``user``, or raise
        :class:`QuotaExceeded` (nothing counted). :meth:`give_back` undoes it when the
        write fails."""
        if self.limit is None or nbytes <= 0:
            return
        state = self._users.setdefault(user, _Usage())
        async with state.lock:
            await self._fit(user, state, nbytes)
            state.known += nbytes

    def give_back(self, user: str, nbytes: int) -> None:
        state = self._users.get(user)
        if state is not None and self.limit is not None:
            state.known = max(0, state.known - nbytes)

    async def reserve(self, user: str, chunks: dict[str, int], expires_in: float) -> None:
        """Reserve presigned uploads of ``chunks`` (id -> counted bytes) whose URLs
        expire in ``expires_in`` seconds, or raise :class:`QuotaExceeded` (nothing
        reserved). A chunk already reserved is not counted twice."""
        if self.limit is None or not chunks:
            return
        state = self._users.setdefault(user, _Usage())
        async with state.lock:
            need = sum(n for cid, n in chunks.items() if cid not in state.reserved)
            await self._fit(user, state, need)
            until = self.clock() + expires_in
            for cid, n in chunks.items():
                state.reserved[cid] = (n, until)

    async def _fit(self, user: str, state: _Usage, need: int) -> None:
        if state.scanned_at is None:
            await self._scan(user, state)
        if state.total + need > self.limit and self.clock() - state.scanned_at >= RESCAN_SECONDS:
            await self._scan(user, state)
        if state.total + need > self.limit:
            raise QuotaExceeded(
                f"snapshot quota full (used {human(state.total)} of {human(self.limit)}): "
                f"the snapshot store's quota is {human(self.limit)} per user; {user} keeps "
                f"{human(state.total)} and this upload needs {human(need)} more. Ask the hub's "
                "operator to raise c.CloudhopStore.quota_gib or to remove old snapshots")

    async def _scan(self, user: str, state: _Usage) -> None:
        watch = set(state.reserved)

        def scan():
            total, found = 0, set()
            for name, size in self.backend.sizes(user):
                total += charge(size)
                if name in watch:
                    found.add(name)
            return total, found

        total, found = await asyncio.to_thread(scan)
        now = self.clock()
        state.known = total
        state.reserved = {cid: (n, until) for cid, (n, until) in state.reserved.items()
                          if cid not in found and until > now}
        state.scanned_at = now
