"""``Offer``: one launchable kind of node at one place and price.

Every provider describes what it can launch as offers: the clouds from the catalog
shipped with the package, the local provider from the GPUs NVML sees, Kubernetes from
its node pools. The spawn form, ``cloudhop offers``, validation and the optimizer all
work on this one type.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

NO_GPU = "none"


@dataclass(frozen=True)
class Offer:
    provider: str
    region: str
    instance_type: str
    #: accelerator model in the catalog's spelling (``A100-80GB``, ``H100``, ``L4``) or "none"
    gpu: str
    gpu_count: int
    #: memory per GPU
    gpu_memory_gib: float | None = None
    vcpus: float | None = None
    memory_gib: float | None = None
    #: on-demand USD/hour for the whole node; None when unknown
    price_hour: float | None = None
    #: spot/preemptible USD/hour; None where the provider has no spot market
    spot_price_hour: float | None = None
    zones: tuple = ()
    #: True when the price leaves something out (e.g. a GCP N1 host whose price is unknown)
    price_partial: bool = False
    #: free-form note shown with the offer ("2 of 4 GPUs free", "scales from 0")
    note: str = ""
    #: how many of this offer can start now, when the provider knows (local GPUs, k8s)
    available: int | None = None
    #: a time-shared GPU: how many servers may share each GPU at most (0: not shared)
    gpu_shared_by: int = 0

    @property
    def key(self) -> str:
        """A stable id for the form and the server's state."""
        return f"{self.provider}/{self.region}/{self.instance_type}"

    def price(self, spot: bool = False) -> float | None:
        return self.spot_price_hour if spot else self.price_hour

    def to_dict(self) -> dict:
        # every field is a scalar but zones: a shallow copy is ~10x faster than
        # dataclasses.asdict, which matters for a form listing the whole catalog
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["zones"] = list(self.zones)
        d["key"] = self.key
        d["gpu_label"] = gpu_label(self.gpu, self.gpu_shared_by)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "Offer":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in names}
        kw["zones"] = tuple(kw.get("zones") or ())
        return cls(**kw)


#: the catalog name of a whole GPU that several servers time-share ends so: "A100-shared"
#: (NVIDIA's device plugin names such a resource ``nvidia.com/gpu.shared``)
SHARED_SUFFIX = "-shared"
#: a MIG slice is "<model>-MIG-<profile>": "A100-MIG-1g.10gb"
MIG_INFIX = "-MIG-"


def gpu_label(gpu: str, shared_by: int = 0) -> str:
    """How a person reads a GPU choice: ``A100 1g.10gb`` for a MIG slice, ``A100 (shared
    by up to 4)`` for a time-shared GPU, the catalog name otherwise."""
    if MIG_INFIX.casefold() in gpu.casefold():
        i = gpu.casefold().index(MIG_INFIX.casefold())
        return f"{gpu[:i]} {gpu[i + len(MIG_INFIX):]}"
    if gpu.casefold().endswith(SHARED_SUFFIX) and len(gpu) > len(SHARED_SUFFIX):
        base = gpu[: -len(SHARED_SUFFIX)]
        return f"{base} (shared by up to {shared_by})" if shared_by else f"{base} (shared)"
    return gpu


def same_gpu(a: str, b: str) -> bool:
    """GPU names match case-insensitively (``h100`` is ``H100``)."""
    return a.casefold() == b.casefold()


def matching(
    offers: Iterable[Offer],
    *,
    provider: str | None = None,
    region: str | None = None,
    gpu: str | None = None,
    gpu_count: int | None = None,
    instance_type: str | None = None,
    zone: str | None = None,
    spot: bool = False,
) -> list[Offer]:
    """Offers that satisfy every criterion given; ``None``/"auto" means any."""
    out = []
    for o in offers:
        if provider not in (None, "", "auto") and o.provider != provider:
            continue
        if region and o.region != region:
            continue
        if gpu is not None and not same_gpu(o.gpu, gpu):
            continue
        if gpu_count is not None and o.gpu_count != gpu_count:
            continue
        if instance_type and o.instance_type != instance_type:
            continue
        if zone and o.zones and zone not in o.zones:
            continue
        if spot and o.spot_price_hour is None and o.price_hour not in (0, 0.0):
            continue
        out.append(o)
    return out
