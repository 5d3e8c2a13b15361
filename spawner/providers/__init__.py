"""Providers: where a user's server can run. See :mod:`.base` for the contract.

This module is the one registry of provider names (like SkyPilot's
``sky/provision/__init__.py``): every list of providers in Cloudhop - the options'
valid names, the policy's known names, the spawner's help text, the catalog's split
between table and live offers, the CLIs' choices, the config sections the reaper
forwards - is derived from :data:`SPECS`. Adding a provider means adding one
:class:`ProviderSpec` here (and its module). See docs/architecture.md.

It is standard library only and names each class by import path, so an SDK is
imported only when its provider is used (a missing ``oci`` never breaks AWS, and the
names can be read where no cloud SDK is installed).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .base import Provider


@dataclass(frozen=True)
class ProviderSpec:
    """One provider Cloudhop ships.

    ``path`` is ``"module:Class"``, imported lazily by :func:`provider_class`.
    ``catalog``: its offers come from the shipped catalog tables (``<name>.csv``);
    otherwise the provider lists the hardware it sees itself (``Provider.offers()``).
    ``needs_setup``: it has no offers until the operator points it somewhere (a
    cluster), so the CLIs leave it out unless the hub's config enables it.
    ``label``: how a sentence names it without loading its class (empty: from ``name``).
    """

    name: str
    path: str
    catalog: bool = False
    needs_setup: bool = False
    label: str = ""

    @property
    def class_name(self) -> str:
        """The class's name, which is also its traitlets config section."""
        return self.path.rpartition(":")[2]


#: every provider Cloudhop ships, in the order lists show them
SPECS = (
    ProviderSpec("local", "cloudhop.spawner.providers.local:LocalProvider"),
    ProviderSpec("aws", "cloudhop.spawner.providers.aws:AWSProvider", catalog=True),
    ProviderSpec("gcp", "cloudhop.spawner.providers.gcp:GCPProvider", catalog=True),
    ProviderSpec("oci", "cloudhop.spawner.providers.oci:OCIProvider", catalog=True),
    ProviderSpec("lambda", "cloudhop.spawner.providers.lambda_cloud:LambdaProvider", catalog=True,
                 label="Lambda Cloud"),
    ProviderSpec("azure", "cloudhop.spawner.providers.azure:AzureProvider", catalog=True),
    ProviderSpec("digitalocean", "cloudhop.spawner.providers.digitalocean:DigitalOceanProvider",
                 catalog=True, label="DigitalOcean"),
    ProviderSpec("yandex", "cloudhop.spawner.providers.yandex:YandexProvider", catalog=True,
                 label="Yandex Cloud"),
    ProviderSpec("kubernetes", "cloudhop.spawner.providers.kubernetes:KubernetesProvider",
                 needs_setup=True),
)

#: name -> "module:Class"
REGISTRY = {s.name: s.path for s in SPECS}
#: every provider name
PROVIDERS = tuple(REGISTRY)
#: providers whose offers come from the catalog tables
CATALOG_PROVIDERS = tuple(s.name for s in SPECS if s.catalog)
#: providers whose offers come from the provider itself, not from a table
LIVE_PROVIDERS = tuple(s.name for s in SPECS if not s.catalog)
#: providers a CLI lists when the hub's config does not enable a set
DEFAULT_LISTED = tuple(s.name for s in SPECS if not s.needs_setup)
#: traitlets config sections the providers read: their base classes, then each class
CONFIG_SECTIONS = ("Provider", "CloudProvider", *(s.class_name for s in SPECS))


def quoted(names=PROVIDERS) -> str:
    """``"local", "aws", ...``: names as a help text lists them."""
    return ", ".join(f'"{n}"' for n in names)


def provider_class(name: str) -> type[Provider]:
    """The class for a provider name, or for a ``module:Class`` path (tests use that to
    plug in a scripted provider)."""
    path = REGISTRY.get(name, name)
    if ":" not in path:
        raise KeyError(f"unknown provider {name!r}; known: {', '.join(REGISTRY)}")
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
