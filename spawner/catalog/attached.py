"""GCP accelerators that attach to an N1 host (T4, V100, P100, P4) as launchable offers.

Naming convention for such an offer's ``instance_type``::

    <host machine type>+<accelerator>x<count>      e.g.  n1-standard-8+T4x1

The accelerator is spelled as in the catalog (``T4``, ``V100``); the GCP provider maps
it onto the Compute accelerator type (``nvidia-tesla-t4``) and uses the part before
``+`` as the machine type. :func:`split_attached` parses the name back.

Price: the catalog has the accelerators' price only. The host's price comes from the
operator's host price table (``Catalog.n1_host_prices``); without an entry the offer
carries the accelerators' price alone and ``price_partial=True``, and its note says so.
"""

from __future__ import annotations

import re

from ..offers import Offer
from .loader import AttachedRow

#: default N1 host per accelerator count: 8 vCPUs per GPU up to 64, which every
#: N1-attachable GPU model allows (V100 x1 allows at most 12 vCPUs, so 8 per GPU is safe)
DEFAULT_N1_HOSTS = {1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32", 8: "n1-standard-64"}

_ATTACHED = re.compile(r"^(?P<host>[a-z0-9-]+)\+(?P<gpu>[A-Za-z0-9-]+)x(?P<count>\d{1,2})$")
_N1 = re.compile(r"^n1-(standard|highmem|highcpu)-(\d+)$")
# GB of memory per vCPU for the N1 families (GCP's machine type definitions)
_N1_MEMORY_PER_VCPU = {"standard": 3.75, "highmem": 6.5, "highcpu": 0.9}


def attached_name(host: str, gpu: str, count: int) -> str:
    """The offer's instance type for ``count`` x ``gpu`` on ``host``."""
    return f"{host}+{gpu}x{count}"


def split_attached(instance_type: str) -> tuple[str, str, int] | None:
    """``"n1-standard-8+T4x1"`` -> ``("n1-standard-8", "T4", 1)``; None for a plain type."""
    m = _ATTACHED.match(instance_type)
    if not m:
        return None
    return m["host"], m["gpu"], int(m["count"])


def n1_shape(host: str) -> tuple[int | None, float | None]:
    """vCPUs and memory (GiB) of an N1 machine type, (None, None) when not N1."""
    m = _N1.match(host)
    if not m:
        return None, None
    vcpus = int(m.group(2))
    return vcpus, round(vcpus * _N1_MEMORY_PER_VCPU[m.group(1)], 2)


def host_price(prices: dict, region: str, host: str) -> tuple[float | None, float | None]:
    """(on-demand, spot) USD/hour for ``host`` in ``region`` from an operator table.

    Keys are ``"<region>/<machine type>"`` (wins) or ``"<machine type>"``; values are a
    number (on-demand) or ``{"price_hour": x, "spot_price_hour": y}``.
    """
    entry = prices.get(f"{region}/{host}", prices.get(host))
    if entry is None:
        return None, None
    if isinstance(entry, dict):
        return entry.get("price_hour"), entry.get("spot_price_hour")
    return float(entry), None


def attached_offers(rows: list[AttachedRow], hosts: dict, prices: dict) -> list[Offer]:
    """One offer per accelerator row whose count has a host in ``hosts``."""
    offers = []
    for row in rows:
        host = hosts.get(row.count)
        if not host:
            continue
        vcpus, memory = n1_shape(host)
        on_demand, spot = host_price(prices, row.region, host)
        partial = on_demand is None
        price = row.price_hour + (on_demand or 0.0)
        spot_total = None
        if row.spot_price_hour is not None:
            spot_total = row.spot_price_hour + (spot or 0.0)
            # an operator table with the host's on-demand price only leaves spot partial
            partial = partial or spot is None
        note = (
            f"price is the GPUs only; the {host} host is extra" if on_demand is None
            else (f"spot price is the GPUs only; the {host} host is extra" if spot is None and spot_total is not None else "")
        )
        offers.append(Offer(
            provider=row.cloud,
            region=row.region,
            instance_type=attached_name(host, row.accelerator, row.count),
            gpu=row.accelerator,
            gpu_count=row.count,
            gpu_memory_gib=row.memory_gib,
            vcpus=vcpus,
            memory_gib=memory,
            price_hour=round(price, 6),
            spot_price_hour=round(spot_total, 6) if spot_total is not None else None,
            zones=row.zones,
            price_partial=partial,
            note=note,
        ))
    return offers
