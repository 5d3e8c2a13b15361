"""The few calls ``CloudhopSpawner`` makes into Ray, so the spawner stays about nodes.

Each takes the spawner and does nothing when the server asked for no Ray cluster:

* :func:`wrap_notebook_spec` - puts the head launcher in front of the notebook's
  command, on a port block chosen here (a free one on this machine; the fixed one on
  a VM);
* :func:`start_workers` - once the notebook node runs: builds the workers' failover
  list (same provider and region as the notebook, the request's GPU) and launches them;
* :func:`server_price` - what the server costs per hour, workers included, for the
  ``max_price_hour`` and ``budget`` rules at spawn;
* :func:`resize` - the hub's Ray API: a new worker count, within the owner's policy;
* :func:`poll_workers`, :func:`stop_workers` - from ``poll`` and ``stop``;
* :func:`save_state`, :func:`load_state` - the ``"ray"`` entry of the server's state.

The spawner keeps the cluster as ``spawner.ray_cluster`` (``None`` without Ray); the
hub's Ray API finds it there.
"""

from __future__ import annotations

import dataclasses
import sys
import time

from ..offers import matching
from ..options import LaunchRequest, RayRequest
from ..policy import PolicyError, server_price as _price
from ..providers.base import LaunchSpec, Node
from . import CLUSTER_TAG, WORKER_ROLE
from .cluster import RayCluster
from .commands import head_address, head_command, head_port_base, python_for
from .ports import candidate_bases, find_free_block

#: head blocks this hub chose recently (base -> monotonic time): a block is free until
#: the head's launcher claims it, so two spawns in the same minute must not get the same
_HANDED_OUT: dict[int, float] = {}
HANDOUT_GRACE = 300.0


def wants_ray(spawner, request, provider: str) -> bool:
    """True when this server needs a head beside the notebook and worker nodes: it asked
    for Ray and its provider does not build Ray clusters itself (``handles_ray``)."""
    if request is None or request.ray is None:
        return False
    return not getattr(spawner.provider(provider), "handles_ray", False)


def wrap_notebook_spec(spawner, spec: LaunchSpec, request: LaunchRequest) -> LaunchSpec:
    """``spec`` with the Ray head launcher wrapped around its command (or ``spec``)."""
    provider = spec.offer.provider
    if not wants_ray(spawner, request, provider):
        if request is not None and request.ray is not None:
            # a provider that builds the Ray cluster itself (handles_ray) reads it here
            return dataclasses.replace(spec, ray=request.ray)
        return spec
    base = head_port_base(provider)
    if base is None:
        # skip blocks handed out moments ago whose launcher may not have claimed them yet
        now = time.monotonic()
        for b, when in list(_HANDED_OUT.items()):
            if now - when > HANDOUT_GRACE:
                del _HANDED_OUT[b]
        base = find_free_block(bases=[b for b in candidate_bases() if b not in _HANDED_OUT]).base
        _HANDED_OUT[base] = now
    spawner.ray_port_base = base
    # the cluster is named after the notebook's launch: every node of it carries the tag
    # (VM providers open Ray's ports between the nodes that share it)
    spawner.ray_cluster_id = spec.request_id
    cmd = head_command(spec.cmd, python=python_for(provider, sys.executable), port_base=base)
    return dataclasses.replace(spec, cmd=cmd, tags={**spec.tags, CLUSTER_TAG: spec.request_id})


def worker_offers(spawner, offers, notebook_offer, request: LaunchRequest):
    """The workers' failover list: offers with the requested GPU in the notebook's
    provider and region (workers join the head over the private network), ranked by
    the same optimizer as the notebook's."""
    from ..optimizer import rank

    ray = request.ray
    pool = matching(offers, provider=notebook_offer.provider, region=notebook_offer.region)
    wreq = LaunchRequest(provider=notebook_offer.provider, region=notebook_offer.region,
                         gpu=ray.gpu, gpu_count=ray.gpu_count, spot=request.spot)
    return [o for o in rank(wreq, pool)
            if o.provider == notebook_offer.provider and o.region == notebook_offer.region]


def filter_plan(spawner, request: LaunchRequest, ranked: list, offers: list) -> list:
    """The notebook's failover list, keeping only places (provider and region) where the
    requested workers can run too, so ``ray.gpu`` steers where the server lands. Raises
    a 400 naming ``ray.gpu`` when no place has both, or when the provider and region the
    user chose has no such worker offer."""
    if request.ray is None or not request.ray.workers:
        return ranked
    keep = [o for o in ranked
            if getattr(spawner.provider(o.provider), "handles_ray", False)
            or worker_offers(spawner, offers, o, request)]
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


def server_price(spawner, request: LaunchRequest, notebook_offer, offers) -> float | None:
    """USD/hour of the server on ``notebook_offer`` with the requested workers on the
    first offer of their failover list (:func:`cloudhop.spawner.policy.server_price`)."""
    workers = (worker_offers(spawner, offers, notebook_offer, request)
               if request.ray is not None and request.ray.workers else [])
    return _price(request, notebook_offer, workers)


def resized_request(spawner, workers: int) -> LaunchRequest:
    """The running server as a request, with ``workers`` Ray workers: the notebook's
    actual provider, region and GPUs, the cluster's worker GPU."""
    cluster, offer = spawner.ray_cluster, spawner.offer
    ray = RayRequest(workers=workers, gpu=cluster.request.gpu, gpu_count=cluster.request.gpu_count)
    base = spawner.request or LaunchRequest()
    if offer is None:
        return dataclasses.replace(base, ray=ray)
    return dataclasses.replace(base, provider=offer.provider, region=offer.region, gpu=offer.gpu,
                               gpu_count=offer.gpu_count, spot=cluster.spot, ray=ray)


def check_resize(spawner, workers: int) -> None:
    """Refuse (:class:`PolicyError`, field ``workers``) a resize that launches workers
    the owner's group policy would not allow at spawn: GPUs, worker count, price per
    hour of the whole server and budget, with the spawn's messages."""
    request = resized_request(spawner, workers)
    price = (_price(request, spawner.offer, spawner.ray_cluster.offers)
             if spawner.offer is not None else None)
    groups = spawner.user_groups()
    try:
        spawner.policy.check_request(request, groups, price)
        spawner.policy.check_budget(groups, spawner.user.name, price)
    except PolicyError as err:
        # the resize has one field: the count is what the user can change
        raise PolicyError("workers", err.rule, err.group, err.message) from None


async def resize(spawner, workers) -> dict:
    """Give the server's cluster ``workers`` live workers (:meth:`.RayCluster.scale`).
    A count that launches workers is checked against the owner's policy first
    (:func:`check_resize`); removing workers is always allowed. Raises
    :class:`OptionError` (400) for a bad count, :class:`PolicyError` (403)."""
    return await spawner.ray_cluster.scale(workers, check=lambda n: check_resize(spawner, n))


def _sync_nodes(spawner) -> None:
    cluster = spawner.ray_cluster
    spawner.nodes = [n for n in spawner.nodes if n.get("role") != WORKER_ROLE] + (
        cluster.node_entries() if cluster else [])
    spawner._save_state()


def _worker_tags(spawner, cluster: str | None) -> dict:
    tags = dict(spawner.tags(WORKER_ROLE))
    if cluster:
        tags[CLUSTER_TAG] = cluster
    return tags


async def start_workers(spawner, request: LaunchRequest, offer, node: Node, offers, spawn_id: str) -> None:
    """Create ``spawner.ray_cluster`` for the running notebook node and launch its workers.
    Worker ``i``'s launch ids are :func:`.failover.launch_id` of ``<spawn_id>-ray-w<i>``
    and the offer, so they never collide with the notebook's or each other's."""
    spawner.ray_cluster = None
    if not wants_ray(spawner, request, offer.provider):
        return
    base = getattr(spawner, "ray_port_base", None) or head_port_base(offer.provider)
    address = head_address(offer.provider, base, node.ip, (node.info or {}).get("private_ip"))
    cluster = (node.tags or {}).get(CLUSTER_TAG) or getattr(spawner, "ray_cluster_id", None)
    spawner.ray_cluster = RayCluster(
        request=request.ray, address=address, port_base=base, provider_for=spawner.provider,
        tags=_worker_tags(spawner, cluster),
        python=python_for(offer.provider, sys.executable),
        offers=worker_offers(spawner, offers, offer, request), request_id=f"{spawn_id}-ray",
        image=request.image, spot=request.spot, zone=request.zone,
        on_event=spawner._progress, on_change=lambda: _sync_nodes(spawner), log=spawner.log,
    )
    spawner._progress(f"Ray head at {address} (dashboard: ray-dashboard/ in your server)")
    await spawner.ray_cluster.launch(request.ray.workers)


async def poll_workers(spawner) -> None:
    cluster = getattr(spawner, "ray_cluster", None)
    if cluster is not None:
        try:
            await cluster.refresh()
        except Exception as err:  # reporting a worker must never stop the server
            spawner.log.warning("Ray: could not check workers of %s: %s", spawner._log_name, err)


async def stop_workers(spawner) -> None:
    cluster = getattr(spawner, "ray_cluster", None)
    if cluster is not None:
        await cluster.stop()
        spawner.ray_cluster = None


def save_state(spawner, state: dict) -> None:
    cluster = getattr(spawner, "ray_cluster", None)
    if cluster is not None:
        state["ray"] = dict(cluster.to_state(), cluster=cluster.tags.get(CLUSTER_TAG))


def load_state(spawner, state: dict) -> None:
    spawner.ray_cluster = None
    if state.get("ray"):
        spawner.ray_cluster = RayCluster.from_state(
            state["ray"], provider_for=spawner.provider,
            tags=_worker_tags(spawner, state["ray"].get("cluster")),
            python=state["ray"].get("python") or sys.executable, on_event=spawner._progress,
            on_change=lambda: _sync_nodes(spawner), log=spawner.log,
        )
        spawner.ray_port_base = state["ray"].get("port_base")
