"""Each offer of a spawn's failover list launches under its own request id: providers
make their idempotency tokens (Compute's ``requestId``, EC2's ``ClientToken``, OCI's
``opc-retry-token``) and their find-before-create lookup from it, so two offers of one
provider sharing an id would get the first offer's answer instead of being tried."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
from traitlets.config import Config

from cloudhop.spawner import CloudhopSpawner
from cloudhop.spawner.failover import launch_id
from cloudhop.spawner.providers.base import TAG_REQUEST
from tests.cloudkit import OFFERS, cheapest

L4_SMALL = cheapest("gcp", "us-central1", "L4", 1)  # g2-standard-4
L4_LARGER = next(o for o in OFFERS if o.instance_type == "g2-standard-8")


def test_the_same_offer_gets_the_same_id_and_other_offers_other_ids():
    assert launch_id("spawn1", L4_SMALL) == launch_id("spawn1", dataclasses.replace(L4_SMALL, price_hour=9.0))
    others = [
        L4_LARGER,  # same provider, region and zone, other instance type
        dataclasses.replace(L4_SMALL, region="us-east4"),
        dataclasses.replace(L4_SMALL, gpu_count=2),
        dataclasses.replace(L4_SMALL, provider="aws"),
    ]
    ids = {launch_id("spawn1", L4_SMALL)} | {launch_id("spawn1", o) for o in others}
    ids.add(launch_id("spawn1", L4_SMALL, spot=True))
    ids.add(launch_id("spawn2", L4_SMALL))
    assert len(ids) == len(others) + 3
    # the id is a label value on every cloud: short, lowercase letters, digits and '-'
    rid = launch_id("0123456789abcdef0123456789abcdef-ray-w12", L4_SMALL, spot=True)
    assert rid.startswith("0123456789abcdef0123456789abcdef-ray-w12-") and len(rid) <= 63
    assert rid == rid.lower()


def gcp_spawner(compute) -> CloudhopSpawner:
    c = Config()
    c.CloudhopSpawner.providers = ["gcp"]
    c.GCPProvider.api_endpoint = compute.url
    c.GCPProvider.anonymous_credentials = True
    c.GCPProvider.project = "cloudhop-test"
    c.GCPProvider.retry_base_delay = 0.01
    c.Catalog.use_check = False
    s = CloudhopSpawner(config=c, user=SimpleNamespace(name="ada", url="/user/ada/", escaped_name="ada"),
                        node_poll_interval=0.01)
    s.get_env = lambda: {"JUPYTERHUB_API_URL": "http://hub.example.org/hub/api"}
    return s


async def test_a_second_offer_in_the_same_zone_is_really_tried(compute):
    """g2-standard-4 has no capacity in us-central1-a; the next offer, g2-standard-8 in the
    same zone, must send its own insert and land, not replay the first one's failure."""
    s = gcp_spawner(compute)
    s.user_options = {"provider": "gcp", "region": "us-central1", "zone": "us-central1-a",
                      "gpu": "L4", "gpu_count": 1}
    compute.script("insert", "capacity", None)

    url = await s.start()

    tried = [(a["offer"], a["state"]) for a in s.attempts]
    assert tried == [("gcp/us-central1/g2-standard-4", "failed"), ("gcp/us-central1/g2-standard-8", "launched")]
    assert s.attempts[0]["reason"] == "capacity"
    [((_, zone, _), inst)] = compute.instances.items()
    assert zone == "us-central1-a" and inst["machineType"].endswith("/machineTypes/g2-standard-8")
    assert s.node.id.startswith("us-central1-a/") and url.startswith("http://10.128.")
    # two inserts with two requestIds, one per offer
    assert compute.count("POST", "/instances$") == 2 and len(compute.request_ids) == 2
    # the node carries the second offer's launch id, derived from the same spawn id
    request_id = s.node.tags[TAG_REQUEST]
    spawn_id = request_id.rsplit("-", 1)[0]
    assert request_id == launch_id(spawn_id, s.offer, spot=False)
    assert request_id != launch_id(spawn_id, dataclasses.replace(s.offer, instance_type="g2-standard-4"))
