"""``cloudhop catalog check``: ask a cloud which catalog offers this account can launch.

    cloudhop catalog check --provider aws
    cloudhop catalog check --provider gcp --region us-central1 --region europe-west4
    cloudhop catalog check --provider oci --config /etc/cloudhop/config.py

The provider's own API answers (``Provider.check_catalog``: EC2
``describe_instance_type_offerings``, Compute ``machineTypes``/``acceleratorTypes``, OCI
``list_shapes``), with the credentials the hub would use. The answer is recorded as
``catalog-check-<provider>.json`` in the hub's data folder (``--data-dir``; the default
is the one ``cloudhop up`` uses), and from then on the hub, ``cloudhop offers`` and the
spawn form leave out what the account cannot launch in the checked regions. Checking
some regions keeps the earlier answer for the others.

``--provider`` also takes a ``module:Class`` path, as ``CloudhopSpawner.providers``
does, for a custom provider; its ``name`` says which catalog rows it checks.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from traitlets.config import Config

from cloudhop.spawner.catalog import CATALOG_PROVIDERS, CatalogError, catalog_offers, check_path, default_data_dir, record_check
from cloudhop.spawner.catalog.check import normalise_entries

from .cli import plain
from .offers_cli import UsageError, did_you_mean, load_config, refuse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "catalog",
        help="check the offer catalog against a cloud account",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="catalog_command", metavar="ACTION")
    check = actions.add_parser("check", help="record which catalog offers this account can launch",
                               description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("--provider", required=True, metavar="P", help=f"one of {', '.join(CATALOG_PROVIDERS)}")
    check.add_argument("--region", action="append", metavar="R", help="check only this region (repeatable); default: every catalog region")
    check.add_argument("--data-dir", metavar="DIR", help=f"where to record the result (default: {default_data_dir()})")
    check.add_argument("--config", metavar="FILE", help="the hub's config file (provider settings, catalog overrides)")
    check.set_defaults(func=run_check)
    p.set_defaults(func=lambda args: _help(p))


def _help(parser) -> int:
    parser.print_help()
    return 2


def _provider(spec: str, config: Config):
    """The provider object for a name or ``module:Class`` path."""
    from cloudhop.spawner.providers import provider_class

    if ":" not in spec and spec not in CATALOG_PROVIDERS:
        raise did_you_mean("--provider", spec, CATALOG_PROVIDERS)
    try:
        cls = provider_class(spec)
    except (ImportError, AttributeError) as err:
        raise UsageError(f"--provider: cannot load {spec!r}: {type(err).__name__}: {err}") from None
    if cls.name not in CATALOG_PROVIDERS:
        raise UsageError(f"--provider: {spec!r} is provider {cls.name!r}, which has no catalog rows; use one of {', '.join(CATALOG_PROVIDERS)}")
    return cls(config=config)


async def check(provider, offers, regions, data_dir) -> dict:
    """Ask ``provider`` about ``offers`` and record the answer; returns the record."""
    try:
        entries = await provider.check_catalog(offers)
    finally:
        await provider.close()
    asked = {(o.instance_type, o.region) for o in offers}
    # only rows that were asked about are recorded: the answer narrows, never adds
    entries = [e for e in normalise_entries(entries) if (e["instance_type"], e["region"]) in asked]
    return record_check(check_path(data_dir, provider.name), provider.name, regions, entries)


def run_check(args) -> int:
    from cloudhop.spawner.providers.base import ProviderError

    name = args.provider
    try:
        config = load_config(args.config)
        provider = _provider(args.provider, config)
        name = provider.name
        # check the shipped rows (plus overrides), not what an earlier check left
        config.Catalog.use_check = False
        offers = catalog_offers(provider.name, config)
        if args.region:
            known = {o.region for o in offers}
            for region in args.region:
                if region not in known:
                    raise did_you_mean("--region", region, known)
            offers = [o for o in offers if o.region in args.region]
        regions = sorted({o.region for o in offers})
        data_dir = args.data_dir or default_data_dir()
        result = asyncio.run(check(provider, offers, regions, data_dir))
    except (UsageError, CatalogError) as err:
        return refuse("catalog check", err)
    except NotImplementedError as err:
        print(f"cloudhop catalog check: {err}", file=sys.stderr)
        return 1
    except ProviderError as err:
        print(f"cloudhop catalog check: {name}: {err.reason}: {err.message}", file=sys.stderr)
        return 1
    launchable = len(result["offers"])
    in_regions = len({o["region"] for o in result["offers"]})
    print(
        f"{provider.name}: {launchable} of {len(offers)} catalog offers can be launched with these "
        f"credentials, in {in_regions} of {len(regions)} regions checked.\n"
        f"Recorded in {check_path(data_dir, provider.name)}; the hub leaves out the rest."
    )
    return 0
