"""``cloudhop offers``: the GPU offers this hub can launch, cheapest first.

    cloudhop offers --gpu H100 --count 8          # a table, on-demand prices
    cloudhop offers --gpu l4 --spot --max-price 1  # spot prices, at most 1 USD/hour
    cloudhop offers --provider gcp --region us-central1 --json
    cloudhop offers --all                          # every provider, launchable here or not

Offers come from the shipped catalog (aws, gcp, oci; with the operator's overrides and
recorded ``cloudhop catalog check`` results when ``--config`` names the hub's config)
and from the providers that see their own hardware (local: this machine's GPUs;
kubernetes: its node pools, when enabled in the config). Only the providers this hub can
launch are listed, as the spawn form does: those its config enables
(``c.CloudhopSpawner.providers``; without ``--config``, what ``cloudhop up`` enables) that
are usable now (credentials found, cluster reachable). A line names the others and why;
``--all`` or ``--provider`` lists them too. In the table, identical offers in several
regions share a row; ``--json`` lists each. When nothing matches, the nearest GPU counts
and models are named. A bad flag value exits with status 2 and a message naming the flag.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from traitlets.config import Config

from cloudhop.spawner.catalog import CatalogError, catalog_offers
from cloudhop.spawner.offers import NO_GPU, Offer
from cloudhop.spawner.optimizer import effective_price
from cloudhop.spawner.providers import CATALOG_PROVIDERS, DEFAULT_LISTED, PROVIDERS
from cloudhop.spawner.schema import MAX_GPUS, unknown_choice

from .cli import plain
from .offers_view import asked, hidden_line, no_match, table

#: the fields ``--json`` promises for every offer (more may follow)
JSON_FIELDS = ("provider", "region", "instance_type", "gpu", "gpu_count", "gpu_memory_gib",
               "vcpus", "memory_gib", "price_hour", "spot_price_hour")


class UsageError(Exception):
    """A flag has a bad value; the message names the flag. Exit status 2."""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "offers",
        help="list the GPU offers this hub can launch, cheapest first",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--gpu", metavar="NAME", help="GPU model as in the catalog (H100, A100-80GB, L4, T4, ...; any case), or 'none'")
    p.add_argument("--count", metavar="N", help=f"number of GPUs per server (1 to {MAX_GPUS})")
    p.add_argument("--provider", metavar="P", help=f"one of {', '.join(PROVIDERS)}")
    p.add_argument("--region", metavar="R", help="a region of the listed providers (us-east-1, us-central1, ...)")
    p.add_argument("--spot", action="store_true", help="sort and filter by spot/preemptible price")
    p.add_argument("--max-price", metavar="X", help="at most X USD per hour (spot price with --spot)")
    p.add_argument("--all", action="store_true", help="also list providers this hub cannot launch (not enabled, or no credentials)")
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
    """``--gpu: unknown value 'H1OO'; did you mean 'H100'? Valid choices: ...``, worded
    as the spawn form's option errors are (``schema.unknown_choice``)."""
    return UsageError(f"{flag}: {unknown_choice('value', value, valid, limit=30)}")


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
    """The providers whose offers are read: ``--provider``'s, else the hub's (see
    :func:`hub_providers`) and every one that needs no setup (a cluster), in the
    registry's order; :func:`hidden_providers` says which this hub cannot launch."""
    if asked is not None:
        if asked not in PROVIDERS:
            raise did_you_mean("--provider", asked, PROVIDERS)
        return [asked]
    listed = set(DEFAULT_LISTED) | set(configured_providers(config) or ())
    return [p for p in PROVIDERS if p in listed]


def configured_providers(config: Config) -> list[str] | None:
    """``c.CloudhopSpawner.providers`` of the config (registered names), None when unset."""
    configured = config.CloudhopSpawner.get("providers") if "CloudhopSpawner" in config else None
    return [p for p in configured if p in PROVIDERS] if configured else None


def hub_providers(config: Config) -> list[str]:
    """The providers the hub enables: the config's, else the spawner's default (what a
    plain ``cloudhop up`` enables)."""
    configured = configured_providers(config)
    if configured is not None:
        return configured
    from cloudhop.spawner.spawner import CloudhopSpawner

    return list(CloudhopSpawner.class_traits()["providers"].default())


#: why a provider the hub does not enable is left out
NOT_ENABLED = "not enabled on this hub: c.CloudhopSpawner.providers"


async def _why_not(name: str, config: Config) -> str | None:
    """The provider's own reason it cannot launch now (the spawn form's), None if it can."""
    from cloudhop.spawner.providers import provider_class

    try:
        provider = provider_class(name)(config=config)
    except Exception as err:  # a bad setting of that provider: say so, list the others
        return f"its settings are refused ({type(err).__name__}: {err})"
    try:
        return await provider.check_available()
    except Exception as err:  # check_available never raises by contract; a reason if it does
        return f"{type(err).__name__}: {err}"
    finally:
        closed = provider.close()
        if inspect.isawaitable(closed):
            await closed


def hidden_providers(config: Config, names: list[str]) -> dict[str, str]:
    """Of ``names``, those this hub cannot launch, with why: not enabled by its config,
    or not usable now (``Provider.check_available``, as the spawn form asks)."""
    enabled = hub_providers(config)

    async def check() -> dict[str, str | None]:
        todo = [n for n in names if n in enabled]
        reasons = await asyncio.gather(*(_why_not(n, config) for n in todo))
        return dict(zip(todo, reasons))

    reasons = asyncio.run(check())
    hidden = {}
    for name in names:
        why = NOT_ENABLED if name not in enabled else reasons.get(name)
        if why:
            hidden[name] = why
    return hidden


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


@dataclass
class Listing:
    """What ``cloudhop offers`` found for its flags."""

    #: the selected offers of the listed providers, cheapest first
    offers: list[Offer]
    #: provider -> why it is not listed
    hidden: dict[str, str] = field(default_factory=dict)
    #: "provider: why no offers could be read" lines
    warnings: list[str] = field(default_factory=list)
    #: the listed providers' offers that pass every flag but --gpu and --count
    pool: list[Offer] = field(default_factory=list)
    #: the listed providers' offers, before any flag
    unfiltered: list[Offer] = field(default_factory=list)
    #: the hidden providers' offers that pass every flag but --gpu and --count
    elsewhere: list[Offer] = field(default_factory=list)
    #: why the provider --provider names cannot be launched here (it is listed anyway)
    asked_unlaunchable: str | None = None


def gather(args) -> Listing:
    """The offers the flags ask for, of the providers this hub can launch (all with
    ``--all``, the one ``--provider`` names), and what the output says about the rest."""
    config = load_config(args.config)
    count = parse_count(args.count)
    max_price = parse_price(args.max_price)
    names = enabled_providers(config, args.provider)
    hidden = hidden_providers(config, names)
    listed = names if (getattr(args, "all", False) or args.provider) else [n for n in names if n not in hidden]
    offers, warnings = [], []
    for name in names:
        found, warning = provider_offers(name, config)
        offers += found
        if warning and name in listed:
            warnings.append(warning)
    gpu = args.gpu
    if gpu is not None:  # every provider's GPUs count as known: the hint says who has it
        known = {o.gpu for o in offers} | {NO_GPU}
        match = [k for k in known if k.casefold() == gpu.casefold()]
        if not match:
            raise did_you_mean("--gpu", gpu, known)
    if args.region is not None:
        regions = {o.region for o in offers}
        if args.region not in regions:
            raise did_you_mean("--region", args.region, regions)
    flags = dict(region=args.region, spot=args.spot, max_price=max_price)
    shown = [o for o in offers if o.provider in listed]
    chosen = select(shown, gpu=gpu, count=count, **flags)
    out = Listing(chosen, hidden={n: w for n, w in hidden.items() if n not in listed}, warnings=warnings,
                  asked_unlaunchable=hidden.get(args.provider) if args.provider else None)
    if not chosen:
        out.pool, out.unfiltered = select(shown, **flags), shown
        out.elsewhere = select([o for o in offers if o.provider in out.hidden], **flags)
    return out


# -- output ------------------------------------------------------------------------


def run(args) -> int:
    try:
        found = gather(args)
    except (UsageError, CatalogError) as err:
        return refuse("offers", err)
    for warning in found.warnings:
        print(f"cloudhop offers: {warning}", file=sys.stderr)
    notes = [hidden_line(found.hidden)] if found.hidden else []
    if found.asked_unlaunchable:
        notes.append(f"{args.provider} is listed because --provider names it, but this hub cannot "
                     f"launch it: {found.asked_unlaunchable}.")
    if not found.offers:
        count = parse_count(args.count)
        ask = asked(gpu=args.gpu, count=count, region=args.region, spot=args.spot,
                    max_price=parse_price(args.max_price))
        notes.insert(0, no_match(ask, found.pool, found.elsewhere, gpu=args.gpu, count=count,
                                 unfiltered=found.unfiltered))
    if args.json:
        print(json.dumps([o.to_dict() for o in found.offers], indent=1))
        for note in notes:  # stdout stays JSON
            print(f"cloudhop offers: {note}", file=sys.stderr)
        return 0
    if found.offers:
        print(table(found.offers, args.spot))
    for note in notes:
        print(note)
    return 0
