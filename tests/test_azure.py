"""The Azure provider: the real azure-mgmt-compute/-network clients against a local
double of Azure Resource Manager (tests/fakes/azure_api.py)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging

import pytest
import traitlets

from cloudhop.spawner.providers.azure import AzureProvider, vm_name
from cloudhop.spawner.providers.base import (
    RUNNING, TAG_HUB, TAG_REQUEST, TAG_USER, TERMINATED, CapacityError, CredentialsError, QuotaError,
    TransientError,
)
from cloudhop.spawner.ray import CLUSTER_TAG, WORKER_ROLE
from tests.cloudkit import HUB_ID, spec_for
from tests.fakes.azure_api import FakeAzure
from tests.new_clouds import AZURE_SUBNET, cheapest_in_catalog


def t4():
    return cheapest_in_catalog("azure", "eastus", "T4", 1)


@pytest.fixture
def api():
    fake = FakeAzure()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def provider(api):
    return AzureProvider(api_endpoint=api.url, anonymous_credentials=True, subscription_id="sub-test",
                         resource_group="rg-test", subnet_id=AZURE_SUBNET, poll_seconds=0,
                         retry_base_delay=0.01, status_cache_seconds=0)


def ray_spec(offer, cluster, **kw):
    spec = spec_for(offer, **kw)
    return dataclasses.replace(spec, tags={**spec.tags, CLUSTER_TAG: cluster})


async def test_launch_creates_a_tagged_vm_with_its_nic_and_public_ip(provider, api, caplog):
    caplog.set_level(logging.DEBUG)
    offer = t4()
    assert offer.instance_type == "Standard_NC4as_T4_v3"
    spec = spec_for(offer, user="alice", server="gpu")
    node = await provider.launch(spec)
    [vm] = api.live()
    props = vm["properties"]
    assert vm["name"] == vm_name(spec.request_id) and vm["location"] == "eastus"
    assert props["hardwareProfile"]["vmSize"] == "Standard_NC4as_T4_v3"
    assert vm["tags"][TAG_USER] == "alice" and vm["tags"][TAG_HUB] == HUB_ID and vm["tags"][TAG_REQUEST] == spec.request_id
    [nic] = props["networkProfile"]["networkInterfaceConfigurations"]
    assert nic["properties"]["deleteOption"] == "Delete" and props["storageProfile"]["osDisk"]["deleteOption"] == "Delete"
    ipc = nic["properties"]["ipConfigurations"][0]["properties"]
    assert ipc["subnet"]["id"] == AZURE_SUBNET and ipc["publicIPAddressConfiguration"]["properties"]["deleteOption"] == "Delete"
    assert "priority" not in props and "networkSecurityGroup" not in nic["properties"]
    user_data = base64.b64decode(props["osProfile"]["customData"]).decode()
    assert "--gpus all" in user_data and "JUPYTERHUB_API_TOKEN=server-own-token-123" in user_data
    assert props["osProfile"]["linuxConfiguration"]["disablePasswordAuthentication"] is True
    assert "PRIVATE KEY" not in repr(vm) and "AZURE_" not in user_data
    running = await provider.status(node.id)
    assert running.state == RUNNING and running.ip.startswith("192.0.2.") and running.port == 8888
    assert running.info["public_ip"].startswith("20.0.0.")


async def test_spot_is_a_spot_vm_deleted_on_eviction(provider, api):
    await provider.launch(spec_for(cheapest_in_catalog("azure", "eastus", "T4", 1), spot=True))
    [vm] = api.live()
    assert (vm["properties"]["priority"], vm["properties"]["evictionPolicy"]) == ("Spot", "Delete")
    assert vm["properties"]["billingProfile"] == {"maxPrice": -1}


async def test_launch_is_idempotent_and_list_nodes_pages(provider, api):
    spec = spec_for(t4())
    first = await provider.launch(spec)
    assert (await provider.launch(spec)).id == first.id
    await provider.launch(spec_for(t4(), user="bob"))
    await provider.launch(spec_for(t4(), user="carol"))  # three VMs: two pages
    assert [n.id for n in await provider.list_nodes({TAG_REQUEST: spec.request_id})] == [first.id]
    assert len(await provider.list_nodes({TAG_HUB: HUB_ID})) == 3
    assert [n.tags[TAG_USER] for n in await provider.list_nodes({TAG_HUB: HUB_ID, TAG_USER: "bob"})] == ["bob"]


async def test_terminate_deletes_the_vm_its_nic_and_ip(provider, api):
    node = await provider.launch(spec_for(t4()))
    await provider.status(node.id)
    await provider.terminate(node.id)
    await provider.terminate(node.id)
    assert (await provider.status(node.id)).state == TERMINATED
    assert api.vms == {} and api.nics == {} and api.pips == {}


@pytest.mark.parametrize("answer", ["sku", "allocation"])
async def test_no_capacity_fails_fast_and_leaves_no_vm(provider, api, answer):
    api.script("create", answer)
    with pytest.raises(CapacityError, match="SkuNotAvailable|AllocationFailed") as err:
        await provider.launch(spec_for(t4()))
    assert err.value.offer is not None and api.vms == {}
    assert api.count("PUT", "virtualMachines") == 1


async def test_quota_is_a_quota_error(provider, api):
    api.script("create", "quota")
    with pytest.raises(QuotaError):
        await provider.launch(spec_for(t4()))


async def test_throttling_and_5xx_are_retried_then_transient(provider, api):
    api.script("create", 429, 500)
    await provider.launch(spec_for(t4()))
    api.script("create", *([500] * 5))
    with pytest.raises(TransientError):
        await provider.launch(spec_for(t4()))


async def test_the_hubs_azure_secret_reaches_no_vm_log_or_error(provider, api, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "azure-secret-marker-42")
    spec = spec_for(t4())
    spec = dataclasses.replace(spec, env={**spec.env, "AZURE_CLIENT_SECRET": "azure-secret-marker-42"})
    await provider.launch(spec)
    api.script("create", "auth")
    with pytest.raises(CredentialsError) as err:
        await provider.launch(spec_for(t4()))
    assert "refused" in str(err.value)
    seen = repr(api.vms) + repr([r["body"] for r in api.requests]) + caplog.text + str(err.value)
    assert "azure-secret-marker-42" not in seen
    assert "azure-secret-marker-42" not in base64.b64decode(
        api.live()[0]["properties"]["osProfile"]["customData"]).decode()


async def test_missing_settings_and_credentials_are_reasons(monkeypatch):
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    assert "subscription" in await AzureProvider().check_available()
    assert "resource group" in await AzureProvider(subscription_id="s").check_available()
    assert "subnet" in await AzureProvider(subscription_id="s", resource_group="rg").check_available()


async def test_catalog_check_reads_resource_skus(provider, api):
    api.skus = [
        {"resourceType": "virtualMachines", "name": "Standard_NC4as_T4_v3", "locations": ["eastus"], "restrictions": []},
        {"resourceType": "virtualMachines", "name": "Standard_NC40ads_H100_v5", "locations": ["eastus"],
         "restrictions": [{"type": "Location", "values": ["eastus"], "reasonCode": "NotAvailableForSubscription",
                           "restrictionInfo": {"locations": ["eastus"]}}]},
        {"resourceType": "disks", "name": "Premium_LRS", "locations": ["eastus"]},
    ]
    from cloudhop.spawner.catalog import catalog_offers

    found = await provider.check_catalog([o for o in catalog_offers("azure") if o.region == "eastus"])
    assert {t for t, _, _ in found} == {"Standard_NC4as_T4_v3"}


async def test_a_ray_clusters_nics_share_security_groups_closed_to_the_rest(provider, api):
    offer = t4()
    head = await provider.launch(ray_spec(offer, "spawn1-azure", user="ada"))
    await asyncio.gather(*[provider.launch(ray_spec(offer, "spawn1-azure", user="ada", role=WORKER_ROLE))
                           for _ in range(2)])
    [nsg] = api.nsgs.values()
    [asg] = api.asgs.values()
    assert nsg["tags"][CLUSTER_TAG] == "spawn1-azure" and nsg["tags"][TAG_HUB] == HUB_ID
    allow, deny = sorted(nsg["properties"]["securityRules"], key=lambda r: r["properties"]["priority"])
    assert allow["properties"]["destinationPortRange"] == "6379-6506" and allow["properties"]["access"] == "Allow"
    assert allow["properties"]["sourceApplicationSecurityGroups"] == [{"id": asg["id"]}]
    assert deny["properties"]["access"] == "Deny" and deny["properties"]["destinationPortRange"] == "6379-6506"
    for vm in api.live():
        [nic] = vm["properties"]["networkProfile"]["networkInterfaceConfigurations"]
        assert nic["properties"]["networkSecurityGroup"] == {"id": nsg["id"]}
        assert nic["properties"]["ipConfigurations"][0]["properties"]["applicationSecurityGroups"] == [{"id": asg["id"]}]
    plain = await provider.launch(spec_for(offer))
    assert "networkSecurityGroup" not in api.vms[plain.id.split("/")[1]]["properties"]["networkProfile"][
        "networkInterfaceConfigurations"][0]["properties"]
    provider.ray_rules.retry_delay = 0.01
    for node in await provider.list_nodes({CLUSTER_TAG: "spawn1-azure"}):
        if node.id != head.id:
            await provider.terminate(node.id)
    assert len(api.nsgs) == 1
    await provider.terminate(head.id)
    await provider.ray_rules.settle()  # once the NICs are gone
    assert api.nsgs == {} and api.asgs == {}


async def test_a_ray_launch_without_capacity_leaves_no_security_group(provider, api):
    api.script("create", "allocation")
    with pytest.raises(CapacityError):
        await provider.launch(ray_spec(t4(), "spawn2-azure"))
    assert api.nsgs == {} and api.asgs == {} and api.vms == {}


@pytest.mark.parametrize("name, value", [("subnet_id", "subnet-1"), ("disk_gb", 10), ("api_endpoint", "azure")])
def test_bad_settings_name_the_option(name, value):
    with pytest.raises(traitlets.TraitError, match=rf"^c\.AzureProvider\.{name}"):
        AzureProvider(**{name: value})
