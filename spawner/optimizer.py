"""The optimizer: a request and the offers a user may launch in, a failover list out.

Order of the list (:func:`rank`):

1. **The user's choice**: offers matching every field the request names (provider,
   region, zone, instance type, GPU model and count, spot), cheapest first. For an open
   request (``provider: auto``, no region, no instance type) that is every offer with
   the GPU model and count asked for, cheapest first, wherever it is.
2. **Alternatives** with the same GPU model and count when the choice has no capacity,
   by locality to the cheapest chosen offer, then price: same provider and region
   (another instance type or zone), same provider in another region, then other
   clouds. ``spread`` limits how far alternatives may go.

Prices are the spot price when ``request.spot`` (offers with no spot price are left
out, except free ones such as local GPUs), else on-demand. An offer whose price is
partial (a GCP N1 GPU without its host's price) is ranked with an estimate for the host
so it does not look cheaper than it is; the offer itself still shows its own price.
Offers with no price at all go last. Pure and fast: one pass and one sort.
"""

from __future__ import annotations

from typing import Iterable

from .offers import NO_GPU, Offer
from .options import LaunchRequest

#: how far alternatives may go from the user's choice
SPREADS = ("none", "region", "provider", "any")

#: USD per vCPU-hour used to estimate an unpriced N1 host when ranking (GCP's
#: n1-standard list price in us-central1 is 0.0475 per vCPU-hour including memory)
PARTIAL_HOST_ESTIMATE_PER_VCPU = 0.0475

_UNPRICED = float("inf")


def effective_price(offer: Offer, spot: bool = False) -> float | None:
    """What the offer costs per hour in the chosen mode, None when it cannot run so.

    Free offers (price 0, e.g. local GPUs) run in either mode.
    """
    if spot:
        if offer.spot_price_hour is not None:
            return offer.spot_price_hour
        return 0.0 if offer.price_hour == 0 else None
    return offer.price_hour


def ranking_price(offer: Offer, spot: bool = False) -> float:
    """The price used to order offers: the effective price plus, for a partial price,
    an estimate of what it leaves out. ``inf`` when unknown."""
    price = effective_price(offer, spot)
    if price is None:
        return _UNPRICED
    if offer.price_partial and offer.vcpus:
        price += PARTIAL_HOST_ESTIMATE_PER_VCPU * offer.vcpus
    return price


def _same_gpu(offer: Offer, gpu_fold: str, count: int) -> bool:
    return offer.gpu_count == count and offer.gpu.casefold() == gpu_fold


def _chosen(offer: Offer, request: LaunchRequest) -> bool:
    if request.provider not in ("auto", "", None) and offer.provider != request.provider:
        return False
    if request.region and offer.region != request.region:
        return False
    if request.instance_type and offer.instance_type != request.instance_type:
        return False
    if request.zone and offer.zones and request.zone not in offer.zones:
        return False
    return True


def rank(request: LaunchRequest, offers: Iterable[Offer], *, spread: str = "any") -> list[Offer]:
    """The failover list for ``request`` from ``offers`` (already policy-filtered).

    The first entries are the user's choice (cheapest first); alternatives follow as the
    module docstring says. ``spread`` is one of :data:`SPREADS`: ``"none"`` keeps only
    the choice, ``"region"`` adds other types in the same region, ``"provider"`` other
    regions of the same provider, ``"any"`` (default) other clouds too. Returns an empty
    list when nothing matches.
    """
    if spread not in SPREADS:
        raise ValueError(f"spread must be one of {', '.join(SPREADS)}, not {spread!r}")
    gpu_fold = (request.gpu or NO_GPU).casefold()
    count = request.gpu_count if gpu_fold != NO_GPU else 0
    spot = request.spot
    chosen: list[tuple[float, str, Offer]] = []
    others: list[tuple[float, str, Offer]] = []
    for offer in offers:
        if not _same_gpu(offer, gpu_fold, count):
            continue
        price = ranking_price(offer, spot)
        if spot and price == _UNPRICED:
            continue  # no spot market for this offer
        entry = (price, offer.key, offer)
        (chosen if _chosen(offer, request) else others).append(entry)
    chosen.sort(key=lambda e: (e[0], e[1]))
    ranked = [e[2] for e in chosen]
    if not chosen or spread == "none" or not others:
        return ranked
    anchor = ranked[0]

    def locality(offer: Offer) -> int:
        if offer.provider == anchor.provider:
            return 0 if offer.region == anchor.region else 1
        return 2

    limit = {"region": 0, "provider": 1, "any": 2}[spread]
    alternatives = [(locality(e[2]), e[0], e[1], e[2]) for e in others]
    alternatives = [a for a in alternatives if a[0] <= limit]
    alternatives.sort(key=lambda a: (a[0], a[1], a[2]))
    return ranked + [a[3] for a in alternatives]


def auto_pick(offers: Iterable[Offer], *, gpu: str | None = None, gpu_count: int | None = None,
              spot: bool = False) -> Offer | None:
    """What "Auto (cheapest that fits)" would launch: the cheapest offer with ``gpu`` x
    ``gpu_count`` (any GPU model/count when None; a GPU rather than none when both are
    None), in the chosen price mode. None when nothing fits."""
    best, best_key = None, None
    want_gpu = gpu.casefold() if gpu else None
    for offer in offers:
        if want_gpu is not None:
            if offer.gpu.casefold() != want_gpu:
                continue
        elif offer.gpu == NO_GPU and gpu_count is None:
            continue
        if gpu_count is not None and offer.gpu_count != gpu_count:
            continue
        price = ranking_price(offer, spot)
        if price == _UNPRICED:
            continue
        key = (price, offer.key)
        if best_key is None or key < best_key:
            best, best_key = offer, key
    return best


def describe(offer: Offer | None, spot: bool = False) -> str:
    """One line for a person: ``"aws us-east-1 g6.xlarge: 1 x L4 (22.4 GiB), $0.80/h"``."""
    if offer is None:
        return "nothing fits"
    gpus = "no GPU" if offer.gpu == NO_GPU else f"{offer.gpu_count} x {offer.gpu}"
    if offer.gpu_memory_gib:
        gpus += f" ({offer.gpu_memory_gib:g} GiB)"
    price = effective_price(offer, spot)
    cost = "price unknown" if price is None else f"${price:.2f}/h" + (" spot" if spot else "")
    if offer.price_partial:
        cost += " + host"
    return f"{offer.provider} {offer.region} {offer.instance_type}: {gpus}, {cost}"
