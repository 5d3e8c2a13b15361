"""``cloudhop offers``: every GPU offer Cloudhop can launch, cheapest first.

    cloudhop offers --gpu H100 --count 8          # a table, on-demand prices
    cloudhop offers --gpu l4 --spot --max-price 1  # spot prices, at most 1 USD/hour
    cloudhop offers --provider gcp --region us-central1 --json

Offers come from the shipped catalog (aws, gcp, oci; with the operator's overrides and
recorded ``cloudhop catalog check`` results when ``--config`` names the hub's config)
and from the providers that see their own hardware (local: this machine's GPUs;
kubernetes: its node pools, when enabled in the config). Only providers Cloudhop can
launch on are listed. A bad flag value exits with status 2 and a message naming the flag.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path

from traitlets.config import Config

from cloudhop.spawner.catalog import CatalogError, catalog_offers
from cloudhop.spawner.offers import NO_GPU, Offer
from cloudhop.spawner.optimizer import effective_price
from cloudhop.spawner.providers import CATALOG_PROVIDERS, DEFAULT_LISTED, PROVIDERS
from cloudhop.spawner.schema import MAX_GPUS

#: the fields ``--json`` promises for every offer (more may follow)
JSON_FIELDS = ("provider", "region", "instance_type", "gpu", "gpu_count", "gpu_memory_gib",
               "vcpus", "memory_gib", "price_hour", "spot_price_hour")


class UsageError(Exception):
    """A flag has a bad value; the message names the flag. Exit status 2."""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "offers",
        help="list the GPU offers you can launch, cheapest first",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--gpu", metavar="NAME", help="GPU model as in the catalog (H100, A100-80GB, L4, T4, ...; any case), or 'none'")
    p.add_argument("--count", metavar="N", help=f"number of GPUs per server (1 to {MAX_GPUS})")
    p.add_argument("--provider", metavar="P", help=f"one of {', '.join(PROVIDERS)}")
    p.add_argument("--region", metavar="R", help="a region of the listed providers (us-east-1, us-central1, ...)")
    p.add_argument("--spot", action="store_true", help="sort and filter by spot/preemptible price")
    p.add_argument("--max-price", metavar="X", help="at most X USD per hour (spot price with --spot)")
    p.add_argument("--json", action="store_true", help="print a JSON list of offers instead of a table")
    p.add_argument("--config", metavar="FILE", help="the hub's config file (catalog overrides, enabled providers, local GPU prices)")
    p.set_defaults(func=run)


# -- arguments -------------------------------------------------------------------


def load_config(path: str | None) -> Config:
    """A JupyterHub/traitlets config file as a Config (empty without a path)."""
    if not path:
        return Config()
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--config: {path!r} is not a file")
    from traitlets.config.loader import PyFileConfigLoader

    try:
        return PyFileConfigLoader(file.name, str(file.parent.resolve())).load_config()
    except Exception as err:  # a config file is code: say which file broke and how
        raise UsageError(f"--config: {path!r} could not be loaded: {type(err).__name__}: {err}") from None


def refuse(command: str, err: UsageError | CatalogError) -> int:
    """Report a bad flag or a bad catalog override on stderr, as every ``cloudhop``
    command does (``cloudhop <command>: ...``), and return the exit status, 2."""
    where = "catalog override: " if isinstance(err, CatalogError) else ""
    print(f"cloudhop {command}: {where}{err}", file=sys.stderr)
    return 2


def did_you_mean(flag: str, value: str, valid) -> UsageError:
    valid = sorted(set(valid), key=str.casefold)
    low = {v.casefold(): v for v in valid}
    close = difflib.get_close_matches(value.casefold(), list(low), n=1, cutoff=0.5)
    hint = f"; did you mean {low[close[0]]!r}?" if close else ""
    shown = ", ".join(valid[:30]) + (f" (and {len(valid) - 30} more)" if len(valid) > 30 else "")
    return UsageError(f"{flag}: unknown value {value!r}{hint} Valid: {shown or 'none'}.")


def parse_count(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--count: must be a whole number from 0 to {MAX_GPUS}, not {text!r}") from None
    if not 0 <= value <= MAX_GPUS:
        raise UsageError(f"--count: must be from 0 to {MAX_GPUS}, not {value}")
    return value


def parse_price(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"--max-price: must be a number of USD per hour, not {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise UsageError(f"--max-price: must be a number of USD per hour >= 0, not {text!r}")
    return value


def enabled_providers(config: Config, asked: str | None) -> list[str]:
    if asked is not None:
        if asked not in PROVIDERS:
            raise did_you_mean("--provider", asked, PROVIDERS)
        return [asked]
    configured = config.CloudhopSpawner.get("providers") if "CloudhopSpawner" in config else None
    if configured:
        return [p for p in configured if p in PROVIDERS]
    return list(DEFAULT_LISTED)  # those needing setup (a cluster) only when configured


# -- offers ------------------------------------------------------------------------


def provider_offers(name: str, config: Config) -> tuple[list[Offer], str | None]:
    """(offers, None) or ([], why none could be read) for one provider."""
    if name in CATALOG_PROVIDERS:
        return catalog_offers(name, config), None
    try:
        from cloudhop.spawner.providers import provider_class

        return list(provider_class(name)(config=config).offers()), None
    except Exception as err:  # a provider that cannot look (no cluster, module not there)
        return [], f"{name}: offers unavailable ({type(err).__name__}: {err})"


def select(offers: list[Offer], *, gpu=None, count=None, region=None, spot=False, max_price=None) -> list[Offer]:
    """Filter and sort offers the way the flags say (cheapest first, unknown prices last)."""
    out = []
    gpu_fold = gpu.casefold() if gpu else None
    for o in offers:
        if gpu_fold is not None and o.gpu.casefold() != gpu_fold:
            continue
        if count is not None and o.gpu_count != count:
            continue
        if region is not None and o.region != region:
            continue
        price = effective_price(o, spot)
        if spot and price is None:
            continue
        if max_price is not None and (price is None or price > max_price):
            continue
        out.append(o)
    inf = float("inf")
    out.sort(key=lambda o: (effective_price(o, spot) if effective_price(o, spot) is not None else inf,
                            o.provider, o.region, o.instance_type))
    return out


def gather(args) -> tuple[list[Offer], list[str]]:
    """The offers the flags ask for, plus warnings about providers that could not look."""
    config = load_config(args.config)
    count = parse_count(args.count)
    max_price = parse_price(args.max_price)
    providers = enabled_providers(config, args.provider)
    offers, warnings = [], []
    for name in providers:
        found, warning = provider_offers(name, config)
        offers += found
        if warning:
            warnings.append(warning)
    gpu = args.gpu
    if gpu is not None:
        known = {o.gpu for o in offers} | {NO_GPU}
        match = [k for k in known if k.casefold() == gpu.casefold()]
        if not match:
            raise did_you_mean("--gpu", gpu, known)
    if args.region is not None:
        regions = {o.region for o in offers}
        if args.region not in regions:
            raise did_you_mean("--region", args.region, regions)
    return select(offers, gpu=gpu, count=count, region=args.region, spot=args.spot, max_price=max_price), warnings


# -- output ------------------------------------------------------------------------


def _num(value, fmt="{:g}") -> str:
    return "-" if value is None else fmt.format(value)


def table(offers: list[Offer], spot: bool) -> str:
    head = ("PROVIDER", "REGION", "INSTANCE TYPE", "GPU", "GPUS", "GPU GiB", "vCPUs", "RAM GiB", "$/HOUR", "SPOT $/HOUR", "NOTE")
    rows = []
    for o in offers:
        mark = "+" if o.price_partial else ""
        rows.append((
            o.provider, o.region, o.instance_type, o.gpu, str(o.gpu_count), _num(o.gpu_memory_gib),
            _num(o.vcpus), _num(o.memory_gib),
            _num(o.price_hour, "{:.4f}") + mark, _num(o.spot_price_hour, "{:.4f}") + (mark if o.spot_price_hour is not None else ""),
            o.note,
        ))
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    right = {4, 5, 6, 7, 8, 9}

    def line(cells):
        return "  ".join(c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()

    out = [line(head)] + [line(r) for r in rows]
    if any(o.price_partial for o in offers):
        out.append("+ partial price: the GPUs only; the host machine is extra (see the note)")
    out.append(f"{len(offers)} offer(s), sorted by {'spot' if spot else 'on-demand'} price per hour (USD).")
    return "\n".join(out)


def run(args) -> int:
    try:
        offers, warnings = gather(args)
    except (UsageError, CatalogError) as err:
        return refuse("offers", err)
    for warning in warnings:
        print(f"cloudhop offers: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps([o.to_dict() for o in offers], indent=1))
    else:
        print(table(offers, args.spot) if offers else "No offer matches.")
    return 0
