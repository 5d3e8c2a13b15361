"""Providers: where a user's server can run. See :mod:`.base` for the contract.

The registry maps a provider's name to its class by import path, so an SDK is imported
only when its provider is enabled (a missing ``oci`` never breaks AWS).
"""

from __future__ import annotations

import importlib

from .base import Provider

REGISTRY = {
    "local": "cloudhop.spawner.providers.local:LocalProvider",
    "aws": "cloudhop.spawner.providers.aws:AWSProvider",
    "gcp": "cloudhop.spawner.providers.gcp:GCPProvider",
    "oci": "cloudhop.spawner.providers.oci:OCIProvider",
    "kubernetes": "cloudhop.spawner.providers.kubernetes:KubernetesProvider",
}


def provider_class(name: str) -> type[Provider]:
    """The class for a provider name, or for a ``module:Class`` path (tests use that to
    plug in a scripted provider)."""
    path = REGISTRY.get(name, name)
    if ":" not in path:
        raise KeyError(f"unknown provider {name!r}; known: {', '.join(REGISTRY)}")
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
