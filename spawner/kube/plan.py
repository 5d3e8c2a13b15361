"""``PodPlan``: what a pod for one Kubernetes offer needs, before it has a name.

Every Kubernetes offer (a GPU model on a cluster, an operator's pool, an imported z2jh
profile) comes with a plan; :func:`~.manifests.notebook_pod` turns plan + launch into a
Pod manifest. Plans are pure data, so tests read them back field by field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .flavours import GPU_RESOURCE, GPU_TOLERATION, Flavour

#: KubeSpawner ``make_pod`` keyword arguments an imported profile may set beyond the
#: plan's own fields (they pass through unchanged).
PASSTHROUGH = (
    "image_pull_policy", "image_pull_secrets", "uid", "gid", "fs_gid", "supplemental_gids",
    "privileged", "allow_privilege_escalation", "container_security_context",
    "pod_security_context", "working_dir", "lifecycle_hooks", "init_containers",
    "service_account", "automount_service_account_token", "extra_container_config",
    "extra_pod_config", "extra_containers", "scheduler_name", "node_affinity_preferred",
    "pod_affinity_preferred", "pod_affinity_required", "pod_anti_affinity_preferred",
    "pod_anti_affinity_required", "priority_class_name",
)


@dataclass(frozen=True)
class PodPlan:
    gpu: str = "none"
    gpu_count: int = 0
    #: exact-match labels (``spec.nodeSelector``)
    node_selector: dict = field(default_factory=dict)
    #: required node-affinity match expressions (``In`` over several values)
    match_expressions: tuple = ()
    tolerations: tuple = ()
    #: None: the provider's default single-user image (or the user's ``image`` option)
    image: str | None = None
    cpu_limit: float | None = None
    cpu_guarantee: float | None = None
    mem_limit: str | None = None
    mem_guarantee: str | None = None
    extra_resource_limits: dict = field(default_factory=dict)
    extra_resource_guarantees: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    extra_labels: dict = field(default_factory=dict)
    extra_annotations: dict = field(default_factory=dict)
    #: other ``make_pod`` keyword arguments (from a z2jh ``kubespawner_override``)
    make_pod_kwargs: dict = field(default_factory=dict)
    #: labels that select spot nodes, applied only when the launch asks for spot
    spot_selector: dict = field(default_factory=dict)
    #: the resource the GPUs are asked as: ``nvidia.com/gpu``, or a slice's
    #: (``nvidia.com/mig-1g.10gb``, ``nvidia.com/gpu.shared``)
    gpu_resource: str = GPU_RESOURCE

    def resource_limits(self) -> dict:
        """``extra_resource_limits`` with the GPU count the plan asks for."""
        limits = dict(self.extra_resource_limits)
        if self.gpu_count:
            limits[self.gpu_resource] = str(self.gpu_count)
        return limits

    def with_spot(self, spot: bool) -> "PodPlan":
        if not (spot and self.spot_selector):
            return self
        sel = dict(self.node_selector)
        exprs = list(self.match_expressions)
        _add_selector(sel, exprs, self.spot_selector)
        return replace(self, node_selector=sel, match_expressions=tuple(exprs))


def _add_selector(node_selector: dict, expressions: list, wanted: dict) -> None:
    """Put ``{label: [values]}`` into a node selector (one value) or an ``In``
    expression (several)."""
    for key, values in wanted.items():
        values = [str(v) for v in values]
        if len(values) == 1:
            node_selector[key] = values[0]
        else:
            expressions.append({"key": key, "operator": "In", "values": values})


def gpu_plan(
    flavour: Flavour,
    gpu: str,
    gpu_count: int,
    *,
    selector: dict | None = None,
    tolerations: list | None = None,
    spot: bool = False,
    **resources,
) -> PodPlan:
    """The plan for ``gpu_count`` x ``gpu`` on a cluster of ``flavour``.

    ``selector`` ({label: value or [values]}) replaces the flavour's selector for the
    model (an operator's pool with its own labels); ``tolerations`` replaces the
    default GPU toleration; ``spot`` adds the flavour's spot selector on a spot launch.
    """
    node_selector: dict = {}
    expressions: list = []
    if gpu_count:
        wanted = selector if selector else flavour.selector_for(gpu)
        wanted = {k: (v if isinstance(v, (list, tuple)) else [v]) for k, v in wanted.items()}
        _add_selector(node_selector, expressions, wanted)
        tols = tuple(tolerations) if tolerations is not None else (GPU_TOLERATION,)
    else:
        if selector:
            wanted = {k: (v if isinstance(v, (list, tuple)) else [v]) for k, v in selector.items()}
            _add_selector(node_selector, expressions, wanted)
        tols = tuple(tolerations or ())
    return PodPlan(
        gpu=gpu if gpu_count else "none",
        gpu_count=gpu_count,
        node_selector=node_selector,
        match_expressions=tuple(expressions),
        tolerations=tols,
        spot_selector=dict(flavour.spot_selector) if spot else {},
        **resources,
    )
