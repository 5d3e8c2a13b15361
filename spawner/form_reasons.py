"""Why a choice of the spawn form is disabled or empty, in words a user reads.

The spawn form (``templates/form.html``) greys out what a user cannot pick; this module
says why, for the spawner to pass into the template:

* :func:`provider_choices` - the providers the user's groups may use, then every other
  provider Cloudhop knows, each with whether the user may pick it and, if not, why:
  enabled but unavailable (the provider's own reason, e.g. missing credentials), or not
  enabled on this hub (and how an admin enables it).
* :func:`no_gpu_reasons` - for each provider and region the user can launch in but
  without a GPU, why: the local provider knows (no NVIDIA device, NVML's error, a
  region set up without GPUs); elsewhere the group policy or the offers themselves.

Standard library only; the spawner calls both from ``get_options_form``.
"""

from __future__ import annotations

from typing import Callable, Iterable

from .offers import NO_GPU, Offer
from .providers import PROVIDERS, SPECS

#: the setting that enables providers, as the form names it to users
PROVIDERS_SETTING = "c.CloudhopSpawner.providers"


def label(name: str) -> str:
    """A provider's name as a sentence shows it without loading its class: ``AWS``,
    ``Kubernetes``, ``Lambda Cloud``."""
    spelled = {s.name: s.label for s in SPECS if s.label}
    if name in spelled:
        return spelled[name]
    return name.upper() if len(name) <= 3 else name.capitalize()


def provider_choices(statuses: list[dict], allowed: Iterable[str]) -> list[dict]:
    """The form's provider list: of ``statuses`` (the spawner's ``provider_status``, the
    enabled providers in order) those in ``allowed`` (the providers the user's groups
    may use; the others stay unnamed), each with ``state`` ``"available"`` or
    ``"unavailable"`` (its ``reason`` is the provider's), then every provider Cloudhop
    knows that this hub does not enable, as ``"not-enabled"``. Each has ``available``
    (pickable) and ``reason`` (None when pickable)."""
    allowed = set(allowed)
    out = [{**s, "state": "available" if s["available"] else "unavailable"}
           for s in statuses if s["name"] in allowed]
    enabled = {s["name"] for s in statuses}
    for name in PROVIDERS:
        if name not in enabled:
            out.append({
                "name": name, "display_name": label(name), "available": False, "state": "not-enabled",
                "reason": f"{label(name)} is not enabled on this hub; an admin adds it with {PROVIDERS_SETTING}",
            })
    return out


def no_gpu_reasons(all_offers: list[Offer], user_offers: list[Offer],
                   explain: Callable[[str, str], str | None]) -> dict[str, str]:
    """``"provider/region" -> why`` for each place among ``user_offers`` (what the user
    may launch) with no GPU offer. ``all_offers`` are the same places before the group
    policy; ``explain(provider, region)`` is the provider's own reason, or None (the
    local provider's ``no_gpu_reason``)."""
    places = {(o.provider, o.region) for o in user_offers}
    with_gpu = {(o.provider, o.region) for o in user_offers if o.gpu != NO_GPU}
    anywhere = {(o.provider, o.region) for o in all_offers if o.gpu != NO_GPU}
    out = {}
    for provider, region in sorted(places - with_gpu):
        why = explain(provider, region)
        if not why and (provider, region) in anywhere:
            why = "the policy of your groups allows no GPU here"
        out[f"{provider}/{region}"] = why or f"{provider} offers no GPU in {region}"
    return out
