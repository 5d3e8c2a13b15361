"""Each newer cloud provider (Lambda Cloud, ...) wired to its local API double, as the
contract suite and the failover tests use them: ``async with NEW_CLOUDS[name](monkeypatch)
as (provider, make_spec)``, where ``make_spec(user)`` is a launch spec for a cheap
catalog offer of that cloud."""

from __future__ import annotations

import contextlib

from cloudhop.spawner.catalog import catalog_offers
from cloudhop.spawner.offers import matching
from tests.cloudkit import spec_for

FAST = {"status_cache_seconds": 0, "retry_base_delay": 0.01}


def cheapest_in_catalog(provider: str, region: str, gpu: str, count: int):
    found = matching(catalog_offers(provider), provider=provider, region=region, gpu=gpu, gpu_count=count)
    return min(found, key=lambda o: o.price_hour)


@contextlib.asynccontextmanager
async def lambda_cloud(monkeypatch):
    from cloudhop.spawner.providers.lambda_cloud import LambdaProvider
    from tests.fakes.lambda_api import FakeLambda

    fake = FakeLambda(key="contract-key")
    url = fake.start()
    monkeypatch.setenv("LAMBDA_API_KEY", "contract-key")
    offer = cheapest_in_catalog("lambda", "us-east-1", "A10", 1)
    try:
        yield (LambdaProvider(api_endpoint=url + "/api/v1", ssh_key_name="k", **FAST),
               lambda user: spec_for(offer, user=user))
    finally:
        fake.stop()


AZURE_SUBNET = ("/subscriptions/sub-test/resourceGroups/rg-test/providers/Microsoft.Network/"
                "virtualNetworks/vnet/subnets/default")


@contextlib.asynccontextmanager
async def azure(monkeypatch):
    from cloudhop.spawner.providers.azure import AzureProvider
    from tests.fakes.azure_api import FakeAzure

    fake = FakeAzure()
    url = fake.start()
    offer = cheapest_in_catalog("azure", "eastus", "T4", 1)
    try:
        yield (AzureProvider(api_endpoint=url, anonymous_credentials=True, subscription_id="sub-test",
                             resource_group="rg-test", subnet_id=AZURE_SUBNET, poll_seconds=0, **FAST),
               lambda user: spec_for(offer, user=user))
    finally:
        fake.stop()


@contextlib.asynccontextmanager
async def digitalocean(monkeypatch):
    from cloudhop.spawner.providers.digitalocean import DigitalOceanProvider
    from tests.fakes.digitalocean_api import FakeDigitalOcean

    fake = FakeDigitalOcean(token="contract-token")
    url = fake.start()
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", "contract-token")
    offer = cheapest_in_catalog("digitalocean", "tor1", "H100", 1)
    try:
        yield DigitalOceanProvider(api_endpoint=url, **FAST), lambda user: spec_for(offer, user=user)
    finally:
        fake.stop()


NEW_CLOUDS = {"lambda": lambda_cloud, "azure": azure, "digitalocean": digitalocean}
