"""Cluster and pool configuration, and the offers a cluster makes.

An operator lists clusters (``c.KubernetesProvider.clusters``); each is one *region*
of the ``kubernetes`` provider. Offers come from three places, merged by
:func:`cluster_offers`:

1. **Nodes** the cluster has now: allocatable ``nvidia.com/gpu`` per node, minus what
   running pods already hold, grouped by GPU model (read from the flavour's label).
2. **Pools** the operator declares (autoscaling node pools, Karpenter node pools,
   node groups): GPU model, GPUs per node and ``max_nodes``. Nodes that belong to a
   pool count as its free capacity; the rest of ``max_nodes`` is *scalable*.
3. **z2jh profiles** imported from a ``singleuser.profileList`` (:mod:`.profiles`).
4. **GPU slices** the nodes have now (:func:`~.flavours.node_slices`): MIG resources and
   time-sliced GPUs, one per server (``A100-MIG-1g.10gb``, ``L4-shared``).

``Offer.available`` is how many such servers can start now or after the pool scales
up (``None`` when unbounded/unknown); ``Offer.note`` says which part is free now and
which needs a scale-up. Prices are ``price_per_gpu_hour`` x GPUs (default 0: the
cluster is already paid for), settable per cluster and per pool.

Everything here is pure: node and pod lists are the API's JSON.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from ..offers import NO_GPU, Offer
from .flavours import FLAVOURS, GPU_RESOURCE, GPU_TOLERATION, Flavour, node_slices, replicas
from .plan import PodPlan, gpu_plan
from . import profiles as z2jh

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
CPU_OFFER = "cpu"


class ClusterConfigError(ValueError):
    """Operator configuration is wrong; the message names the setting."""


@dataclass(frozen=True)
class PoolConfig:
    name: str
    gpu: str
    gpus_per_node: int = 1
    #: None: the pool scales without a known limit
    max_nodes: int | None = None
    #: {label: value or [values]}; default: the flavour's selector for ``gpu``
    selector: dict = field(default_factory=dict)
    tolerations: tuple | None = None
    vcpus: float | None = None
    memory_gib: float | None = None
    gpu_memory_gib: float | None = None
    price_per_gpu_hour: float | None = None
    spot: bool = False
    zones: tuple = ()


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    flavour: Flavour
    context: str | None = None
    kubeconfig: str | None = None
    in_cluster: bool = False
    namespace: str | None = None
    pools: tuple = ()
    gpu_tolerations: tuple = (GPU_TOLERATION,)
    price_per_gpu_hour: float = 0.0
    cpu_price_hour: float = 0.0
    cpu_offer: bool = True
    node_offers: bool = True
    #: a profile list, a YAML path, or "KubeSpawner" (the hub's c.KubeSpawner.profile_list)
    profile_list: object = None
    storage_class: str | None = None

    def plan_for_gpu(self, gpu: str, count: int, pool: PoolConfig | None = None) -> PodPlan:
        """The pod plan for ``count`` x ``gpu`` here (``pool``'s selector when given)."""
        tolerations = pool.tolerations if pool and pool.tolerations is not None else self.gpu_tolerations
        return gpu_plan(
            self.flavour, gpu, count,
            selector=dict(pool.selector) if pool and pool.selector else None,
            tolerations=list(tolerations),
            spot=bool(pool and pool.spot),
        )


def _field(where: str, message: str) -> ClusterConfigError:
    return ClusterConfigError(f"{where}: {message}")


def _int(value, where: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _field(where, f"must be a whole number >= {low}, not {value!r}")
    return value


def _num(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise _field(where, f"must be a number >= 0, not {value!r}")
    return float(value)


def _flavour(raw: dict, where: str) -> Flavour:
    name = raw.get("flavour", "nvidia")
    if name not in FLAVOURS:
        raise _field(f"{where}.flavour", f"unknown flavour {name!r}; valid: {', '.join(FLAVOURS)}")
    flavour = FLAVOURS[name]
    label = raw.get("gpu_label")
    values = raw.get("gpu_values")
    if label is None and values is None:
        return flavour
    label = label or flavour.gpu_label
    if not isinstance(label, str) or not label:
        raise _field(f"{where}.gpu_label", f"must be a node label name, not {label!r}")
    if values is not None and not isinstance(values, dict):
        raise _field(f"{where}.gpu_values", "must map GPU models to label values, like {\"A100\": \"a100-40g\"}")
    selectors = {} if label != flavour.gpu_label else dict(flavour.selectors)
    for model, value in (values or {}).items():
        vals = value if isinstance(value, (list, tuple)) else [value]
        selectors[str(model)] = {label: [str(v) for v in vals]}
    return Flavour(name=flavour.name, gpu_label=label, selectors=selectors,
                   spot_selector=flavour.spot_selector, pool_labels=flavour.pool_labels)


_POOL_KEYS = {
    "name", "gpu", "gpus_per_node", "max_nodes", "selector", "tolerations", "vcpus",
    "memory_gib", "gpu_memory_gib", "price_per_gpu_hour", "spot", "zones",
}
_CLUSTER_KEYS = {
    "context", "kubeconfig", "in_cluster", "namespace", "flavour", "gpu_label", "gpu_values",
    "pools", "gpu_tolerations", "price_per_gpu_hour", "cpu_price_hour", "cpu_offer",
    "node_offers", "profile_list", "storage_class",
}


def _pool(raw, where: str) -> PoolConfig:
    if not isinstance(raw, dict):
        raise _field(where, f"must be a mapping, not {raw!r}")
    unknown = set(raw) - _POOL_KEYS
    if unknown:
        raise _field(where, f"unknown setting {sorted(unknown)[0]!r}; valid: {', '.join(sorted(_POOL_KEYS))}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _field(f"{where}.name", f"must be a name of letters, digits, '-', '_', '.', not {name!r}")
    gpu = raw.get("gpu")
    if not isinstance(gpu, str) or not gpu or gpu == NO_GPU:
        raise _field(f"{where}.gpu", f"must be a GPU model like 'T4' or 'A100-80GB', not {gpu!r}")
    selector = raw.get("selector") or {}
    if not isinstance(selector, dict):
        raise _field(f"{where}.selector", "must map node labels to values")
    tolerations = raw.get("tolerations")
    if tolerations is not None and not isinstance(tolerations, list):
        raise _field(f"{where}.tolerations", "must be a list of tolerations")
    optional = {}
    for key in ("vcpus", "memory_gib", "gpu_memory_gib", "price_per_gpu_hour"):
        if raw.get(key) is not None:
            optional[key] = _num(raw[key], f"{where}.{key}")
    max_nodes = raw.get("max_nodes")
    return PoolConfig(
        name=name,
        gpu=gpu,
        gpus_per_node=_int(raw.get("gpus_per_node", 1), f"{where}.gpus_per_node", 1),
        max_nodes=None if max_nodes is None else _int(max_nodes, f"{where}.max_nodes"),
        selector=dict(selector),
        tolerations=tuple(tolerations) if tolerations is not None else None,
        spot=bool(raw.get("spot", False)),
        zones=tuple(raw.get("zones") or ()),
        **optional,
    )


def parse_cluster(name: str, raw) -> ClusterConfig:
    """One ``clusters`` entry as a :class:`ClusterConfig`; errors name the setting
    (``clusters.gke-us.pools[0].gpu: ...``)."""
    where = f"clusters.{name}"
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _field(where, "cluster names are region names: letters, digits, '-', '_', '.'")
    if not isinstance(raw, dict):
        raise _field(where, f"must be a mapping, not {raw!r}")
    unknown = set(raw) - _CLUSTER_KEYS
    if unknown:
        raise _field(where, f"unknown setting {sorted(unknown)[0]!r}; valid: {', '.join(sorted(_CLUSTER_KEYS))}")
    pools = raw.get("pools") or []
    if not isinstance(pools, list):
        raise _field(f"{where}.pools", "must be a list of pools")
    parsed = tuple(_pool(p, f"{where}.pools[{i}]") for i, p in enumerate(pools))
    names = [p.name for p in parsed]
    if len(set(names)) != len(names):
        raise _field(f"{where}.pools", "pool names must be unique")
    tolerations = raw.get("gpu_tolerations", [GPU_TOLERATION])
    if not isinstance(tolerations, list):
        raise _field(f"{where}.gpu_tolerations", "must be a list of tolerations")
    return ClusterConfig(
        name=name,
        flavour=_flavour(raw, where),
        context=raw.get("context"),
        kubeconfig=raw.get("kubeconfig"),
        in_cluster=bool(raw.get("in_cluster", False)),
        namespace=raw.get("namespace"),
        pools=parsed,
        gpu_tolerations=tuple(tolerations),
        price_per_gpu_hour=_num(raw.get("price_per_gpu_hour", 0.0), f"{where}.price_per_gpu_hour"),
        cpu_price_hour=_num(raw.get("cpu_price_hour", 0.0), f"{where}.cpu_price_hour"),
        cpu_offer=bool(raw.get("cpu_offer", True)),
        node_offers=bool(raw.get("node_offers", True)),
        profile_list=raw.get("profile_list"),
        storage_class=raw.get("storage_class"),
    )


# --- the cluster's nodes ------------------------------------------------------------

@dataclass
class NodeView:
    """One node as offers see it."""

    name: str
    labels: dict
    gpu: str | None
    allocatable: int
    used: int = 0
    ready: bool = True
    zone: str | None = None

    @property
    def free(self) -> int:
        return max(self.allocatable - self.used, 0) if self.ready else 0


def _quantity_int(value) -> int:
    try:
        return int(float(str(value)))
    except ValueError:
        return 0


def _pod_gpus(pod: dict) -> int:
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        limit = (res.get("limits") or {}).get(GPU_RESOURCE)
        request = (res.get("requests") or {}).get(GPU_RESOURCE)
        total += max(_quantity_int(limit or 0), _quantity_int(request or 0))
    return total


def node_views(cluster: ClusterConfig, nodes: list, pods: list) -> list[NodeView]:
    """GPU nodes (allocatable ``nvidia.com/gpu`` > 0) with what pods already hold."""
    used: dict = {}
    for pod in pods:
        phase = (pod.get("status") or {}).get("phase")
        node = (pod.get("spec") or {}).get("nodeName")
        if node and phase not in ("Succeeded", "Failed"):
            used[node] = used.get(node, 0) + _pod_gpus(pod)
    out = []
    for node in nodes:
        meta = node.get("metadata") or {}
        status = node.get("status") or {}
        alloc = _quantity_int((status.get("allocatable") or {}).get(GPU_RESOURCE, 0))
        labels = meta.get("labels") or {}
        if alloc <= 0 or replicas(labels) > 1:  # a time-sliced node's GPUs are shares
            continue
        ready = not (node.get("spec") or {}).get("unschedulable") and any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
        )
        out.append(NodeView(
            name=meta.get("name", ""),
            labels=labels,
            gpu=cluster.flavour.gpu_from_labels(labels),
            allocatable=alloc,
            used=used.get(meta.get("name"), 0),
            ready=ready,
            zone=labels.get("topology.kubernetes.io/zone"),
        ))
    return out


def node_matches(node: NodeView, plan: PodPlan) -> bool:
    """True when the plan's selector and required expressions accept the node."""
    if any(node.labels.get(k) != v for k, v in plan.node_selector.items()):
        return False
    for e in plan.match_expressions:
        value = node.labels.get(e.get("key"))
        op = e.get("operator")
        if op == "In" and value not in (e.get("values") or []):
            return False
        if op == "NotIn" and value in (e.get("values") or []):
            return False
        if op == "Exists" and value is None:
            return False
        if op == "DoesNotExist" and value is not None:
            return False
    return True


def _pool_of(cluster: ClusterConfig, node: NodeView) -> PoolConfig | None:
    for pool in cluster.pools:
        if any(node.labels.get(label) == pool.name for label in cluster.flavour.pool_labels):
            return pool
    for pool in cluster.pools:
        if pool.selector and node_matches(node, cluster.plan_for_gpu(pool.gpu, 1, pool)):
            return pool
    for pool in cluster.pools:
        if not pool.selector and node.gpu and node.gpu.casefold() == pool.gpu.casefold():
            return pool
    return None


def _counts(per_node: int) -> list[int]:
    """GPU counts offered on nodes with ``per_node`` GPUs: powers of two, and all."""
    counts, n = [], 1
    while n < per_node:
        counts.append(n)
        n *= 2
    counts.append(per_node)
    return counts


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "gpu"


def cluster_offers(
    cluster: ClusterConfig,
    nodes: list | None,
    pods: list | None,
    *,
    provider: str = "kubernetes",
    profiles: list | None = None,
) -> list[tuple[Offer, PodPlan]]:
    """Offers (with their pod plans) for one cluster.

    ``nodes``/``pods`` are the API's lists (``None`` when the cluster has not been read
    yet: pools and profiles are still offered, availability unknown). ``profiles`` are
    :class:`~.profiles.ImportedProfile`\\ s for this cluster.
    """
    views = node_views(cluster, nodes or [], pods or []) if nodes is not None else []
    known = nodes is not None
    out: list[tuple[Offer, PodPlan]] = []

    if cluster.cpu_offer:
        out.append((
            Offer(provider=provider, region=cluster.name, instance_type=CPU_OFFER, gpu=NO_GPU,
                  gpu_count=0, price_hour=cluster.cpu_price_hour, note="CPU only"),
            PodPlan(),
        ))

    # group nodes by pool (declared) or GPU model (discovered)
    groups: dict = {}
    for pool in cluster.pools:
        groups[pool.name] = {"pool": pool, "gpu": pool.gpu, "nodes": []}
    for view in views:
        pool = _pool_of(cluster, view)
        if pool is not None:
            groups[pool.name]["nodes"].append(view)
        elif cluster.node_offers and view.gpu:
            key = _slug(view.gpu)
            if any(p.name == key for p in cluster.pools):  # keep pool names unambiguous
                key += "-nodes"
            groups.setdefault(key, {"pool": None, "gpu": view.gpu, "nodes": []})["nodes"].append(view)

    for key, group in groups.items():
        pool, gpu, members = group["pool"], group["gpu"], group["nodes"]
        per_node = max([pool.gpus_per_node if pool else 0] + [n.allocatable for n in members])
        rate = pool.price_per_gpu_hour if pool and pool.price_per_gpu_hour is not None else cluster.price_per_gpu_hour
        zones = tuple(sorted({n.zone for n in members if n.zone} | set(pool.zones if pool else ())))
        for count in _counts(per_node):
            free = sum(n.free // count for n in members)
            if pool is None:
                available = free if known else None
                note = f"{free} free now" if known else "free capacity not read yet"
            else:
                if pool.max_nodes is None:
                    available = None
                    scale = f"pool {pool.name} scales up"
                else:
                    extra_nodes = max(pool.max_nodes - len(members), 0)
                    scalable = extra_nodes * (pool.gpus_per_node // count)
                    available = free + scalable
                    scale = f"{scalable} more after pool {pool.name} scales up" if scalable else f"pool {pool.name} is at its maximum"
                note = (f"{free} free now; " if known else "") + scale
            out.append((
                Offer(
                    provider=provider, region=cluster.name, instance_type=f"{key}-x{count}",
                    gpu=gpu, gpu_count=count,
                    gpu_memory_gib=pool.gpu_memory_gib if pool else None,
                    vcpus=round(pool.vcpus * count / pool.gpus_per_node, 1) if pool and pool.vcpus else None,
                    memory_gib=round(pool.memory_gib * count / pool.gpus_per_node, 1) if pool and pool.memory_gib else None,
                    price_hour=round(rate * count, 4),
                    spot_price_hour=round(rate * count, 4) if pool and pool.spot else None,
                    zones=zones, note=note, available=available,
                ),
                cluster.plan_for_gpu(gpu, count, pool),
            ))

    if known and cluster.node_offers:
        out += _slice_offers(cluster, nodes or [], pods or [], provider)

    taken = {o.instance_type for o, _ in out}
    for imported in profiles or []:
        if imported.slug in taken:
            continue
        taken.add(imported.slug)
        available = None
        if known and imported.plan.gpu_count:
            fits = [n for n in views if node_matches(n, imported.plan)]
            free = sum(n.free // imported.plan.gpu_count for n in fits)
            # zero free may still scale up; only a positive count is a promise
            available = free or None
        offer = z2jh.profile_offer(
            imported, provider=provider, region=cluster.name,
            price_per_gpu_hour=cluster.price_per_gpu_hour, cpu_price_hour=cluster.cpu_price_hour,
            available=available,
        )
        out.append((offer, imported.plan))
    return out


def _slice_offers(cluster: ClusterConfig, nodes: list, pods: list, provider: str) -> list[tuple[Offer, PodPlan]]:
    """One offer per GPU slice kind the cluster's nodes have (model and MIG profile, or
    model time-shared), one slice per server, with what is free now."""
    used: dict = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if not node or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        for c in (pod.get("spec") or {}).get("containers") or []:
            res = c.get("resources") or {}
            for key in set(res.get("limits") or {}) | set(res.get("requests") or {}):
                n = max(_quantity_int((res.get("limits") or {}).get(key, 0)),
                        _quantity_int((res.get("requests") or {}).get(key, 0)))
                used[(node, key)] = used.get((node, key), 0) + n
    kinds: dict = {}
    for node in nodes:
        meta, status = node.get("metadata") or {}, node.get("status") or {}
        labels = meta.get("labels") or {}
        model = cluster.flavour.gpu_from_labels(labels)
        if not model:
            continue
        ready = not (node.get("spec") or {}).get("unschedulable") and any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        for resource, suffix, count in node_slices(status.get("allocatable") or {}, labels):
            kind = kinds.setdefault((model, suffix), {"resource": resource, "free": 0, "total": 0, "values": set(),
                                                      "shared_by": replicas(labels) if suffix == "shared" else 0})
            kind["total"] += count
            kind["free"] += max(count - used.get((meta.get("name"), resource), 0), 0) if ready else 0
            kind["values"].add(labels[cluster.flavour.gpu_label])
    out = []
    for (model, suffix), kind in sorted(kinds.items()):
        gpu = f"{model}-{suffix}"
        plan = replace(gpu_plan(cluster.flavour, gpu, 1, selector={cluster.flavour.gpu_label: sorted(kind["values"])},
                                tolerations=list(cluster.gpu_tolerations)), gpu_resource=kind["resource"])
        compute = re.match(r"MIG-(\d+)g\.", suffix)
        share = int(compute.group(1)) / 7 if compute else 1 / max(kind["shared_by"], 1)
        out.append((Offer(
            provider=provider, region=cluster.name, instance_type=f"{_slug(model)}-{suffix.lower()}", gpu=gpu,
            gpu_count=1, price_hour=round(cluster.price_per_gpu_hour * share, 4), available=kind["free"],
            note=f"{kind['free']} of {kind['total']} free now", gpu_shared_by=kind["shared_by"],
        ), plan))
    return out
