"""Launching down a failover list: try each offer in order, move on when the provider
says it cannot (capacity, quota, credentials, transient), stop at the first success.

Used for the notebook node and for Ray workers alike, so both honour the same list.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Awaitable, Callable

from jupyterhub.spawner import SpawnException

from .offers import Offer
from .providers.base import LaunchSpec, Node, Provider, ProviderError


class NoOfferLaunched(SpawnException):
    """Every offer in the failover list failed; ``attempts`` says what was tried."""

    def __init__(self, attempts: list[dict], what: str = "server"):
        self.attempts = attempts
        if attempts:
            tried = "; ".join(f"{a['offer']} ({a['reason']}: {a['error']})" for a in attempts)
            msg = f"Could not start the {what}. Tried {len(attempts)} offer(s): {tried}"
        else:
            msg = f"Could not start the {what}: no offer matches the request"
        codes = {a.get("status_code", 503) for a in attempts}
        super().__init__(msg, reason=attempts[-1]["reason"] if attempts else "no-offer",
                         status_code=403 if codes == {403} else 503)


def launch_id(base: str, offer: Offer, spot: bool = False) -> str:
    """The request id of launching ``offer`` as part of the launch ``base`` names (one
    spawn's notebook node, one Ray worker): ``"<base>-<10 hex digits>"``, the digits a
    hash of the offer (provider, region, instance type, GPU model and count, spot).

    Providers make their idempotency tokens from it and look for a node carrying it
    before they create one (:meth:`.providers.base.Provider.launch`), so it must be the
    same for a retried launch of one offer and differ between the offers of a failover
    list: with one id per provider, a second offer of the same provider in the same
    zone would get the first offer's answer instead of being tried.
    """
    key = json.dumps([offer.provider, offer.region, offer.instance_type, offer.gpu, offer.gpu_count, bool(spot)])
    return f"{base}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


async def launch_first(
    offers: list[Offer],
    make_spec: Callable[[Offer], LaunchSpec],
    provider_for: Callable[[str], Provider],
    on_attempt: Callable[[dict], Awaitable[None] | None] | None = None,
    what: str = "server",
) -> tuple[Offer, Node, list[dict]]:
    """Launch the first offer that works. Returns (offer, node, attempts).

    ``on_attempt`` is called with each attempt record (``{"offer", "state", ...}``) as it
    starts and ends, for progress events and the server's state. Errors whose class is
    not marked ``failover`` (a bug, a bad spec) stop the walk at once.
    """
    attempts: list[dict] = []
    for offer in offers:
        record = {"offer": offer.key, "state": "launching", "started": time.time()}
        if on_attempt:
            await _maybe(on_attempt(dict(record)))
        try:
            node = await provider_for(offer.provider).launch(make_spec(offer))
        except ProviderError as err:
            record.update(state="failed", reason=err.reason, error=err.message,
                          status_code=err.status_code, seconds=round(time.time() - record["started"], 3))
            attempts.append(record)
            if on_attempt:
                await _maybe(on_attempt(dict(record)))
            if not err.failover:
                raise NoOfferLaunched(attempts, what) from err
            continue
        record.update(state="launched", node=node.id, seconds=round(time.time() - record["started"], 3))
        attempts.append(record)
        if on_attempt:
            await _maybe(on_attempt(dict(record)))
        return offer, node, attempts
    raise NoOfferLaunched(attempts, what)


async def _maybe(value):
    if hasattr(value, "__await__"):
        await value
