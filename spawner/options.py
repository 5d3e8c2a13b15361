"""User options: one typed request, validated in one step.

The same options arrive from the spawn form (``options_from_form``) and as JSON through
the REST API. :func:`parse_options` turns either into a :class:`LaunchRequest` or raises
:class:`OptionError` naming the field, the bad value (HTML-escaped) and what is valid.
The schema (DESIGN.md)::

    {"provider": "auto|local|aws|gcp|oci|kubernetes", "region": str, "zone": str?,
     "instance_type": str?, "gpu": str ("none" for CPU), "gpu_count": int,
     "spot": bool, "image": str?, "ray": {"workers": int, "gpu": str, "gpu_count": int}?,
     "restore": str?}
"""

from __future__ import annotations

import difflib
import html
import re
from dataclasses import asdict, dataclass
from typing import Iterable

from .offers import NO_GPU, Offer, matching, same_gpu

PROVIDERS = ("local", "aws", "gcp", "oci", "kubernetes")
MAX_GPUS = 16
MAX_RAY_WORKERS = 32
FIELDS = (
    "provider", "region", "zone", "instance_type", "gpu", "gpu_count", "spot",
    "image", "ray", "restore",
)
RAY_FIELDS = ("workers", "gpu", "gpu_count")

# names: letters, digits and a few separators; no markup, no slashes, no "..".
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+@-]{0,127}$")
# container image references: registry/path:tag@digest
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]{0,254}$")
_SNAPSHOT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


class OptionError(ValueError):
    """A user option is wrong. ``str(err)`` is safe to show in HTML."""

    status_code = 400

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


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

    @property
    def explicit(self) -> bool:
        """True when the user named a provider and region (their choice goes first)."""
        return self.provider != "auto" and bool(self.region)


def _show(value) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return html.escape(text, quote=False)


def _choices(field: str, value, valid: Iterable[str]) -> OptionError:
    valid = sorted(set(valid), key=str.casefold)
    msg = f"unknown {field} {_show(value)}"
    close = difflib.get_close_matches(str(value), valid, n=1, cutoff=0.5)
    if not close:
        low = {v.casefold(): v for v in valid}
        close = difflib.get_close_matches(str(value).casefold(), list(low), n=1, cutoff=0.5)
        close = [low[c] for c in close]
    if close:
        msg += f"; did you mean {html.escape(close[0], quote=False)!r}?"
    if valid:
        shown = ", ".join(html.escape(v, quote=False) for v in valid[:20])
        more = f" (and {len(valid) - 20} more)" if len(valid) > 20 else ""
        msg += f" Valid choices: {shown}{more}."
    else:
        msg += " No choices are available."
    return OptionError(field, msg)


def _name(field: str, value, *, optional: bool = True, pattern=_NAME) -> str | None:
    if value is None or (optional and value == ""):
        return None
    if not isinstance(value, str):
        raise OptionError(field, f"must be a string, not {type(value).__name__} {_show(value)}")
    if ".." in value or not pattern.match(value):
        raise OptionError(
            field,
            f"{_show(value)} is not a valid name (letters, digits and . _ - : only; "
            "no markup, spaces or path separators)",
        )
    return value


def _int(field: str, value, low: int, high: int) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*\d{1,4}\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(field, f"must be a whole number from {low} to {high}, not {_show(value)}")
    if not low <= value <= high:
        raise OptionError(field, f"must be from {low} to {high}, not {value}")
    return value


def _bool(field: str, value) -> bool:
    if isinstance(value, bool):
        return value
    raise OptionError(field, f"must be true or false, not {_show(value)}")


def _unknown_keys(field: str, data: dict, known: tuple) -> None:
    for key in data:
        if key not in known:
            err = _choices(f"{field}option" if not field else f"{field} option", key, known)
            # the key is user input too: the field name is escaped like the message
            name = html.escape(str(key)[:40])
            raise OptionError(f"{field}.{name}" if field else name, err.message)


def _gpu(field: str, value, offers: list[Offer]) -> str:
    name = _name(field, value if value not in (None, "") else NO_GPU, optional=False)
    if same_gpu(name, NO_GPU):
        return NO_GPU
    known = {o.gpu for o in offers if o.gpu != NO_GPU}
    for k in known:
        if same_gpu(k, name):
            return k
    raise _choices(field, value, known | {NO_GPU})


def parse_options(raw, offers: list[Offer], *, providers: Iterable[str] = PROVIDERS) -> LaunchRequest:
    """Validate ``raw`` user options against the offers the user may launch.

    ``offers`` is what the user is allowed to see (after policy); ``providers`` are the
    enabled provider names. Returns a normalised request; raises :class:`OptionError`.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise OptionError("user_options", f"must be a JSON object, not {type(raw).__name__}")
    _unknown_keys("", raw, FIELDS)
    providers = list(providers)

    provider = raw.get("provider") or "auto"
    if not isinstance(provider, str):
        raise OptionError("provider", f"must be a string, not {_show(provider)}")
    if provider != "auto" and provider not in providers:
        raise _choices("provider", provider, ["auto", *providers])
    pool = matching(offers, provider=provider)
    if provider != "auto" and not pool:
        raise OptionError("provider", f"{_show(provider)} has no offers you may launch")

    region = _name("region", raw.get("region"))
    if region is not None:
        regions = {o.region for o in pool}
        if region not in regions:
            raise _choices("region", region, regions)
        pool = matching(pool, region=region)

    zone = _name("zone", raw.get("zone"))
    if zone is not None:
        zones = {z for o in pool for z in o.zones}
        if zone not in zones:
            raise _choices("zone", zone, zones)
        pool = matching(pool, zone=zone)

    gpu = _gpu("gpu", raw.get("gpu"), pool)
    pool = matching(pool, gpu=gpu)

    count = raw.get("gpu_count")
    if count in (None, ""):
        count = 0 if gpu == NO_GPU else 1
    count = _int("gpu_count", count, 0, MAX_GPUS)
    if gpu == NO_GPU and count:
        raise OptionError("gpu_count", f"must be 0 when gpu is 'none', not {count}")
    if gpu != NO_GPU and not count:
        raise OptionError("gpu_count", f"must be at least 1 for gpu {_show(gpu)}")
    counts = {o.gpu_count for o in pool}
    if count not in counts:
        raise OptionError(
            "gpu_count",
            f"no offer has {count} x {html.escape(gpu)}"
            + (f" here; available counts: {', '.join(map(str, sorted(counts)))}" if counts else ""),
        )
    pool = matching(pool, gpu_count=count)

    instance_type = _name("instance_type", raw.get("instance_type"))
    if instance_type is not None:
        types = {o.instance_type for o in pool}
        if instance_type not in types:
            raise _choices("instance_type", instance_type, types)
        pool = matching(pool, instance_type=instance_type)

    spot = _bool("spot", raw.get("spot", False))
    if spot and not matching(pool, spot=True):
        raise OptionError("spot", "no matching offer has a spot price; set spot to false")

    image = _name("image", raw.get("image"), pattern=_IMAGE)
    restore = _name("restore", raw.get("restore"), pattern=_SNAPSHOT)
    ray = parse_ray(raw.get("ray"), offers)

    return LaunchRequest(
        provider=provider, region=region, zone=zone, instance_type=instance_type, gpu=gpu,
        gpu_count=count, spot=spot, image=image, ray=ray, restore=restore,
    )


def parse_ray(raw, offers: list[Offer]) -> RayRequest | None:
    """Validate the ``ray`` option: ``None``/``{}``/``{"workers": 0}`` mean no cluster
    workers; a dict asks for ``workers`` nodes of ``gpu`` x ``gpu_count`` each."""
    if raw in (None, False):
        return None
    if not isinstance(raw, dict):
        raise OptionError("ray", f"must be an object like {{\"workers\": 1, \"gpu\": \"none\", \"gpu_count\": 0}}, not {_show(raw)}")
    _unknown_keys("ray", raw, RAY_FIELDS)
    workers = _int("ray.workers", raw.get("workers", 0), 0, MAX_RAY_WORKERS)
    gpu = _gpu("ray.gpu", raw.get("gpu"), offers)
    count = raw.get("gpu_count")
    if count in (None, ""):
        count = 0 if gpu == NO_GPU else 1
    count = _int("ray.gpu_count", count, 0, MAX_GPUS)
    if gpu == NO_GPU and count:
        raise OptionError("ray.gpu_count", f"must be 0 when ray.gpu is 'none', not {count}")
    if gpu != NO_GPU and not count:
        raise OptionError("ray.gpu_count", f"must be at least 1 for ray.gpu {_show(gpu)}")
    return RayRequest(workers=workers, gpu=gpu, gpu_count=count)


def options_from_form(formdata: dict) -> dict:
    """Turn the form's lists of strings into user_options (pure; validation is later).

    Form fields: provider, region, zone, instance_type, gpu, gpu_count, spot (checkbox),
    image, ray_workers, ray_gpu, ray_gpu_count, restore.
    """

    def one(key):
        vals = formdata.get(key) or [""]
        return vals[0].strip() if isinstance(vals[0], str) else vals[0]

    opts: dict = {}
    for key in ("provider", "region", "zone", "instance_type", "gpu", "image", "restore"):
        val = one(key)
        if val:
            opts[key] = val
    count = one("gpu_count")
    if count != "":
        opts["gpu_count"] = int(count) if re.fullmatch(r"\d{1,4}", count) else count
    opts["spot"] = one("spot") in ("on", "true", "1", "yes")
    workers = one("ray_workers")
    if workers not in ("", "0"):
        ray = {"workers": int(workers) if re.fullmatch(r"\d{1,4}", workers) else workers}
        if one("ray_gpu"):
            ray["gpu"] = one("ray_gpu")
        rc = one("ray_gpu_count")
        if rc != "":
            ray["gpu_count"] = int(rc) if re.fullmatch(r"\d{1,4}", rc) else rc
        opts["ray"] = ray
    return opts
