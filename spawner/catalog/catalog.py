"""The catalog as the rest of Cloudhop sees it: offers per cloud, loaded once.

Built-in tables (``data/*.csv``) are parsed once per process. Operator settings come
from the :class:`Catalog` traitlets section (``c.Catalog.override_paths = [...]``) of the
hub's config; each distinct combination of settings and file modification times is
built once and then served from a cache, so the form and the optimizer never re-read
files on a request.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

from traitlets import Bool, Dict, List, Unicode, validate, TraitError
from traitlets.config import Config, Configurable

from ..offers import Offer
from ..validate import require_number
# clouds whose offers come from the catalog, and those that see their own (the registry's)
from ..providers import CATALOG_PROVIDERS, LIVE_PROVIDERS
from .attached import DEFAULT_N1_HOSTS, attached_offers
from .check import apply_check, check_path, read_check
from .loader import DATA_DIR, CatalogError, parse_attached, parse_instances, read_text, table_kind

#: in the data for reference, not launchable by Cloudhop (none at present)
REFERENCE_PROVIDERS: tuple = ()


def default_data_dir() -> str:
    """Where hub-side state such as check results lives: ``$CLOUDHOP_DATA_DIR`` (which
    ``cloudhop up`` sets to its data folder), else ``cloudhop up``'s default data folder."""
    env = os.environ.get("CLOUDHOP_DATA_DIR")
    if env:
        return env
    import platformdirs

    return platformdirs.user_data_dir("cloudhop")


class Catalog(Configurable):
    """Operator settings for the offer catalog (``c.Catalog.*``)."""

    override_paths = List(
        Unicode(),
        help="""CSV files that add or replace catalog rows, with the same columns as the
        shipped tables (``cloud, instance_type, accelerator, accelerator_count,
        accelerator_memory_gib, vcpus, memory_gib, price_hour, spot_price_hour, region,
        zones``; prices in USD/hour). A row replaces the shipped row with the same cloud,
        instance type and region. A file with the GCP N1 accelerator columns
        (``accelerator_price_hour``, ...) adds or replaces attachable-GPU rows.""",
    ).tag(config=True)

    check_dir = Unicode(
        "",
        help="""Folder holding ``cloudhop catalog check`` results
        (``catalog-check-<provider>.json``). Empty: ``$CLOUDHOP_DATA_DIR`` (set by ``cloudhop up``) or
        ``cloudhop up``'s default data folder.""",
    ).tag(config=True)

    use_check = Bool(
        True,
        help="Drop offers a recorded ``cloudhop catalog check`` says the account cannot launch.",
    ).tag(config=True)

    keep_non_nvidia = Bool(
        False,
        help="""Keep non-NVIDIA accelerators (Inferentia, Trainium, Gaudi, FPGAs, Radeon).
        Off by default: the single-user image and the form are about CUDA GPUs.""",
    ).tag(config=True)

    n1_hosts = Dict(
        default_value=dict(DEFAULT_N1_HOSTS),
        help="""GCP N1 host machine type per attached GPU count, e.g.
        ``{1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32", 8: "n1-standard-64"}``.
        A count without a host is not offered.""",
    ).tag(config=True)

    n1_host_prices = Dict(
        help="""USD/hour of GCP N1 host machine types, keyed by ``"<machine type>"`` or
        ``"<region>/<machine type>"`` (wins). A value is a number (on-demand) or
        ``{"price_hour": x, "spot_price_hour": y}``. Without an entry, an N1 offer's price
        covers its GPUs only and is marked partial.""",
    ).tag(config=True)

    @validate("n1_hosts")
    def _valid_hosts(self, proposal):
        hosts = {}
        for count, host in proposal["value"].items():
            try:
                n = int(count)
            except (TypeError, ValueError):
                raise TraitError(f"Catalog.n1_hosts: key {count!r} must be a GPU count (1, 2, 4, 8)") from None
            if n < 1 or not isinstance(host, str) or not host.startswith("n1-"):
                raise TraitError(f"Catalog.n1_hosts: {count!r}: {host!r} must be an N1 machine type such as 'n1-standard-8'")
            hosts[n] = host
        return hosts

    @validate("n1_host_prices")
    def _valid_prices(self, proposal):
        for key, value in proposal["value"].items():
            entry = value if isinstance(value, dict) else {"price_hour": value}
            for name, price in entry.items():
                if name not in ("price_hour", "spot_price_hour"):
                    raise TraitError(f"Catalog.n1_host_prices[{key!r}]: unknown key {name!r}; use price_hour, spot_price_hour")
                require_number(price, f"Catalog.n1_host_prices[{key!r}]: {name}", minimum=0, what="a number of USD/hour")
        return proposal["value"]

    def settings_key(self) -> tuple:
        """Everything that changes the result, including file modification times."""
        files = tuple((p, _mtime(p)) for p in self.override_paths)
        check_dir = self.check_dir or default_data_dir()
        checks = tuple(
            (p, _mtime(check_path(check_dir, p))) for p in CATALOG_PROVIDERS
        ) if self.use_check else ()
        return (
            files, check_dir, checks, self.keep_non_nvidia,
            tuple(sorted(self.n1_hosts.items())),
            tuple(sorted((k, repr(v)) for k, v in self.n1_host_prices.items())),
        )


def _mtime(path) -> float | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


@functools.lru_cache(maxsize=None)
def _builtin_instances(provider: str, keep_non_nvidia: bool) -> tuple[Offer, ...]:
    path = DATA_DIR / f"{provider}.csv"
    if not path.exists():
        return ()
    return tuple(parse_instances(read_text(path), path.name, keep_non_nvidia=keep_non_nvidia))


@functools.lru_cache(maxsize=None)
def _builtin_attached(provider: str):
    path = DATA_DIR / f"{provider}_n1_accelerators.csv"
    if not path.exists():
        return ()
    return tuple(parse_attached(read_text(path), path.name))


@functools.lru_cache(maxsize=64)
def _override_file(path: str, mtime, keep_non_nvidia: bool):
    """(instance offers, attached rows) of one operator file; cached per mtime."""
    text = read_text(path)
    where = Path(path).name
    if table_kind(text) == "attached":
        return (), tuple(parse_attached(text, where))
    return tuple(parse_instances(text, where, keep_non_nvidia=keep_non_nvidia)), ()


_lock = threading.Lock()
_built: dict = {}


def _build(provider: str, settings: Catalog) -> tuple[Offer, ...]:
    instances = {(o.instance_type, o.region): o for o in _builtin_instances(provider, settings.keep_non_nvidia)}
    attached = {(r.accelerator.casefold(), r.count, r.region): r for r in _builtin_attached(provider)}
    for path in settings.override_paths:
        if not os.path.exists(path):
            raise CatalogError(path, "Catalog.override_paths", "file not found")
        extra, extra_attached = _override_file(path, _mtime(path), settings.keep_non_nvidia)
        for o in extra:
            if o.provider == provider:
                instances[(o.instance_type, o.region)] = o
        for r in extra_attached:
            if r.cloud == provider:
                attached[(r.accelerator.casefold(), r.count, r.region)] = r
    offers = list(instances.values())
    offers += attached_offers(list(attached.values()), settings.n1_hosts, settings.n1_host_prices)
    if settings.use_check:
        result = read_check(check_path(settings.check_dir or default_data_dir(), provider))
        offers = apply_check(offers, result)
    offers.sort(key=lambda o: (o.region, o.instance_type))
    return tuple(offers)


def catalog_offers(provider: str, config: Config | None = None) -> list[Offer]:
    """Every catalog offer for ``provider`` (``"aws"``, ``"gcp"``, ``"oci"``, ``"lambda"``,
    ``"azure"``, ``"digitalocean"``), after operator overrides and the recorded account
    check. ``config`` is the hub's traitlets config (a provider passes ``self.config``).

    Returns a new list of shared, immutable offers; zones are tuples. Providers that
    are not in the catalog (``local``, ``kubernetes``) get an empty list. Raises
    :class:`CatalogError` for an unreadable override file, ``ValueError`` for a name
    that is no provider at all.
    """
    if provider in LIVE_PROVIDERS:
        return []
    if provider not in CATALOG_PROVIDERS + REFERENCE_PROVIDERS:
        raise ValueError(
            f"unknown catalog provider {provider!r}; the catalog has {', '.join(CATALOG_PROVIDERS)}"
        )
    settings = Catalog(config=config) if config is not None else Catalog()
    key = (provider, settings.settings_key())
    with _lock:
        hit = _built.get(key)
    if hit is None:
        hit = _build(provider, settings)
        with _lock:
            if len(_built) > 256:  # settings rarely change; bound the cache anyway
                _built.clear()
            _built[key] = hit
    return list(hit)


def all_catalog_offers(config: Config | None = None, providers=CATALOG_PROVIDERS) -> list[Offer]:
    """:func:`catalog_offers` for several providers, concatenated."""
    out: list[Offer] = []
    for p in providers:
        out += catalog_offers(p, config)
    return out
