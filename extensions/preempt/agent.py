"""The preemption agent: on the cloud's notice, snapshot this server and ask the hub to
relaunch it elsewhere.

:meth:`Agent.run` waits for the watcher's first :class:`~.watchers.Notice`, then

1. takes a snapshot of the workspace and the kernels' state (the ``snapshot`` callable:
   in the server, :meth:`cloudhop.extensions.hibernate.Hibernator.take`, the path every
   snapshot of a server goes), timing it from the moment the notice was read
   (``notice_to_snapshot_s``, logged and sent to the hub);
2. tells the hub (``POST /hub/api/cloudhop/rescue/{user}[/{server}]`` with the server's
   own token, :mod:`cloudhop.hub.rescue_api`), which stops this server without another
   snapshot and starts it again on the next offer of its failover list, restoring this
   snapshot. A hub that cannot be reached (or answers 5xx) is asked again, backing off,
   for ``retry_for`` seconds: the snapshot is taken once, whatever the hub does.

One rescue per agent: a later notice (a rebalance recommendation followed by the
interruption itself, a repeated read) changes nothing; :attr:`Agent.record` keeps what
happened. A snapshot that fails (the store down) is retried while the window lasts; if
it never succeeds the hub is told so, and relaunches nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ..hubclient import HubClient, HubError
from .watchers import Notice, Watcher

log = logging.getLogger("cloudhop.preempt")

#: seconds between the hub calls that failed (the last repeats)
BACKOFF = (0.5, 1, 2, 4, 8, 10)
#: seconds the snapshot is retried after the notice before the agent gives up on it
SNAPSHOT_WINDOW = 90


class Agent:
    """Watches one server's node (``watcher``), snapshots it (``snapshot(notice)``,
    returning at least ``{"id"}``) and tells the hub (``hub``, the server's own client)."""

    def __init__(self, watcher: Watcher, snapshot: Callable[[Notice], Awaitable[dict]], hub: HubClient, *,
                 retry_for: float = 600, snapshot_window: float = SNAPSHOT_WINDOW):
        self.watcher = watcher
        self.snapshot = snapshot
        self.hub = hub
        self.retry_for = retry_for
        self.snapshot_window = snapshot_window
        #: the rescue as it went (None until a notice): notice, snapshot, bytes,
        #: notice_to_snapshot_s, hub ("told" | "refused: ..." | "unreachable: ..."), the hub's record
        self.record: dict | None = None
        self._lock = asyncio.Lock()

    async def run(self) -> dict:
        """Wait for a notice, then rescue; returns :attr:`record`."""
        notice = await self.watcher.wait()
        return await self.rescue(notice)

    async def rescue(self, notice: Notice) -> dict:
        """Snapshot and tell the hub, once: a second call returns the first's record."""
        async with self._lock:
            if self.record is not None:
                log.info("Cloudhop: %s notice (%s) ignored: this server is already being rescued",
                         notice.cloud, notice.kind)
                return self.record
            self.record = {"notice": notice.to_json()}
            log.warning("Cloudhop: %s %s notice (%s): snapshotting this server to relaunch it elsewhere",
                        notice.cloud, notice.kind, notice.detail)
            body = await self._snapshot(notice)
            self.record["hub"] = await self._tell_hub(body)
            return self.record

    async def _snapshot(self, notice: Notice) -> dict:
        """Take the snapshot (retried within the window); the hub call's body."""
        body = {"notice": notice.to_json()}
        started = time.monotonic()
        delay = iter(BACKOFF)
        while True:
            try:
                taken = await self.snapshot(notice)
                break
            except Exception as err:  # noqa: BLE001 - the store down, a snapshot already running
                waited = time.monotonic() - started
                if waited >= self.snapshot_window:
                    log.error("Cloudhop: no snapshot of this server after the %s notice: %s", notice.cloud, err)
                    self.record["error"] = body["error"] = f"the snapshot failed: {err}"
                    return body
                log.warning("Cloudhop: the snapshot after the notice failed (%s); trying again", err)
                await asyncio.sleep(next(delay, BACKOFF[-1]))
        # from the moment the notice was read (its ``seen``), in wall-clock seconds,
        # which is what the cloud's window is counted in
        seconds = round(max(0.0, time.time() - notice.seen), 3)
        body.update(snapshot=taken["id"], bytes=taken.get("bytes"), notice_to_snapshot_s=seconds)
        self.record.update(snapshot=taken["id"], bytes=taken.get("bytes"), notice_to_snapshot_s=seconds)
        log.warning("Cloudhop: snapshot %s (%s bytes) taken %.1f s after the %s %s notice",
                    taken["id"], taken.get("bytes"), seconds, notice.cloud, notice.kind)
        return body

    async def _tell_hub(self, body: dict) -> str:
        """POST the rescue to the hub until it answers; what it said, in words."""
        deadline = time.monotonic() + self.retry_for
        delay = iter(BACKOFF)
        while True:
            try:
                self.record["rescue"] = await self.hub.rescue(body)
                log.info("Cloudhop: the hub took the rescue of this server: %s", self.record["rescue"].get("phase"))
                return "told"
            except HubError as err:
                if err.status is not None and err.status < 500:
                    log.error("Cloudhop: the hub refused the rescue of this server: %s", err)
                    return f"refused: {err}"
                if time.monotonic() >= deadline:
                    log.error("Cloudhop: the hub did not take the rescue within %.0f s: %s", self.retry_for, err)
                    return f"unreachable: {err}"
                log.warning("Cloudhop: could not tell the hub about the notice (%s); trying again", err)
            await asyncio.sleep(next(delay, BACKOFF[-1]))
