"""Each newer cloud provider (Lambda Cloud, Azure, DigitalOcean, Yandex Cloud) wired to its local API
double, as the contract suite, the security tests and the failover tests use them:
``async with NEW_CLOUDS[name](monkeypatch) as wired``, where ``wired.provider`` talks to
``wired.double``, ``wired.make(user)`` is a launch spec for a cheap catalog offer of that
cloud, and ``wired.secret`` is the credential the provider holds (None where the double
takes none: Azure's tests send no token)."""

from __future__ import annotations

import contextlib
from typing import Callable, NamedTuple

from cloudhop.spawner.catalog import catalog_offers
from cloudhop.spawner.offers import matching
from tests.cloudkit import spec_for

FAST = {"status_cache_seconds": 0, "retry_base_delay": 0.01}
AZURE_SUBNET = ("/subscriptions/sub-test/resourceGroups/rg-test/providers/Microsoft.Network/"
                "virtualNetworks/vnet/subnets/default")


class Wired(NamedTuple):
    provider: object
    make: Callable
    double: object
    secret: str | None


def cheapest_in_catalog(provider: str, region: str, gpu: str, count: int):
    found = matching(catalog_offers(provider), provider=provider, region=region, gpu=gpu, gpu_count=count)
    return min(found, key=lambda o: o.price_hour)


@contextlib.asynccontextmanager
async def lambda_cloud(monkeypatch):
    from cloudhop.spawner.providers.lambda_cloud import LambdaProvider
    from tests.fakes.lambda_api import FakeLambda

    secret = "wired-lambda-key-7f3a"
    fake = FakeLambda(key=secret)
    url = fake.start()
    monkeypatch.setenv("LAMBDA_API_KEY", secret)
    offer = cheapest_in_catalog("lambda", "us-east-1", "A10", 1)
    try:
        yield Wired(LambdaProvider(api_endpoint=url + "/api/v1", ssh_key_name="k", **FAST),
                    lambda user: spec_for(offer, user=user), fake, secret)
    finally:
        fake.stop()


@contextlib.asynccontextmanager
async def azure(monkeypatch):
    from cloudhop.spawner.providers.azure import AzureProvider
    from tests.fakes.azure_api import FakeAzure

    fake = FakeAzure()
    url = fake.start()
    offer = cheapest_in_catalog("azure", "eastus", "T4", 1)
    try:
        yield Wired(AzureProvider(api_endpoint=url, anonymous_credentials=True, subscription_id="sub-test",
                                  resource_group="rg-test", subnet_id=AZURE_SUBNET, poll_seconds=0, **FAST),
                    lambda user: spec_for(offer, user=user), fake, None)
    finally:
        fake.stop()


@contextlib.asynccontextmanager
async def digitalocean(monkeypatch):
    from cloudhop.spawner.providers.digitalocean import DigitalOceanProvider
    from tests.fakes.digitalocean_api import FakeDigitalOcean

    secret = "wired-do-token-9c1e"
    fake = FakeDigitalOcean(token=secret)
    url = fake.start()
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", secret)
    offer = cheapest_in_catalog("digitalocean", "tor1", "H100", 1)
    try:
        yield Wired(DigitalOceanProvider(api_endpoint=url, **FAST), lambda user: spec_for(offer, user=user),
                    fake, secret)
    finally:
        fake.stop()


@contextlib.asynccontextmanager
async def yandex(monkeypatch):
    from cloudhop.spawner.providers.yandex import YandexProvider
    from tests.fakes.yandex_api import FakeYandex

    secret = "wired-yc-iam-token-4b2d"
    fake = FakeYandex(iam_token=secret)
    url = fake.start()
    for env in ("YC_TOKEN", "YC_SERVICE_ACCOUNT_KEY_FILE"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("YC_IAM_TOKEN", secret)
    monkeypatch.setenv("YC_FOLDER_ID", fake.folder)
    offer = cheapest_in_catalog("yandex", "ru-central1", "T4", 1)
    try:
        yield Wired(YandexProvider(api_endpoint=url, poll_seconds=0, **FAST), lambda user: spec_for(offer, user=user),
                    fake, secret)
    finally:
        fake.stop()


NEW_CLOUDS = {"lambda": lambda_cloud, "azure": azure, "digitalocean": digitalocean, "yandex": yandex}
