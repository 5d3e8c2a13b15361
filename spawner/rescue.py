"""Where a preempted spot server goes next: the spawner's half of a spot rescue.

The hub's rescue API (:mod:`cloudhop.hub.rescue_api`) asks :func:`next_launch` for the
offer to relaunch on: the first offer of the server's failover list (the same request
ranked by :meth:`~.spawner.CloudhopSpawner.plan`, within the owner's policy) that is not
the preempted offer, so another region or cloud. When no other spot offer is left,
``c.CloudhopRescue.on_demand`` decides:

* ``"fallback"`` (default): the first on-demand offer of the same list (the preempted
  offer included: on-demand it is not preempted);
* ``"always"``: every rescue relaunches on-demand;
* ``"never"``: spot only; with no other spot offer there is no rescue.

:func:`relaunch_options` turns that offer into the user_options of the new start: the
server's own options pinned to the offer, plus ``restore`` = the rescue's snapshot.
"""

from __future__ import annotations

import dataclasses

from traitlets import Unicode, validate
from traitlets.config import Configurable

from .offers import Offer
from .validate import SettingError, setting_name

ON_DEMAND = ("fallback", "always", "never")


class NoOffer(RuntimeError):
    """No offer is left to relaunch a rescued server on; the message says why."""


class CloudhopRescue(Configurable):
    """Settings of spot rescues (``c.CloudhopRescue.*``), read by the hub."""

    on_demand = Unicode(
        "fallback", help="""Whether a rescued spot server may come back on-demand:
        "fallback" (when no other spot offer is left), "always", or "never".""",
    ).tag(config=True)

    @validate("on_demand")
    def _check_on_demand(self, proposal):
        if proposal["value"] not in ON_DEMAND:
            raise SettingError(f"{setting_name(self, proposal['trait'])} must be one of "
                               f"{', '.join(map(repr, ON_DEMAND))}, not {proposal['value']!r}")
        return proposal["value"]


async def next_launch(spawner, on_demand: str = "fallback") -> tuple[Offer, bool]:
    """``(offer, spot)`` a rescue of ``spawner``'s server relaunches on (see the module).
    Raises :class:`NoOffer` when there is none."""
    request, preempted = spawner.request, spawner.offer
    if request is None or preempted is None:
        raise NoOffer("the server's launch request is unknown; nothing to relaunch")
    offers = await spawner.user_offers()
    if on_demand != "always":
        spot = [o for o in spawner.plan(request, offers) if o.key != preempted.key]
        if spot:
            return spot[0], True
        if on_demand == "never":
            raise NoOffer(f"no spot offer but the preempted {preempted.key} matches the request, and "
                          "c.CloudhopRescue.on_demand is 'never'")
    ranked = spawner.plan(dataclasses.replace(request, spot=False), offers)
    if not ranked:
        raise NoOffer("no on-demand offer matches the request")
    return ranked[0], False


def relaunch_options(user_options: dict, offer: Offer, spot: bool, snapshot: str | None) -> dict:
    """The user_options that start the server on ``offer`` (spot or on-demand), restoring
    ``snapshot``: the server's own options with the place pinned to the offer."""
    options = {k: v for k, v in (user_options or {}).items() if k not in ("zone", "restore")}
    options.update(provider=offer.provider, region=offer.region, instance_type=offer.instance_type, spot=spot)
    if snapshot:
        options["restore"] = snapshot
    return options
