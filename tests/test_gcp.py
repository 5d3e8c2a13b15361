"""The GCP provider: the real google-cloud-compute client (REST transport) against a
local fake of the Compute API (tests/fakes/gcp_compute.py)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import traitlets

from cloudhop.spawner.providers.base import (
    RUNNING,
    TAG_HUB,
    TAG_REQUEST,
    TAG_USER,
    TERMINATED,
    CapacityError,
    CredentialsError,
    QuotaError,
    TransientError,
)
from cloudhop.spawner.providers.gcp import GCPProvider
from cloudhop.spawner.ray import CLUSTER_TAG, WORKER_ROLE
from tests.cloudkit import HUB_ID, cheapest, spec_for

PROJECT = "cloudhop-test"


@pytest.fixture
def provider(compute, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hub-aws-secret-must-not-leak")
    return GCPProvider(api_endpoint=compute.url, anonymous_credentials=True, project=PROJECT,
                       retry_base_delay=0.01)


def only_instance(compute):
    [(key, inst)] = compute.instances.items()
    return key, inst


async def test_launch_cheapest_l4_in_us_central1(provider, compute):
    offer = cheapest("gcp", "us-central1", "L4", 1)
    assert offer.instance_type == "g2-standard-4"
    spec = spec_for(offer, user="Alice.Smith@example.org", server="gpu")
    node = await provider.launch(spec)
    (project, zone, name), inst = only_instance(compute)
    assert (project, zone) == (PROJECT, "us-central1-a")
    assert inst["machineType"].endswith("zones/us-central1-a/machineTypes/g2-standard-4")
    assert node.id == f"us-central1-a/{name}" and node.region == "us-central1"
    # label values must be lowercase; the exact owner is in the tags metadata
    assert inst["labels"][TAG_HUB] == HUB_ID
    assert inst["labels"][TAG_USER].startswith("h-")
    assert node.tags[TAG_USER] == "Alice.Smith@example.org"
    assert inst["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert "guestAccelerators" not in inst  # G2 carries its L4
    meta = {i["key"]: i["value"] for i in inst["metadata"]["items"]}
    user_data = meta["user-data"]
    assert user_data.startswith("#cloud-config") and "--gpus all" in user_data
    assert "JUPYTERHUB_API_TOKEN=server-own-token-123" in user_data
    assert "hub-aws-secret-must-not-leak" not in user_data and "AWS_" not in user_data
    status = await provider.status(node.id)
    assert status.state == RUNNING and status.ip.startswith("10.128.") and status.port == 8888


async def test_t4_attaches_to_an_n1_host(provider, compute):
    offer = cheapest("gcp", "us-central1", "T4", 1)
    await provider.launch(spec_for(offer))
    (_, zone, _), inst = only_instance(compute)
    assert zone == "us-central1-b"
    assert inst["machineType"].endswith("/machineTypes/n1-standard-8")
    [acc] = inst["guestAccelerators"]
    assert acc["acceleratorType"].endswith("acceleratorTypes/nvidia-tesla-t4")
    assert acc["acceleratorCount"] == 1


async def test_spot_uses_the_spot_provisioning_model(provider, compute):
    node = await provider.launch(spec_for(cheapest("gcp", "us-central1", "L4", 1, spot=True), spot=True))
    _, inst = only_instance(compute)
    assert inst["scheduling"]["provisioningModel"] == "SPOT"
    assert inst["scheduling"]["instanceTerminationAction"] == "DELETE"
    assert inst["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert inst["scheduling"]["automaticRestart"] is False
    assert node.info["spot"] is True


async def test_launch_is_idempotent(provider, compute):
    spec = spec_for(cheapest("gcp", "us-central1", "L4", 1))
    a = await provider.launch(spec)
    b = await provider.launch(spec)
    assert a.id == b.id and len(compute.instances) == 1


async def test_status_polls_share_one_list_call(provider, compute):
    offer = cheapest("gcp", "us-central1", "L4", 1)
    nodes = [await provider.launch(spec_for(offer, user=u)) for u in ("a", "b", "c")]
    before = compute.count("GET", "aggregated/instances")
    await asyncio.gather(*[provider.status(n.id) for n in nodes for _ in range(5)])
    assert compute.count("GET", "aggregated/instances") - before == 1


async def test_a_list_answered_with_throttling_or_5xx_is_retried_by_the_client(provider, compute):
    node = await provider.launch(spec_for(cheapest("gcp", "us-central1", "L4", 1)))
    before = compute.count("GET", "aggregated/instances")
    compute.script("aggregated", 503, 429)
    assert (await provider.status(node.id)).id == node.id
    assert compute.count("GET", "aggregated/instances") - before == 3, "google-api-core's Retry, not a failure"


async def test_terminate_is_confirmed_and_idempotent(provider, compute):
    spec = spec_for(cheapest("gcp", "us-central1", "L4", 1))
    node = await provider.launch(spec)
    await provider.terminate(node.id)
    assert compute.count("DELETE", "/instances/") == 1
    await provider.terminate(node.id)
    assert compute.instances == {}
    assert (await provider.status(node.id)).state == TERMINATED
    assert await provider.list_nodes({TAG_REQUEST: spec.request_id}) == []


async def test_list_nodes_by_tags(provider):
    offer = cheapest("gcp", "us-central1", "L4", 1)
    a = await provider.launch(spec_for(offer, user="alice"))
    await provider.launch(spec_for(offer, user="bob"))
    assert [n.id for n in await provider.list_nodes({TAG_HUB: HUB_ID, TAG_USER: "alice"})] == [a.id]
    assert len(await provider.list_nodes({TAG_HUB: HUB_ID})) == 2


async def test_exhausted_zone_moves_to_the_offers_next_zone(provider, compute):
    offer = cheapest("gcp", "us-central1", "L4", 1)
    assert offer.zones == ("us-central1-a", "us-central1-b")
    compute.script("insert", "capacity")
    node = await provider.launch(spec_for(offer))
    assert node.id.startswith("us-central1-b/")
    assert compute.count("POST", r"/zones/us-central1-a/instances$") == 1
    assert [k[1] for k in compute.instances] == ["us-central1-b"]


async def test_every_zone_exhausted_fails_fast(provider, compute):
    offer = cheapest("gcp", "us-central1", "L4", 1)
    compute.script("insert", "capacity", "capacity")
    with pytest.raises(CapacityError) as info:
        await provider.launch(spec_for(offer))
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in str(info.value)
    assert "us-central1-a, us-central1-b" in str(info.value)
    assert compute.count("POST", r"/instances$") == 2  # one per zone, no retries
    assert info.value.offer == offer and info.value.__cause__ is not None
    assert compute.instances == {}


async def test_a_requested_zone_is_the_only_one_tried(provider, compute):
    offer = cheapest("gcp", "us-central1", "L4", 1)
    compute.script("insert", "capacity")
    with pytest.raises(CapacityError):
        await provider.launch(dataclasses.replace(spec_for(offer), zone="us-central1-a"))
    assert compute.count("POST", r"/instances$") == 1


async def test_quota_fails_fast(provider, compute):
    compute.script("insert", "quota")
    with pytest.raises(QuotaError):
        await provider.launch(spec_for(cheapest("gcp", "us-central1", "L4", 1)))
    assert compute.count("POST", r"/instances$") == 1


async def test_5xx_and_429_are_retried(provider, compute):
    compute.script("insert", 503, 429)
    node = await provider.launch(spec_for(cheapest("gcp", "us-central1", "L4", 1)))
    assert compute.count("POST", r"/instances$") == 3
    assert len(compute.instances) == 1 and node.id.endswith(next(iter(compute.instances))[2])


async def test_5xx_forever_is_transient(provider, compute):
    provider.launch_attempts = 2
    compute.script("insert", 503, 503, 503)
    with pytest.raises(TransientError):
        await provider.launch(spec_for(cheapest("gcp", "us-central1", "L4", 1)))


async def test_catalog_check_reads_machine_and_accelerator_types(provider, compute):
    compute.machine_types = {"us-central1-a": ["g2-standard-4", "n1-standard-8"],
                             "us-central1-b": ["n1-standard-8"]}
    compute.accelerator_types = {"us-central1-b": ["nvidia-tesla-t4"]}
    offers = [cheapest("gcp", "us-central1", "L4", 1), cheapest("gcp", "us-central1", "T4", 1),
              cheapest("gcp", "us-central1", "A100", 1)]
    got = await provider.check_catalog(offers)
    assert sorted(got) == [("g2-standard-4", "us-central1", ("us-central1-a",)),
                           ("n1-standard-8+T4x1", "us-central1", ("us-central1-b",))]


async def test_no_credentials_is_a_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    reason = await GCPProvider().check_available()
    assert reason and "GCP" in reason


def test_bad_disk_size_names_the_option():
    with pytest.raises(traitlets.TraitError, match="disk_gb"):
        GCPProvider(disk_gb="big")


# -- Ray clusters: a firewall rule per cluster on its own network tag -------------------


def ray_spec(offer, cluster, **kw):
    """A spec of one node of Ray cluster ``cluster`` (the head's notebook node by default)."""
    spec = spec_for(offer, **kw)
    return dataclasses.replace(spec, tags={**spec.tags, CLUSTER_TAG: cluster})


def network_tags(compute, node):
    zone, name = node.id.split("/")
    return compute.instances[(PROJECT, zone, name)]["tags"]["items"]


async def test_a_ray_clusters_nodes_share_a_rule_from_their_tag_to_their_tag(provider, compute):
    offer = cheapest("gcp", "us-central1", "L4", 1)
    head = await provider.launch(ray_spec(offer, "spawn1-gcp", user="ada"))
    workers = await asyncio.gather(*[provider.launch(ray_spec(offer, "spawn1-gcp", user="ada", role=WORKER_ROLE))
                                     for _ in range(3)])
    [((project, name), fw)] = compute.firewalls.items()
    assert project == PROJECT and compute.count("POST", "/global/firewalls$") == 1
    assert fw["direction"] == "INGRESS"
    assert fw["allowed"] == [{"IPProtocol": "tcp", "ports": ["6379-6506"]}]
    assert fw["sourceTags"] == fw["targetTags"] == [name] and not fw.get("sourceRanges")
    assert fw["network"].endswith(f"/projects/{PROJECT}/global/networks/default")
    for node in [head, *workers]:
        assert network_tags(compute, node) == ["cloudhop-node", name]
    text = repr(fw)
    assert HUB_ID in text and "hub-aws-secret-must-not-leak" not in text and "server-own-token" not in text


async def test_a_plain_notebook_gets_no_rule(provider, compute):
    node = await provider.launch(spec_for(cheapest("gcp", "us-central1", "L4", 1)))
    assert compute.firewalls == {} and compute.count("POST", "/global/firewalls") == 0
    assert network_tags(compute, node) == ["cloudhop-node"]


async def test_the_rule_goes_with_the_clusters_last_node(provider, compute):
    offer = cheapest("gcp", "us-central1", "L4", 1)
    head = await provider.launch(ray_spec(offer, "spawn3-gcp"))
    worker = await provider.launch(ray_spec(offer, "spawn3-gcp", role=WORKER_ROLE))
    await provider.launch(ray_spec(offer, "other-gcp", user="bob"))
    await provider.terminate(worker.id)
    assert len(compute.firewalls) == 2  # the head still runs
    await provider.terminate(head.id)
    [(_, fw)] = compute.firewalls.items()
    assert "other-gcp" in fw["description"]  # another server's cluster keeps its rule
    await provider.terminate(head.id)  # again: no error


async def test_a_rule_a_crashed_hub_left_goes_with_the_next_terminate(provider, compute):
    offer = cheapest("gcp", "us-central1", "L4", 1)
    await provider.launch(ray_spec(offer, "spawn5-gcp"))
    other_hub = GCPProvider(api_endpoint=compute.url, anonymous_credentials=True, project=PROJECT)
    spec = ray_spec(offer, "hub2-cluster", user="eve")
    await other_hub.launch(dataclasses.replace(spec, tags={**spec.tags, TAG_HUB: "hub-2"}))
    # both hubs die after their instances went, before they deleted their rules
    compute.instances.clear()
    provider.ray_rules.grace = 0  # old enough not to belong to a launch in flight
    plain = await provider.launch(spec_for(offer))
    await provider.terminate(plain.id)  # any terminate of this hub (the reaper's too) sweeps
    [(_, fw)] = compute.firewalls.items()
    assert "hub-2" in fw["description"]  # another hub's rule is not this hub's to remove


async def test_a_ray_launch_without_capacity_leaves_no_rule(provider, compute):
    compute.script("insert", "capacity", "capacity")
    with pytest.raises(CapacityError):
        await provider.launch(ray_spec(cheapest("gcp", "us-central1", "L4", 1), "spawn6-gcp"))
    assert compute.instances == {} and compute.firewalls == {}


async def test_a_rule_the_credentials_may_not_make_is_a_credentials_error(provider, compute):
    compute.script("firewall_insert", 403)
    with pytest.raises(CredentialsError, match="compute.firewalls.create"):
        await provider.launch(ray_spec(cheapest("gcp", "us-central1", "L4", 1), "spawn7-gcp"))
    assert compute.instances == {}


async def test_a_hub_without_firewall_permissions_still_stops_plain_servers(provider, compute):
    node = await provider.launch(spec_for(cheapest("gcp", "us-central1", "L4", 1)))
    compute.script("firewall_list", 403)  # the sweep after a terminate may not list rules
    await provider.terminate(node.id)
    assert compute.count("DELETE", "/instances/") == 1


@pytest.mark.parametrize("name, value", [("disk_gb", 5), ("disk_gb", -100), ("network_tags", ["Cloudhop Node"]),
                                         ("network", " "), ("image", "")])
def test_bad_settings_name_the_option(name, value):
    with pytest.raises(traitlets.TraitError, match=rf"^c\.GCPProvider\.{name} must"):
        GCPProvider(**{name: value})
    assert GCPProvider(disk_gb=10, network_tags=["cloudhop-node", "gpu"]).disk_gb == 10
