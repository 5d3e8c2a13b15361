"""User options: one typed request, validated in one step against the offers.

The same options arrive from the spawn form (:func:`options_from_form`) and as JSON
through the REST API. :func:`parse_options` turns either into a :class:`LaunchRequest`
or raises :class:`OptionError` naming the field, the bad value (HTML-escaped) and what
is valid. The options, their types, limits and messages are the schema's
(:mod:`cloudhop.spawner.schema`); this module adds what needs the offers: the choices
of provider, region, zone, GPU, count and instance type the user may launch.
"""

from __future__ import annotations

import html
import re
from dataclasses import asdict, dataclass
from typing import Iterable

from .offers import NO_GPU, Offer, matching, same_gpu
from .providers import PROVIDERS
from .schema import (
    FIELDS, FORM_TRUE, MAX_GPUS, MAX_RAY_WORKERS, OPTIONS, RAY_FIELDS, RAY_OPTIONS, RAY_SCHEMA,
    SCHEMA, OptionError, choices, name, quote_all, show, unknown_keys,
)

__all__ = [
    "FIELDS", "MAX_GPUS", "MAX_RAY_WORKERS", "PROVIDERS", "RAY_FIELDS", "LaunchRequest",
    "OptionError", "RayRequest", "options_from_form", "parse_options", "parse_ray",
]


@dataclass(frozen=True)
class RayRequest:
    workers: int
    gpu: str = NO_GPU
    gpu_count: int = 0


@dataclass(frozen=True)
class LaunchRequest:
    provider: str = "auto"
    region: str | None = None
    zone: str | None = None
    instance_type: str | None = None
    gpu: str = NO_GPU
    gpu_count: int = 0
    spot: bool = False
    image: str | None = None
    ray: RayRequest | None = None
    restore: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> "LaunchRequest":
        """The request :meth:`to_dict` wrote (a server's saved state), its ``ray`` entry
        included. Raises :class:`TypeError` for anything else (an unknown field, a Ray
        request without ``workers``), so a reader can say why it could not use it."""
        if not isinstance(data, dict):
            raise TypeError(f"a launch request is a dict, not {type(data).__name__}")
        fields = dict(data)
        ray = fields.pop("ray", None)
        return cls(**fields, ray=RayRequest(**ray) if ray else None)

    @property
    def explicit(self) -> bool:
        """True when the user named a provider and region (their choice goes first)."""
        return self.provider != "auto" and bool(self.region)


def _gpu(field: str, value, offers: list[Offer]) -> str:
    """The catalog's spelling of the GPU ``value`` names among ``offers`` (any case),
    or ``"none"``."""
    gpu = name(field, value if value not in (None, "") else NO_GPU, optional=False)
    if same_gpu(gpu, NO_GPU):
        return NO_GPU
    known = {o.gpu for o in offers if o.gpu != NO_GPU}
    for k in known:
        if same_gpu(k, gpu):
            return k
    raise choices(field, value, known | {NO_GPU})


def _gpu_count(prefix: str, gpu: str, value) -> int:
    """The count of ``gpu`` asked for (``prefix`` is ``""`` or ``"ray."``): one GPU
    when unset, none without a GPU; a count that contradicts ``gpu`` is refused."""
    if value in (None, ""):
        value = 0 if gpu == NO_GPU else 1
    field = f"{prefix}gpu_count"
    count = (RAY_SCHEMA if prefix else SCHEMA)["gpu_count"].check(value, prefix)
    if gpu == NO_GPU and count:
        raise OptionError(field, f"must be 0 when {prefix}gpu is 'none', not {count}")
    if gpu != NO_GPU and not count:
        raise OptionError(field, f"must be at least 1 for {prefix}gpu {show(gpu)}")
    return count


def _narrow(field: str, raw: dict, pool: list[Offer], values) -> tuple[str | None, list[Offer]]:
    """The option ``field`` of ``raw`` (checked against the schema) and ``pool`` narrowed
    to the offers that have it (``values(offer)``: the offer's values of that field).
    An unset option leaves ``pool`` as it is; a value no offer has is an error naming
    the field and the valid choices."""
    value = SCHEMA[field].check(raw.get(field))
    if value is None:
        return None, pool
    have = {v for o in pool for v in values(o)}
    if value not in have:
        raise choices(field, value, have)
    return value, matching(pool, **{field: value})


def parse_options(raw, offers: list[Offer], *, providers: Iterable[str] = PROVIDERS) -> LaunchRequest:
    """Validate ``raw`` user options against the offers the user may launch.

    ``offers`` is what the user is allowed to see (after policy); ``providers`` are the
    enabled provider names. Returns a normalised request; raises :class:`OptionError`.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise OptionError("user_options", f"must be a JSON object, not {type(raw).__name__}")
    unknown_keys("", raw, FIELDS)
    providers = list(providers)

    provider = SCHEMA["provider"].check(raw.get("provider")) or "auto"
    if provider != "auto" and provider not in providers:
        if provider in PROVIDERS:  # one Cloudhop knows, not one this hub launches on
            raise OptionError("provider", f"{show(provider)} is not enabled on this hub; enabled: "
                              f"{quote_all(providers) or 'none'}")
        raise choices("provider", provider, ["auto", *providers])
    pool = matching(offers, provider=provider)
    if provider != "auto" and not pool:
        raise OptionError("provider", f"{show(provider)} has no offers you may launch")

    region, pool = _narrow("region", raw, pool, lambda o: (o.region,))
    zone, pool = _narrow("zone", raw, pool, lambda o: o.zones)

    gpu = _gpu("gpu", raw.get("gpu"), pool)
    pool = matching(pool, gpu=gpu)

    count = _gpu_count("", gpu, raw.get("gpu_count"))
    counts = {o.gpu_count for o in pool}
    if count not in counts:
        raise OptionError(
            "gpu_count",
            f"no offer has {count} x {html.escape(gpu)}"
            + (f" here; available counts: {', '.join(map(str, sorted(counts)))}" if counts else ""),
        )
    pool = matching(pool, gpu_count=count)

    instance_type, pool = _narrow("instance_type", raw, pool, lambda o: (o.instance_type,))

    spot = SCHEMA["spot"].check(raw.get("spot", False))
    if spot and not matching(pool, spot=True):
        raise OptionError("spot", "no matching offer has a spot price; set spot to false")

    # the options no offer decides (image, restore): as the schema checks them
    plain = {o.name: o.check(raw.get(o.name, o.default)) for o in OPTIONS if not o.matched}
    ray = parse_ray(raw.get("ray"), offers)

    return LaunchRequest(
        provider=provider, region=region, zone=zone, instance_type=instance_type, gpu=gpu,
        gpu_count=count, spot=spot, ray=ray, **plain,
    )


def parse_ray(raw, offers: list[Offer]) -> RayRequest | None:
    """Validate the ``ray`` option: ``None``/``{}``/``{"workers": 0}`` mean no cluster
    workers; a dict asks for ``workers`` nodes of ``gpu`` x ``gpu_count`` each."""
    raw = SCHEMA["ray"].object(raw)
    if raw is None:
        return None
    workers = RAY_SCHEMA["workers"].check(raw.get("workers", 0), "ray.")
    gpu = _gpu("ray.gpu", raw.get("gpu"), offers)
    count = _gpu_count("ray.", gpu, raw.get("gpu_count"))
    return RayRequest(workers=workers, gpu=gpu, gpu_count=count)


def options_from_form(formdata: dict) -> dict:
    """Turn the form's lists of strings into user_options (pure; validation is later).

    Each option of the schema is the form input of the same name (a checkbox for a
    bool); the ``ray`` options are ``ray_workers``, ``ray_gpu`` and ``ray_gpu_count``,
    and there is no ``ray`` option when ``ray_workers`` is empty or 0.
    """

    def one(key):
        vals = formdata.get(key) or [""]
        return vals[0].strip() if isinstance(vals[0], str) else vals[0]

    def read(options, prefix: str) -> dict:
        out: dict = {}
        for option in options:
            if option.kind == "object":
                continue
            val = one(prefix + option.name)
            if option.kind == "bool":
                out[option.name] = val in FORM_TRUE
            elif option.kind == "count":
                if val != "":
                    out[option.name] = int(val) if re.fullmatch(r"\d{1,4}", val) else val
            elif val:
                out[option.name] = val
        return out

    opts = read(OPTIONS, "")
    if one("ray_workers") not in ("", "0"):
        opts["ray"] = read(RAY_OPTIONS, "ray_")
    return opts
