"""``RayLauncher``: the Ray side of one server, driven by the spawner that owns it.

The spawner only calls it for a server that asked for Ray (``request.ray``); a spawn
without Ray never enters this module. Like :class:`.cluster.RayCluster` (and Ray's
autoscaler v2 node provider), it has a narrow interface and reads nothing of its
caller: every call gets what it needs as arguments, and it reports back through the
``progress`` and ``save`` callables it was built with (docs/architecture.md, "Spawn").

A spawn with Ray, step by step:

1. :meth:`filter_plan` keeps the notebook's offers where the workers can run too, and
   :meth:`server_price` prices notebook and workers for the policy's price rules;
2. :meth:`wrap_notebook_spec` puts the head launcher in front of each notebook spec of
   the failover walk and returns a :class:`NotebookSpec` (spec, head port block,
   cluster id, and the cluster's Ray token, :mod:`.auth`, which the spec's environment
   hands to the head);
3. once the notebook node runs, :meth:`start_workers` gets the launched offer's
   :class:`NotebookSpec` back, creates the :class:`RayCluster` and launches the workers.

Afterwards :meth:`refresh` (from ``poll``), :meth:`resize` (the hub's Ray API),
:meth:`stop`, :meth:`to_state` and :meth:`load_state` (the ``"ray"`` entry of the
server's state). A provider with ``handles_ray`` (Kubernetes) builds the cluster
itself: the spec only carries the request, and no head or worker is started here.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from ..limits import NOTHING, Usage
from ..offers import Offer, matching
from ..options import LaunchRequest, RayRequest
from ..policy import PolicyError, server_price as price_of_server
from ..providers.base import LaunchSpec, Node, Provider
from . import CLUSTER_TAG
from .auth import new_token, node_env
from .cluster import RayCluster
from .commands import head_address, head_command, head_port_base, python_for
from .ports import candidate_bases, find_free_block

#: head blocks this hub chose recently (base -> monotonic time): a block is free until
#: the head's launcher claims it, so two spawns in the same minute must not get the same
_HANDED_OUT: dict[int, float] = {}
HANDOUT_GRACE = 300.0


@dataclass(frozen=True)
class NotebookSpec:
    """What :meth:`RayLauncher.wrap_notebook_spec` returns for one offer: the notebook's
    ``spec`` and, when a Ray head runs beside the notebook, the head's ``port_base``,
    the ``cluster_id`` every node of the cluster is tagged with and the cluster's Ray
    ``token`` (None otherwise)."""

    spec: LaunchSpec
    port_base: int | None = None
    cluster_id: str | None = None
    token: str | None = field(default=None, repr=False)


def worker_offers(offers: list[Offer], notebook_offer: Offer, request: LaunchRequest) -> list[Offer]:
    """The workers' failover list: offers with the requested worker GPU in the notebook's
    provider and region (workers join the head over the private network), ranked by
    the same optimizer as the notebook's."""
    from ..optimizer import rank

    ray = request.ray
    pool = matching(offers, provider=notebook_offer.provider, region=notebook_offer.region)
    wreq = LaunchRequest(provider=notebook_offer.provider, region=notebook_offer.region,
                         gpu=ray.gpu, gpu_count=ray.gpu_count, spot=request.spot)
    return [o for o in rank(wreq, pool)
            if o.provider == notebook_offer.provider and o.region == notebook_offer.region]


class RayLauncher:
    """The Ray head and workers of one server. ``provider_for(name)`` gives a provider;
    ``progress(message)`` tells the user (the spawn's progress page); ``save()`` is
    called whenever the workers change, so the caller can list them in its state
    (:meth:`node_entries`) and persist it."""

    def __init__(self, provider_for: Callable[[str], Provider], *,
                 progress: Callable[[str], None] | None = None,
                 save: Callable[[], None] | None = None, log=None):
        self.provider_for = provider_for
        self.progress = progress or (lambda message: None)
        self.save = save or (lambda: None)
        self.log = log
        #: the server's Ray workers, None while the server has no Ray cluster here
        self.cluster: RayCluster | None = None

    # -- planning -------------------------------------------------------------------

    def wants_ray(self, request: LaunchRequest, provider: str) -> bool:
        """True when the server needs a head beside the notebook and worker nodes: it
        asked for Ray and its provider does not build Ray clusters itself."""
        return request.ray is not None and not self.provider_for(provider).handles_ray

    def filter_plan(self, request: LaunchRequest, ranked: list[Offer], offers: list[Offer]) -> list[Offer]:
        """The notebook's failover list ``ranked``, keeping only places (provider and
        region) where the requested workers can run too, so ``ray.gpu`` steers where the
        server lands. Raises a 400 naming ``ray.gpu`` when no place has both, or when
        the provider and region the user chose has no such worker offer."""
        if request.ray is None or not request.ray.workers:
            return ranked
        keep = [o for o in ranked
                if self.provider_for(o.provider).handles_ray or worker_offers(offers, o, request)]
        if request.explicit:
            # a place the user chose that cannot hold the workers is an error, not a detour
            chosen = [o for o in keep if o.provider == request.provider and o.region == request.region]
            keep = keep if chosen else []
        if ranked and not keep:
            from jupyterhub.spawner import SpawnException

            places = (f"{request.provider}/{request.region}" if request.explicit
                      else ", ".join(sorted({f"{o.provider}/{o.region}" for o in ranked})))
            raise SpawnException(
                f"ray.gpu: no offer of {request.ray.gpu_count} x {request.ray.gpu} for Ray workers "
                f"where the notebook could run ({places}); workers run in the notebook's "
                "provider and region", reason="bad-option", status_code=400)
        return keep

    @staticmethod
    def server_price(request: LaunchRequest, notebook_offer: Offer, offers: list[Offer]) -> float | None:
        """USD/hour of the server on ``notebook_offer`` with the requested workers on the
        first offer of their failover list (:func:`cloudhop.spawner.policy.server_price`)."""
        workers = worker_offers(offers, notebook_offer, request) if request.ray and request.ray.workers else []
        return price_of_server(request, notebook_offer, workers)

    def wrap_notebook_spec(self, spec: LaunchSpec, request: LaunchRequest) -> NotebookSpec:
        """``spec`` with the Ray head launcher wrapped around its command, on a port block
        chosen here (a free one on this machine, every port on loopback; the fixed one on
        a VM), tagged with the cluster id (the notebook's launch id), with a new cluster
        token in its environment for the head (:func:`.auth.node_env`). For a provider
        with ``handles_ray`` the spec only carries the request."""
        provider = spec.offer.provider
        if not self.wants_ray(request, provider):
            return NotebookSpec(dataclasses.replace(spec, ray=request.ray))
        base = head_port_base(provider)
        if base is None:
            base = _free_local_base()
        # every node of the cluster carries the tag (VM providers open Ray's ports
        # between the nodes that share it)
        cmd = head_command(spec.cmd, python=python_for(provider, sys.executable), port_base=base,
                           loopback=provider == "local")
        token = new_token()
        wrapped = dataclasses.replace(spec, cmd=cmd, tags={**spec.tags, CLUSTER_TAG: spec.request_id},
                                      env={**spec.env, **node_env(token)})
        return NotebookSpec(wrapped, port_base=base, cluster_id=spec.request_id, token=token)

    # -- running --------------------------------------------------------------------

    async def start_workers(self, request: LaunchRequest, offer: Offer, node: Node, offers: list[Offer],
                            spawn_id: str, *, head: NotebookSpec | None, tags: dict) -> None:
        """Create :attr:`cluster` for the running notebook ``node`` (launched on ``offer``
        from ``head``) and launch its workers, tagged with ``tags`` and the cluster id.
        Worker ``i``'s launch ids are :func:`..failover.launch_id` of
        ``<spawn_id>-ray-w<i>`` and its offer, so they never collide with the notebook's
        or each other's. Nothing is started when the provider handles Ray itself."""
        self.cluster = None
        if not self.wants_ray(request, offer.provider):
            return
        base = (head.port_base if head else None) or head_port_base(offer.provider)
        address = head_address(offer.provider, base, node.ip, (node.info or {}).get("private_ip"))
        cluster_id = (node.tags or {}).get(CLUSTER_TAG) or (head.cluster_id if head else None)
        self.cluster = RayCluster(
            request=request.ray, address=address, port_base=base, provider_for=self.provider_for,
            tags=_with_cluster(tags, cluster_id), python=python_for(offer.provider, sys.executable),
            offers=worker_offers(offers, offer, request), request_id=f"{spawn_id}-ray",
            image=request.image, spot=request.spot, zone=request.zone,
            token=head.token if head else None,
            on_event=self.progress, on_change=self.save, log=self.log,
        )
        self.progress(f"Ray head at {address} (dashboard: ray-dashboard/ in your server)")
        await self.cluster.launch(request.ray.workers)

    async def refresh(self, name: str = "the server") -> None:
        """Check the workers (from ``poll``): a dead one is reported, never raised."""
        if self.cluster is None:
            return
        try:
            await self.cluster.refresh()
        except Exception as err:  # reporting a worker must never stop the server
            if self.log:
                self.log.warning("Ray: could not check workers of %s: %s", name, err)

    async def resize(self, workers, *, request: LaunchRequest | None, offer: Offer | None,
                     policy, groups: list[str], user: str, others: Usage = NOTHING) -> dict:
        """Give :attr:`cluster` ``workers`` live workers (:meth:`.RayCluster.scale`). A
        count that launches workers is first checked against ``policy`` for ``user`` in
        ``groups`` as a spawn of the running server would be (``request`` on ``offer``)
        beside ``others`` (what the user's other servers hold): GPUs, worker count,
        servers, price per hour and budget, with the spawn's messages, as a
        :class:`PolicyError` on field ``workers`` (403). Removing workers is always
        allowed. A bad count is an :class:`OptionError` (400)."""
        cluster = self.cluster

        def check(count: int) -> None:
            resized = resized_request(request, offer, cluster, count)
            price = price_of_server(resized, offer, cluster.offers) if offer is not None else None
            try:
                policy.check_request(resized, groups, price, others)
                policy.check_budget(groups, user, price, others=others)
            except PolicyError as err:
                # the resize has one field: the count is what the user can change
                raise PolicyError("workers", err.rule, err.group, err.message) from None

        return await cluster.scale(workers, check=check)

    async def stop(self) -> None:
        """Terminate every worker (idempotent); the server has no cluster afterwards."""
        if self.cluster is not None:
            await self.cluster.stop()
            self.cluster = None

    # -- state ----------------------------------------------------------------------

    def node_entries(self) -> list[dict]:
        """The workers as entries of the server's ``nodes`` (:class:`..state.NodeRef`)."""
        return self.cluster.node_entries() if self.cluster is not None else []

    def to_state(self) -> dict | None:
        """The ``"ray"`` entry of the server's state (None without a cluster)."""
        if self.cluster is None:
            return None
        return dict(self.cluster.to_state(), cluster=self.cluster.tags.get(CLUSTER_TAG))

    def load_state(self, entry: dict | None, *, tags: dict) -> None:
        """Rebuild :attr:`cluster` from :meth:`to_state`'s entry (None: no cluster); the
        workers carry ``tags`` and the saved cluster id, and the first :meth:`refresh`
        re-attaches them by tag."""
        self.cluster = None
        if entry:
            self.cluster = RayCluster.from_state(
                entry, provider_for=self.provider_for, tags=_with_cluster(tags, entry.get("cluster")),
                python=entry.get("python") or sys.executable, on_event=self.progress,
                on_change=self.save, log=self.log,
            )


def resized_request(request: LaunchRequest | None, offer: Offer | None, cluster: RayCluster,
                    workers: int) -> LaunchRequest:
    """The running server as a request, with ``workers`` Ray workers: the notebook's
    actual provider, region and GPUs (``offer``), the cluster's worker GPU."""
    ray = RayRequest(workers=workers, gpu=cluster.request.gpu, gpu_count=cluster.request.gpu_count)
    base = request or LaunchRequest()
    if offer is None:
        return dataclasses.replace(base, ray=ray)
    return dataclasses.replace(base, provider=offer.provider, region=offer.region, gpu=offer.gpu,
                               gpu_count=offer.gpu_count, spot=cluster.spot, ray=ray)


def _free_local_base() -> int:
    """A free head block on this machine, skipping blocks handed out moments ago whose
    launcher may not have claimed them yet."""
    now = time.monotonic()
    for b, when in list(_HANDED_OUT.items()):
        if now - when > HANDOUT_GRACE:
            del _HANDED_OUT[b]
    base = find_free_block(bases=[b for b in candidate_bases() if b not in _HANDED_OUT]).base
    _HANDED_OUT[base] = now
    return base


def _with_cluster(tags: dict, cluster_id: str | None) -> dict:
    return {**tags, CLUSTER_TAG: cluster_id} if cluster_id else dict(tags)
