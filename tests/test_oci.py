"""The OCI provider: the real oci SDK clients against a local fake of the Core and
Identity APIs (tests/fakes/oci_api.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import base64

import pytest
import traitlets

from cloudhop.spawner.providers.base import (
    RUNNING,
    TAG_HUB,
    TAG_REQUEST,
    TAG_USER,
    TERMINATED,
    CapacityError,
    QuotaError,
    TransientError,
)
from cloudhop.spawner.providers.oci import OCIProvider, catalog_ad
from cloudhop.spawner.ray import CLUSTER_TAG, WORKER_ROLE
from tests.cloudkit import HUB_ID, cheapest, spec_for
from cloudhop.spawner.offers import Offer
from tests.fakes.oci_api import AD_PREFIX, FakeOCI

TENANCY = "ocid1.tenancy.oc1..aaaatest"
SUBNET = "ocid1.subnet.oc1.eu-amsterdam-1.aaaatest"


@pytest.fixture
def api():
    fake = FakeOCI()
    fake.url = fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def provider(api, oci_config):
    return OCIProvider(config_file=str(oci_config / "config"), service_endpoint=api.url,
                       subnet_id=SUBNET, regions=["eu-amsterdam-1"], retry_base_delay=0.01,
                       status_cache_seconds=0)


async def until_running(provider, node_id):
    """Poll as the spawner does: the fake's instances boot on the next read."""
    for _ in range(5):
        node = await provider.status(node_id)
        if node.state == RUNNING:
            return node
    return node


def only(api):
    [inst] = api.instances.values()
    return inst


async def test_launch_cheapest_a10_in_amsterdam(provider, api):
    offer = cheapest("oci", "eu-amsterdam-1", "A10", 1)
    assert offer.instance_type == "VM.GPU.A10.1"
    spec = spec_for(offer, user="alice", server="gpu")
    node = await provider.launch(spec)
    inst = only(api)
    assert inst["shape"] == "VM.GPU.A10.1"
    assert inst["availabilityDomain"] == "Uocm:EU-AMSTERDAM-1-AD-1"
    assert inst["compartmentId"] == TENANCY
    assert inst["freeformTags"][TAG_USER] == "alice" and inst["freeformTags"][TAG_HUB] == HUB_ID
    assert inst["freeformTags"][TAG_REQUEST] == spec.request_id
    assert inst["sourceDetails"]["imageId"].endswith("gpuimage2")  # the GPU image, not the newer plain one
    assert inst["preemptibleInstanceConfig"] is None
    user_data = base64.b64decode(inst["metadata"]["user_data"]).decode()
    assert "--gpus all" in user_data and "JUPYTERHUB_API_TOKEN=server-own-token-123" in user_data
    assert "key.pem" not in user_data and "fingerprint" not in user_data and TENANCY not in user_data
    assert node.id == f"eu-amsterdam-1/{inst['id']}"
    status = await until_running(provider, node.id)
    assert status.state == RUNNING and status.ip.startswith("10.0.0.")
    assert status.port == 8888


async def test_preemptible_when_spot(provider, api):
    offer = cheapest("oci", "eu-amsterdam-1", "A10", 1)
    node = await provider.launch(spec_for(offer, spot=True))
    cfg = only(api)["preemptibleInstanceConfig"]
    assert cfg["preemptionAction"] == {"type": "TERMINATE", "preserveBootVolume": False}
    assert node.info["spot"] is True


async def test_launch_is_idempotent(provider, api):
    spec = spec_for(cheapest("oci", "eu-amsterdam-1", "A10", 1))
    a = await provider.launch(spec)
    b = await provider.launch(spec)
    assert a.id == b.id and len(api.instances) == 1


async def test_status_polls_share_one_list_call(provider, api):
    offer = cheapest("oci", "eu-amsterdam-1", "A10", 1)
    nodes = [await provider.launch(spec_for(offer, user=u)) for u in "abc"]
    for n in nodes:
        await until_running(provider, n.id)  # learns the IPs once
    provider.status_cache_seconds = 60
    provider._cache.clear()
    before = api.count("GET", r"/instances$")
    vnics = api.count("GET", r"/vnics/")
    seen = await asyncio.gather(*[provider.status(n.id) for n in nodes for _ in range(5)])
    # one ListInstances (two pages of the fake), no more VNIC lookups
    assert api.count("GET", r"/instances$") - before == 2
    assert api.count("GET", r"/vnics/") == vnics
    assert {n.state for n in seen} == {RUNNING}


async def test_terminate_is_confirmed_and_idempotent(provider, api):
    spec = spec_for(cheapest("oci", "eu-amsterdam-1", "A10", 1))
    node = await provider.launch(spec)
    await provider.terminate(node.id)
    assert only(api)["lifecycleState"] in ("TERMINATING", "TERMINATED")
    await provider.terminate(node.id)
    assert (await provider.status(node.id)).state in ("stopping", TERMINATED)
    assert await provider.list_nodes({TAG_REQUEST: spec.request_id}) == []


async def test_list_nodes_by_tags(provider):
    offer = cheapest("oci", "eu-amsterdam-1", "A10", 1)
    a = await provider.launch(spec_for(offer, user="alice"))
    for u in ("bob", "carol"):
        await provider.launch(spec_for(offer, user=u))
    assert [n.id for n in await provider.list_nodes({TAG_HUB: HUB_ID, TAG_USER: "alice"})] == [a.id]
    assert len(await provider.list_nodes({TAG_HUB: HUB_ID})) == 3


async def test_out_of_host_capacity_fails_fast(provider, api):
    offer = cheapest("oci", "eu-amsterdam-1", "A10", 1)
    api.script("launch", "capacity")
    with pytest.raises(CapacityError) as info:
        await provider.launch(spec_for(offer))
    assert "Out of host capacity" in str(info.value)
    assert api.count("POST", r"/instances$") == 1  # the SDK's retry strategy is off for it
    assert info.value.offer == offer and info.value.__cause__ is not None
    assert api.instances == {}


async def test_limit_exceeded_is_quota(provider, api):
    api.script("launch", "quota")
    with pytest.raises(QuotaError):
        await provider.launch(spec_for(cheapest("oci", "eu-amsterdam-1", "A10", 1)))
    assert api.count("POST", r"/instances$") == 1


async def test_throttling_and_5xx_are_retried(provider, api):
    api.script("launch", 429, 503)
    await provider.launch(spec_for(cheapest("oci", "eu-amsterdam-1", "A10", 1)))
    assert api.count("POST", r"/instances$") == 3 and len(api.instances) == 1


async def test_a_list_answered_with_throttling_or_5xx_is_retried_by_the_sdk(provider, api):
    node = await provider.launch(spec_for(cheapest("oci", "eu-amsterdam-1", "A10", 1)))
    before = api.count("GET", r"/instances$")
    api.script("list", 503, 429)
    assert (await provider.status(node.id)).id == node.id
    assert api.count("GET", r"/instances$") - before == 3, "the OCI SDK's retry strategy, not a failure"


async def test_throttling_forever_is_transient(provider, api):
    provider.launch_attempts = 2
    api.script("launch", 429, 429, 429)
    with pytest.raises(TransientError):
        await provider.launch(spec_for(cheapest("oci", "eu-amsterdam-1", "A10", 1)))


async def test_catalog_check_lists_shapes_per_ad(provider, api):
    api.shapes = {"Uocm:EU-AMSTERDAM-1-AD-1": ["VM.GPU.A10.1", "VM.Standard.E4.Flex"]}
    offers = [cheapest("oci", "eu-amsterdam-1", "A10", 1), cheapest("oci", "eu-amsterdam-1", "A10", 2)]
    assert await provider.check_catalog(offers) == [
        ("VM.GPU.A10.1", "eu-amsterdam-1", ("eu-amsterdam-1-AD-1",))]
    # the catalog spells some regions' domains in capitals: the answer keeps its spelling
    upper = [dataclasses.replace(offers[0], zones=("EU-AMSTERDAM-1-AD-1",))]
    assert (await provider.check_catalog(upper))[0][2] == ("EU-AMSTERDAM-1-AD-1",)


async def test_missing_config_is_a_reason(tmp_path):
    reason = await OCIProvider(config_file=str(tmp_path / "nope"), subnet_id=SUBNET).check_available()
    assert reason and "OCI" in reason and "config_file" in reason


async def test_missing_subnet_is_a_reason(oci_config):
    reason = await OCIProvider(config_file=str(oci_config / "config")).check_available()
    assert "subnet_id" in reason


def test_catalog_ad_spelling():
    assert catalog_ad("Uocm:EU-AMSTERDAM-1-AD-1") == "eu-amsterdam-1-AD-1"


def test_bad_auth_names_the_option():
    with pytest.raises(traitlets.TraitError, match="auth"):
        OCIProvider(auth="password")


# -- Ray clusters: a network security group per cluster ----------------------------------


def ray_spec(offer, cluster, **kw):
    """A spec of one node of Ray cluster ``cluster`` (the head's notebook node by default)."""
    spec = spec_for(offer, **kw)
    return dataclasses.replace(spec, tags={**spec.tags, CLUSTER_TAG: cluster})


def nsgs_of(api, node):
    return api.instances[node.id.split("/", 1)[1]]["_nsgs"]


async def test_a_ray_clusters_nodes_share_an_nsg_open_to_rays_ports_from_itself(provider, api):
    offer = cheapest("oci", "eu-amsterdam-1", "A10", 1)
    head = await provider.launch(ray_spec(offer, "spawn1-oci", user="ada", server="gpu"))
    workers = await asyncio.gather(*[
        provider.launch(ray_spec(offer, "spawn1-oci", user="ada", server="gpu", role=WORKER_ROLE))
        for _ in range(3)])
    [nsg] = api.nsgs.values()
    assert nsg["vcnId"] == api.vcn and nsg["compartmentId"] == TENANCY
    assert nsg["freeformTags"] == {TAG_HUB: HUB_ID, TAG_USER: "ada", "cloudhop-server": "gpu",
                                   CLUSTER_TAG: "spawn1-oci"}
    ingress = [r for r in nsg["_rules"] if r["direction"] == "INGRESS"]
    assert [(r["protocol"], r["source"], r["sourceType"], r["tcpOptions"]["destinationPortRange"])
            for r in ingress] == [("6", nsg["id"], "NETWORK_SECURITY_GROUP", {"min": 6379, "max": 6506})]
    for node in [head, *workers]:
        assert nsgs_of(api, node) == [nsg["id"]]
    # the VNIC the hub reads addresses from is in the group too
    await until_running(provider, head.id)
    assert api.vnic(f"ocid1.vnic.oc1.{only_n(api, head)}")[1]["nsgIds"] == [nsg["id"]]
    assert "key.pem" not in repr(nsg) and "fingerprint" not in repr(nsg)


def only_n(api, node):
    return api.instances[node.id.split("/", 1)[1]]["_n"]


async def test_a_plain_notebook_gets_no_nsg(provider, api):
    node = await provider.launch(spec_for(cheapest("oci", "eu-amsterdam-1", "A10", 1)))
    assert api.nsgs == {} and nsgs_of(api, node) == []
    assert api.count("POST", "networkSecurityGroups") == 0


async def test_the_nsg_goes_with_the_clusters_last_node(provider, api):
    offer = cheapest("oci", "eu-amsterdam-1", "A10", 1)
    head = await provider.launch(ray_spec(offer, "spawn3-oci"))
    worker = await provider.launch(ray_spec(offer, "spawn3-oci", role=WORKER_ROLE))
    await provider.launch(ray_spec(offer, "other-oci", user="bob"))
    await provider.terminate(worker.id)
    assert len(api.nsgs) == 2  # the head still runs
    await provider.terminate(head.id)
    assert [g["freeformTags"][CLUSTER_TAG] for g in api.nsgs.values()] == ["other-oci"]
    await provider.terminate(head.id)  # again: no error


async def test_an_nsg_still_in_use_is_deleted_once_oci_lets_go(provider, api):
    provider.ray_rules.retry_delay = 0.01
    node = await provider.launch(ray_spec(cheapest("oci", "eu-amsterdam-1", "A10", 1), "spawn4-oci"))
    api.script("delete_nsg", 409, 409)  # the VNIC is still detaching
    await provider.terminate(node.id)
    assert len(api.nsgs) == 1
    await provider.ray_rules.settle()
    assert api.nsgs == {}


async def test_an_nsg_a_crashed_hub_left_goes_with_the_next_terminate(provider, api):
    offer = cheapest("oci", "eu-amsterdam-1", "A10", 1)
    await provider.launch(ray_spec(offer, "spawn5-oci"))
    spec = ray_spec(offer, "hub2-cluster", user="eve")
    await provider.launch(dataclasses.replace(spec, tags={**spec.tags, TAG_HUB: "hub-2"}))
    for inst in api.instances.values():  # the hubs die after their instances went
        inst["lifecycleState"] = "TERMINATED"
    provider.ray_rules.grace = 0  # old enough not to belong to a launch in flight
    plain = await provider.launch(spec_for(offer))
    await provider.terminate(plain.id)  # any terminate of this hub (the reaper's too) sweeps
    assert [g["freeformTags"][TAG_HUB] for g in api.nsgs.values()] == ["hub-2"]


async def test_a_ray_launch_without_capacity_leaves_no_nsg(provider, api):
    api.script("launch", "capacity")
    with pytest.raises(CapacityError):
        await provider.launch(ray_spec(cheapest("oci", "eu-amsterdam-1", "A10", 1), "spawn6-oci"))
    assert api.instances == {} and api.nsgs == {}


@pytest.mark.parametrize("name, value", [
    ("boot_volume_gb", 10), ("boot_volume_gb", 40000), ("subnet_id", "subnet-0abc"),
    ("compartment_id", "my-compartment"), ("image_id", "Oracle-Linux-8"), ("service_endpoint", "127.0.0.1:9"),
])
def test_bad_settings_name_the_option(name, value):
    with pytest.raises(traitlets.TraitError, match=rf"^c\.OCIProvider\.{name} must"):
        OCIProvider(**{name: value})
    assert OCIProvider(boot_volume_gb=50, subnet_id=SUBNET).boot_volume_gb == 50


async def test_a_domain_without_capacity_moves_the_launch_to_the_next(oci_config):
    api = FakeOCI(region="us-ashburn-1")
    # the region's own spelling of its domains, as ListAvailabilityDomains answers
    api.ads = [f"{AD_PREFIX}:US-ASHBURN-AD-{n}" for n in (1, 2, 3)]
    api.url = api.start()
    try:
        provider = OCIProvider(config_file=str(oci_config / "config"), service_endpoint=api.url,
                               subnet_id="ocid1.subnet.oc1.us-ashburn-1.aaaatest", regions=["us-ashburn-1"],
                               retry_base_delay=0.01, status_cache_seconds=0)
        # the shipped catalog's row, three domains
        offer = Offer("oci", "us-ashburn-1", "VM.GPU.A10.1", "A10", 1, 24.0, 30, 240.0, 2.0, None,
                      ("US-ASHBURN-AD-1", "US-ASHBURN-AD-2", "US-ASHBURN-AD-3"))
        api.script("launch", "capacity")
        node = await provider.launch(spec_for(offer))
        [inst] = api.instances.values()
        assert inst["availabilityDomain"] == api.ads[1], "AD-1 had no capacity: AD-2 took it"
        assert api.count("POST", r"/instances$") == 2 and node.id.endswith(inst["id"])

        api.script("launch", "capacity", "capacity", "capacity")
        with pytest.raises(CapacityError, match="Out of host capacity"):
            await provider.launch(spec_for(offer, request_id="req-full"))
        assert api.count("POST", r"/instances$") == 5, "each of the three domains was tried once"
    finally:
        api.stop()
