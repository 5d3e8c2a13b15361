"""``RayCluster``: the Ray workers of one server, as the spawner drives them.

The head runs beside the notebook (see :mod:`.head`); this object owns the workers:
each one a node launched through the provider interface with role ``ray-worker``,
walking the same ranked failover list as the notebook (:func:`..failover.launch_first`).

Contract with the spawner:

* :meth:`launch` / :meth:`scale` start workers and never raise for a worker that could
  not start: the failure is recorded (``workers[i]["state"] == "failed"``) and told
  through ``on_event``, and the notebook keeps running.
* :meth:`refresh` (called from ``poll``) asks the provider - which answers from its
  cache - and marks workers that died as ``dead``, once, with an event; the server
  stays up. :meth:`scale` replaces dead workers and adds or removes live ones.
* :meth:`stop` terminates every worker and returns when the provider saw them go.
* :meth:`to_state` / :meth:`from_state` keep the workers in the hub's database, and
  :meth:`reattach` finds workers by tag after a hub restart (including one launched
  while the hub was going down).
* :meth:`node_entries` is what the spawner lists in its state's ``nodes``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from ..failover import NoOfferLaunched, launch_first, launch_id
from ..offers import Offer
from ..options import RayRequest
from ..schema import MAX_RAY_WORKERS, OptionError
from ..providers.base import FAILED, RUNNING, TAG_ROLE, TERMINATED, Provider
from ..state import NodeRef
from . import WORKER_ROLE
from .commands import worker_spec

LAUNCHING, ALIVE, DEAD, LAUNCH_FAILED = "launching", "running", "dead", "failed"


class RayCluster:
    def __init__(self, *, request: RayRequest, address: str, port_base: int,
                 provider_for: Callable[[str], Provider], tags: dict, python: str,
                 offers: list[Offer] | None = None, request_id: str = "ray",
                 image: str | None = None, spot: bool = False, zone: str | None = None,
                 token: str | None = None, on_event: Callable[[str], None] | None = None,
                 on_change: Callable[[], None] | None = None, log=None):
        self.request = request
        self.address = address
        self.port_base = port_base
        self.provider_for = provider_for
        self.tags = dict(tags)
        self.python = python
        #: the failover list for one worker, best first (same provider and region as the head)
        self.offers = list(offers or [])
        self.request_id = request_id
        self.image, self.spot, self.zone = image, spot, zone
        #: the cluster's Ray token (:mod:`.auth`): each worker's launcher gets it; kept in
        #: the state, never in :meth:`status` or a message
        self.token = token
        self.on_event = on_event or (lambda msg: None)
        self.on_change = on_change or (lambda: None)
        self.log = log
        #: one record per worker ever launched and not yet cleaned up
        self.workers: list[dict] = []
        self.next_index = 0
        self.needs_reattach = False
        self._lock = asyncio.Lock()

    # -- launching ----------------------------------------------------------------

    async def launch(self, count: int) -> list[dict]:
        """Start ``count`` more workers at once; returns their records."""
        records = [self._new_record() for _ in range(count)]
        if records:
            self.on_event(f"Ray: launching {count} worker(s) joining {self.address}")
            await asyncio.gather(*(self._launch_one(r) for r in records))
            self.on_change()
        return records

    def _new_record(self) -> dict:
        rec = {"index": self.next_index, "state": LAUNCHING, "provider": None, "id": None,
               "region": None, "offer": None, "detail": "", "started": time.time()}
        self.next_index += 1
        self.workers.append(rec)
        return rec

    async def _launch_one(self, rec: dict) -> None:
        name = f"Ray worker {rec['index']}"

        def make_spec(offer: Offer):
            return worker_spec(
                offer=offer, address=self.address,
                request_id=launch_id(f"{self.request_id}-w{rec['index']}", offer, self.spot),
                tags=self.tags, python=self.python, image=self.image, zone=self.zone,
                spot=self.spot, token=self.token,
            )

        async def on_attempt(a: dict):
            if a["state"] == "failed":
                self.on_event(f"{name}: {a['offer']}: {a['reason']} ({a['error']}); trying the next offer")

        try:
            offer, node, _attempts = await launch_first(
                self.offers, make_spec, self.provider_for, on_attempt, what=name)
        except NoOfferLaunched as err:
            rec.update(state=LAUNCH_FAILED, detail=getattr(err, "message", None) or str(err))
            self.on_event(f"{name} could not start: {rec['detail']}")
            return
        rec.update(state=ALIVE if node.state == RUNNING else LAUNCHING, provider=offer.provider,
                   id=node.id, region=offer.region, offer=offer.key, gpu=offer.gpu,
                   gpu_count=offer.gpu_count, detail=node.detail)
        self.on_event(f"{name} launched on {offer.key} as {node.id}")

    # -- watching -----------------------------------------------------------------

    def live(self) -> list[dict]:
        return [w for w in self.workers if w["state"] in (LAUNCHING, ALIVE)]

    async def refresh(self) -> list[dict]:
        """Update each worker from the provider; returns workers found dead just now."""
        if self.needs_reattach:
            await self.reattach()
        died = []
        for w in self.live():
            node = await self.provider_for(w["provider"]).status(w["id"])
            if node.state in (TERMINATED, FAILED):
                w.update(state=DEAD, detail=node.detail or f"node {node.state}", died=time.time())
                died.append(w)
                self.on_event(f"Ray worker {w['index']} ({w['id']}) died: {w['detail']}. "
                              "Scale the cluster to replace it.")
            elif node.state == RUNNING:
                w["state"] = ALIVE
        if died:
            self.on_change()
        return died

    async def reattach(self) -> None:
        """Find this server's workers by tag (a restarted hub, or a launch the state
        missed) and adopt those not already known."""
        self.needs_reattach = False
        known = {w["id"] for w in self.workers}
        for name in sorted({o.provider for o in self.offers} | {w["provider"] for w in self.workers if w["provider"]}):
            try:
                nodes = await self.provider_for(name).list_nodes({**self.tags, TAG_ROLE: WORKER_ROLE})
            except Exception as err:  # a provider that is down must not break poll
                if self.log:
                    self.log.warning("Ray: cannot list workers on %s: %s", name, err)
                continue
            for node in nodes:
                if node.id in known:
                    continue
                rec = self._new_record()
                rec.update(state=ALIVE if node.state == RUNNING else LAUNCHING, provider=name,
                           id=node.id, region=node.region, detail="re-attached after a hub restart")
                self.on_event(f"Ray worker {node.id} re-attached")
        self.on_change()

    # -- changing -----------------------------------------------------------------

    async def scale(self, workers, check: Callable[[int], None] | None = None) -> dict:
        """Make the cluster have ``workers`` live workers: forget dead and failed ones
        (terminating what is left of them), launch the missing, terminate the newest
        extras. Raises :class:`OptionError` (field ``workers``) for a bad count. When
        the count launches workers (more than are live now, or a dead one replaced),
        ``check(workers)`` runs first and may raise to refuse; nothing changes then."""
        if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= MAX_RAY_WORKERS:
            raise OptionError("workers", f"must be a whole number from 0 to {MAX_RAY_WORKERS}, not {workers!r}")
        async with self._lock:
            await self.refresh()
            if check is not None and workers > len(self.live()):
                check(workers)
            gone = [w for w in self.workers if w["state"] in (DEAD, LAUNCH_FAILED)]
            await self._terminate(gone)
            self.workers = [w for w in self.workers if w not in gone]
            live = self.live()
            if workers > len(live):
                await self.launch(workers - len(live))
            elif workers < len(live):
                extra = sorted(live, key=lambda w: w["index"])[workers:]
                self.on_event(f"Ray: removing {len(extra)} worker(s)")
                await self._terminate(extra)
                self.workers = [w for w in self.workers if w not in extra]
            self.request = RayRequest(workers=workers, gpu=self.request.gpu, gpu_count=self.request.gpu_count)
            self.on_change()
            return self.status()

    async def stop(self) -> None:
        """Terminate every worker (idempotent)."""
        async with self._lock:
            await self._terminate(list(self.workers))
            self.workers = []
            self.on_change()

    async def _terminate(self, workers: list[dict]) -> None:
        async def one(w):
            if w.get("id") and w.get("provider"):
                await self.provider_for(w["provider"]).terminate(w["id"])
        await asyncio.gather(*(one(w) for w in workers))

    # -- reporting and state --------------------------------------------------------

    def node_entries(self) -> list[dict]:
        """Workers as the spawner's ``nodes`` entries (every node a provider may still
        hold), each a :class:`..state.NodeRef` as a dict."""
        return [NodeRef(provider=w["provider"], id=w["id"], role=WORKER_ROLE, region=w["region"]).to_dict()
                for w in self.workers if w.get("id")]

    def status(self) -> dict:
        """What the server's user may see: no tags, tokens or commands."""
        return {
            "address": self.address,
            "requested": self.request.workers,
            "gpu": self.request.gpu,
            "gpu_count": self.request.gpu_count,
            "workers": [
                {k: w.get(k) for k in ("index", "state", "id", "provider", "region", "offer",
                                       "gpu", "gpu_count", "detail", "started", "died")}
                for w in self.workers
            ],
            "alive": len(self.live()),
            "dead": len([w for w in self.workers if w["state"] in (DEAD, LAUNCH_FAILED)]),
        }

    def to_state(self) -> dict:
        return {
            "address": self.address, "port_base": self.port_base,
            "request": {"workers": self.request.workers, "gpu": self.request.gpu,
                        "gpu_count": self.request.gpu_count},
            "offers": [o.to_dict() for o in self.offers],
            "request_id": self.request_id, "next_index": self.next_index, "python": self.python,
            "image": self.image, "spot": self.spot, "zone": self.zone, "token": self.token,
            "workers": [dict(w) for w in self.workers],
        }

    @classmethod
    def from_state(cls, state: dict, **kw) -> "RayCluster":
        """Rebuild from :meth:`to_state`; the first :meth:`refresh` re-attaches by tag."""
        cluster = cls(
            request=RayRequest(**state["request"]), address=state["address"],
            port_base=state["port_base"], offers=[Offer.from_dict(o) for o in state.get("offers", [])],
            request_id=state.get("request_id", "ray"), image=state.get("image"),
            spot=state.get("spot", False), zone=state.get("zone"), token=state.get("token"), **kw,
        )
        cluster.workers = [dict(w) for w in state.get("workers", [])]
        cluster.next_index = state.get("next_index", len(cluster.workers))
        cluster.needs_reattach = True
        return cluster
