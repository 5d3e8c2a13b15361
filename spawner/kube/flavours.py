"""How each kind of cluster names its GPUs, and the selector a GPU model needs there.

A *flavour* is a cluster's convention for labelling GPU nodes:

``gke``
    GKE labels GPU nodes ``cloud.google.com/gke-accelerator=nvidia-tesla-t4`` (one value
    per model) and taints them ``nvidia.com/gpu=present:NoSchedule``.
``eks`` (Karpenter)
    Karpenter labels nodes ``karpenter.k8s.aws/instance-gpu-name=t4`` (lower-case chip
    name) and ``karpenter.k8s.aws/instance-gpu-memory`` (MiB), which tells the A100
    40 GB (p4d) from the 80 GB (p4de).
``nvidia``
    NVIDIA GPU feature discovery (GPU operator; OKE, AKS, on-premises) labels nodes
    ``nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB`` — several product strings per model,
    so the selector is a node-affinity ``In`` expression.

GPU models use the catalog's spelling (``T4``, ``A100-80GB``, ``H100``). A cluster can
override the label key and the values per model (see :class:`~.cluster.ClusterConfig`).

GPU slices come from NVIDIA's device plugin, whatever the flavour (:func:`node_slices`):

- **MIG** ("mixed" strategy): a node has ``nvidia.com/mig-1g.10gb`` resources, offered
  as ``<model>-MIG-1g.10gb``, one per server.
- **time-slicing**: a node's GPUs are shared by ``nvidia.com/gpu.replicas`` servers
  each (GPU feature discovery's label), as ``nvidia.com/gpu`` or, with
  ``renameByDefault``, ``nvidia.com/gpu.shared``; offered as ``<model>-shared``, one per
  server. Such a node's ``nvidia.com/gpu`` is never offered as whole GPUs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

GPU_RESOURCE = "nvidia.com/gpu"
#: the device plugin's MIG resources ("mixed" strategy): ``nvidia.com/mig-<profile>``
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
#: a time-sliced GPU's resource when the plugin renames it (``renameByDefault``)
SHARED_RESOURCE = "nvidia.com/gpu.shared"
#: GPU feature discovery's label: how many servers share each GPU of the node
REPLICAS_LABEL = "nvidia.com/gpu.replicas"
#: what GKE and the NVIDIA GPU operator put on GPU nodes; tolerating it with ``Exists``
#: covers both ``nvidia.com/gpu=present:NoSchedule`` and a value-less taint.
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


@dataclass(frozen=True)
class Flavour:
    name: str
    #: the node label that names the GPU model
    gpu_label: str
    #: catalog model -> {label: [values]}; every label must match one of its values
    selectors: dict
    #: labels that select spot/preemptible nodes when a pool offers spot
    spot_selector: dict = field(default_factory=dict)
    #: labels that say which autoscaling pool a node belongs to
    pool_labels: tuple = ()

    def gpu_from_labels(self, labels: dict) -> str | None:
        """The catalog model of a node with these labels, or None (no GPU label)."""
        value = labels.get(self.gpu_label)
        if not value:
            return None
        best = None
        for model, sel in self.selectors.items():
            if all(labels.get(k) in vals for k, vals in sel.items()):
                # the most specific match wins (A100-80GB on Karpenter needs two labels)
                if best is None or len(sel) > len(self.selectors[best]):
                    best = model
        return best or model_from_product(value)

    def selector_for(self, gpu: str) -> dict:
        """{label: [values]} that pins a pod to nodes with ``gpu``; falls back to the
        raw name lower-cased for a model the table does not know."""
        for model, sel in self.selectors.items():
            if model.casefold() == gpu.casefold():
                return {k: list(v) for k, v in sel.items()}
        return {self.gpu_label: [gpu.lower()]}


def _one(label: str, table: dict) -> dict:
    return {model: {label: [value]} for model, value in table.items()}


GKE = Flavour(
    name="gke",
    gpu_label="cloud.google.com/gke-accelerator",
    selectors=_one("cloud.google.com/gke-accelerator", {
        "T4": "nvidia-tesla-t4",
        "L4": "nvidia-l4",
        "A100": "nvidia-tesla-a100",
        "A100-80GB": "nvidia-a100-80gb",
        "H100": "nvidia-h100-80gb",
        "H100-MEGA": "nvidia-h100-mega-80gb",
        "H200": "nvidia-h200-141gb",
        "B200": "nvidia-b200",
        "V100": "nvidia-tesla-v100",
        "P100": "nvidia-tesla-p100",
        "P4": "nvidia-tesla-p4",
    }),
    spot_selector={"cloud.google.com/gke-spot": ["true"]},
    pool_labels=("cloud.google.com/gke-nodepool",),
)

_KARPENTER_NAME = "karpenter.k8s.aws/instance-gpu-name"
_KARPENTER_MEM = "karpenter.k8s.aws/instance-gpu-memory"
EKS = Flavour(
    name="eks",
    gpu_label=_KARPENTER_NAME,
    selectors={
        **_one(_KARPENTER_NAME, {
            "T4": "t4", "T4g": "t4g", "A10G": "a10g", "L4": "l4", "L40S": "l40s",
            "V100": "v100", "H100": "h100", "H200": "h200", "B200": "b200",
        }),
        "A100": {_KARPENTER_NAME: ["a100"], _KARPENTER_MEM: ["40960"]},
        "A100-80GB": {_KARPENTER_NAME: ["a100"], _KARPENTER_MEM: ["81920"]},
        "V100-32GB": {_KARPENTER_NAME: ["v100"], _KARPENTER_MEM: ["32768"]},
    },
    spot_selector={"karpenter.sh/capacity-type": ["spot"]},
    pool_labels=("karpenter.sh/nodepool", "eks.amazonaws.com/nodegroup"),
)

_GFD = "nvidia.com/gpu.product"
NVIDIA = Flavour(
    name="nvidia",
    gpu_label=_GFD,
    selectors={
        "T4": {_GFD: ["Tesla-T4"]},
        "L4": {_GFD: ["NVIDIA-L4"]},
        "A10G": {_GFD: ["NVIDIA-A10G"]},
        "A10": {_GFD: ["NVIDIA-A10"]},
        "L40S": {_GFD: ["NVIDIA-L40S"]},
        "V100": {_GFD: ["Tesla-V100-SXM2-16GB", "Tesla-V100-PCIE-16GB"]},
        "V100-32GB": {_GFD: ["Tesla-V100-SXM2-32GB", "Tesla-V100-PCIE-32GB"]},
        "A100": {_GFD: ["NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB"]},
        "A100-80GB": {_GFD: ["NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"]},
        "H100": {_GFD: ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe", "NVIDIA-H100-NVL"]},
        "H200": {_GFD: ["NVIDIA-H200", "NVIDIA-H200-141GB-HBM3e"]},
        "B200": {_GFD: ["NVIDIA-B200"]},
    },
    pool_labels=("cloudhop.io/pool",),
)

FLAVOURS = {f.name: f for f in (GKE, EKS, NVIDIA)}

# Product strings from nvidia-smi / GFD, most specific first.
_PRODUCT_PATTERNS = (
    (r"H100.*MEGA", "H100-MEGA"), (r"GH200", "GH200"), (r"H200", "H200"), (r"H100", "H100"),
    (r"B200", "B200"), (r"A100.*80", "A100-80GB"), (r"A100", "A100"), (r"A10G", "A10G"),
    (r"L40S", "L40S"), (r"L40", "L40"), (r"A10(?!\d)", "A10"), (r"L4(?!\d)", "L4"),
    (r"T4G", "T4g"), (r"T4", "T4"), (r"V100.*32", "V100-32GB"), (r"V100", "V100"),
    (r"P100", "P100"), (r"P4(?!\d)", "P4"),
)


def model_from_product(text: str) -> str:
    """A catalog model name for a GPU product string (``NVIDIA-A100-SXM4-80GB`` ->
    ``A100-80GB``, ``nvidia-tesla-t4`` -> ``T4``); the string itself when unknown."""
    upper = text.upper()
    for pattern, model in _PRODUCT_PATTERNS:
        if re.search(pattern, upper):
            return model
    return text


# Instance families whose GPU is fixed, for z2jh profiles that select nodes by
# ``node.kubernetes.io/instance-type`` (the catalog has the full list; these are the
# families seen in published profile lists).
_INSTANCE_FAMILIES = (
    (r"^g4dn\.", "T4"), (r"^g5g\.", "T4g"), (r"^g5\.", "A10G"), (r"^g6e\.", "L40S"),
    (r"^g6\.", "L4"), (r"^p3\.", "V100"), (r"^p3dn\.", "V100-32GB"), (r"^p4d\.", "A100"),
    (r"^p4de\.", "A100-80GB"), (r"^p5en?\.", "H200"), (r"^p5\.", "H100"),
    (r"^a2-(high|mega)gpu-", "A100"), (r"^a2-ultragpu-", "A100-80GB"),
    (r"^a3-(high|edge)gpu-", "H100"), (r"^a3-megagpu-", "H100-MEGA"), (r"^a3-ultragpu-", "H200"),
    (r"^g2-standard-", "L4"),
)


def model_from_instance_type(instance_type: str) -> str | None:
    for pattern, model in _INSTANCE_FAMILIES:
        if re.match(pattern, instance_type):
            return model
    return None


#: node labels that may name a GPU model, in every flavour, for reading other people's
#: selectors (z2jh profiles) without knowing which flavour they were written for
GPU_LABELS = tuple(f.gpu_label for f in FLAVOURS.values())
INSTANCE_TYPE_LABELS = ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type")


def gpu_from_selector(selector: dict) -> str | None:
    """The GPU model a node selector (z2jh ``node_selector``) pins a pod to, if it says."""
    for flavour in FLAVOURS.values():
        if selector.get(flavour.gpu_label):
            return flavour.gpu_from_labels({k: str(v) for k, v in selector.items()})
    for label in INSTANCE_TYPE_LABELS:
        if selector.get(label):
            return model_from_instance_type(str(selector[label]))
    return None


def replicas(labels: dict) -> int:
    """How many servers share each GPU of a node with these labels (1: not shared)."""
    try:
        return max(int(str(labels.get(REPLICAS_LABEL, "1"))), 1)
    except ValueError:
        return 1


def node_slices(allocatable: dict, labels: dict) -> list[tuple[str, str, int]]:
    """The GPU slices a node offers: ``(resource, suffix, count)`` with suffix
    ``MIG-1g.10gb`` or ``shared`` (the catalog name is ``<model>-<suffix>``)."""
    out = []
    for resource, value in sorted(allocatable.items()):
        if resource.startswith(MIG_RESOURCE_PREFIX):
            out.append((resource, "MIG-" + resource[len(MIG_RESOURCE_PREFIX):], _count(value)))
    if SHARED_RESOURCE in allocatable:
        out.append((SHARED_RESOURCE, "shared", _count(allocatable[SHARED_RESOURCE])))
    elif replicas(labels) > 1 and GPU_RESOURCE in allocatable:
        out.append((GPU_RESOURCE, "shared", _count(allocatable[GPU_RESOURCE])))
    return [s for s in out if s[2] > 0]


def _count(value) -> int:
    try:
        return int(float(str(value)))
    except ValueError:
        return 0
