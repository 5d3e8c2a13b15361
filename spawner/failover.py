"""Launching down a failover list: try each offer in order, move on when the provider
says it cannot (capacity, quota, credentials, transient), stop at the first success.

Used for the notebook node and for Ray workers alike, so both honour the same list.
"""

from __future__ import annotations

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
