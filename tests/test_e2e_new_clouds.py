"""Through a real hub with Lambda Cloud, Azure and DigitalOcean enabled, each against its
local API double (the real clients in the hub process): a spawn on ``auto`` whose
cheapest offers fail for want of capacity on one cloud lands on the next cloud, the VM
carries its owner and a user-data without the cloud's credential, and stopping the
server deletes it. One hub for every scenario (the suite's time is short)."""

from __future__ import annotations

import base64
import time

import pytest

from cloudhop.spawner.catalog import catalog_offers
from tests.fakes.azure_api import FakeAzure
from tests.fakes.digitalocean_api import FakeDigitalOcean
from tests.fakes.lambda_api import FakeLambda
from tests.new_clouds import AZURE_SUBNET

pytestmark = pytest.mark.e2e

LAMBDA_KEY = "e2e-lambda-key-secret"
DO_TOKEN = "e2e-do-token-secret"
H100x1 = {"provider": "auto", "gpu": "H100", "gpu_count": 1}


def wait_for(check, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"no {what} in {timeout}s")


def offers_of(provider):
    return [o for o in catalog_offers(provider) if o.gpu == "H100" and o.gpu_count == 1]


def test_auto_fails_over_from_a_cloud_without_capacity_to_the_next(hub_factory):
    lam, do, az = FakeLambda(key=LAMBDA_KEY), FakeDigitalOcean(token=DO_TOKEN), FakeAzure()
    urls = lam.start(), do.start(), az.start()
    try:
        hub = hub_factory(f"""
c.CloudhopSpawner.providers = ["local", "lambda", "azure", "digitalocean"]
c.CloudProvider.hub_connect_url = "https://hub.example.org"
c.CloudProvider.status_cache_seconds = 1
# no snapshot on stop: these VMs never run a server to snapshot (durability has its own tests)
c.CloudhopSpawner.hibernate = False
c.LambdaProvider.api_endpoint = {urls[0] + "/api/v1"!r}
c.LambdaProvider.ssh_key_name = "hub-key"
c.DigitalOceanProvider.api_endpoint = {urls[1]!r}
c.AzureProvider.api_endpoint = {urls[2]!r}
c.AzureProvider.anonymous_credentials = True
c.AzureProvider.subscription_id = "sub-test"
c.AzureProvider.resource_group = "rg-test"
c.AzureProvider.subnet_id = {AZURE_SUBNET!r}
c.AzureProvider.poll_seconds = 0
""", env={"LAMBDA_API_KEY": LAMBDA_KEY, "DIGITALOCEAN_TOKEN": DO_TOKEN})
        hub.ensure_user("carol")
        # the cheapest H100s are Lambda's (every region), then DigitalOcean's, then Azure's
        lambda_offers = offers_of("lambda")
        assert max(o.price_hour for o in lambda_offers) < min(o.price_hour for o in offers_of("digitalocean"))
        assert max(o.price_hour for o in offers_of("digitalocean")) < min(o.price_hour for o in offers_of("azure"))

        # 1. Lambda has no capacity anywhere: the spawn lands on DigitalOcean
        lam.script("launch", *["capacity"] * len(lambda_offers))
        r = hub.api("POST", "/users/carol/server", json=H100x1)
        assert r.status_code in (201, 202), r.text
        [droplet] = wait_for(lambda: list(do.droplets.values()), what="droplet")
        assert droplet["size_slug"] == "gpu-h100x1-80gb"
        assert "cloudhop-user:carol" in droplet["tags"]
        assert "JUPYTERHUB_API_URL=https://hub.example.org/hub/api" in droplet["_user_data"]
        assert DO_TOKEN not in droplet["_user_data"] and LAMBDA_KEY not in droplet["_user_data"]
        assert lam.live() == [] and lam.count("POST", "launch") == len(lambda_offers)
        nodes = wait_for(lambda: ((hub.server_model("carol") or {}).get("state") or {}).get("nodes"),
                         what="node in the server's state")
        assert [n["id"] for n in nodes] == [f"tor1/{droplet['id']}"]
        hub.stop_server("carol")
        wait_for(lambda: not do.droplets, what="deleted droplet")

        # 2. Lambda and DigitalOcean have none: the spawn lands on Azure
        lam.script("launch", *["capacity"] * len(lambda_offers))
        do.script("create", "capacity")
        r = hub.api("POST", "/users/carol/server", json=H100x1)
        assert r.status_code in (201, 202), r.text
        [vm] = wait_for(az.live, what="Azure VM")
        assert vm["properties"]["hardwareProfile"]["vmSize"] == "Standard_NC40ads_H100_v5"
        assert vm["tags"]["cloudhop-user"] == "carol"
        user_data = base64.b64decode(vm["properties"]["osProfile"]["customData"]).decode()
        assert "--gpus all" in user_data and DO_TOKEN not in user_data and LAMBDA_KEY not in user_data
        assert do.droplets == {} and lam.live() == []
        hub.stop_server("carol")
        wait_for(lambda: not az.live(), what="deleted VM")
        log = hub.log()
        assert "Traceback" not in log and LAMBDA_KEY not in log and DO_TOKEN not in log
    finally:
        for fake in (lam, do, az):
            fake.stop()
