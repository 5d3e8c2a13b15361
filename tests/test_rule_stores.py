"""The RuleStore contract (spawner/providers/ray_firewall.py), run against each cloud's
store through the same doubles as its provider's tests: AWS on moto, GCP and OCI on
their local API fakes with the real SDKs, Azure, Lambda Cloud, DigitalOcean and Yandex Cloud on their
local API doubles. What the sweep builds on: ``ensure`` makes a
cluster's rule once and finds it again, ``list`` finds a hub's rules and only those,
``delete`` of a rule already gone is fine."""

from __future__ import annotations

import time

import pytest
from moto import mock_aws

from cloudhop.spawner.providers.base import TAG_HUB, TAG_SERVER, TAG_USER
from cloudhop.spawner.providers.ray_firewall import CLUSTER_TAG, RayRule, RuleStore
from tests.cloudkit import HUB_ID
from tests.fakes.gcp_compute import FakeCompute
from tests.fakes.oci_api import FakeOCI

SUBNET = "ocid1.subnet.oc1.eu-amsterdam-1.aaaatest"


@pytest.fixture(params=["aws", "gcp", "oci", "azure", "lambda", "digitalocean", "yandex"])
def cloud(request, monkeypatch, oci_config):
    """(the cloud's RuleStore, the place its rules are in)."""
    if request.param == "aws":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        from cloudhop.spawner.providers.aws import AWSProvider

        with mock_aws():
            yield AWSProvider(regions=["us-east-1"]).ray_rules.store, "us-east-1"
    elif request.param == "gcp":
        from cloudhop.spawner.providers.gcp import GCPProvider

        fake = FakeCompute()
        url = fake.start()
        yield GCPProvider(api_endpoint=url, anonymous_credentials=True, project="p").ray_rules.store, "us-central1-a"
        fake.stop()
    elif request.param == "azure":
        from cloudhop.spawner.providers.azure import AzureProvider
        from tests.fakes.azure_api import FakeAzure
        from tests.new_clouds import AZURE_SUBNET

        fake = FakeAzure()
        url = fake.start()
        yield AzureProvider(api_endpoint=url, anonymous_credentials=True, subscription_id="sub-test",
                            resource_group="rg-test", subnet_id=AZURE_SUBNET, poll_seconds=0).ray_rules.store, "eastus"
        fake.stop()
    elif request.param == "lambda":
        from cloudhop.spawner.providers.lambda_cloud import LambdaProvider
        from tests.fakes.lambda_api import FakeLambda

        fake = FakeLambda(key="rules-key")
        url = fake.start()
        monkeypatch.setenv("LAMBDA_API_KEY", "rules-key")
        yield LambdaProvider(api_endpoint=url + "/api/v1").ray_rules.store, "us-east-1"
        fake.stop()
    elif request.param == "digitalocean":
        from cloudhop.spawner.providers.digitalocean import DigitalOceanProvider
        from tests.fakes.digitalocean_api import FakeDigitalOcean

        fake = FakeDigitalOcean(token="rules-token")
        url = fake.start()
        monkeypatch.setenv("DIGITALOCEAN_TOKEN", "rules-token")
        yield DigitalOceanProvider(api_endpoint=url).ray_rules.store, "tor1"
        fake.stop()
    elif request.param == "yandex":
        from cloudhop.spawner.providers.yandex import YandexProvider
        from tests.fakes.yandex_api import FakeYandex

        fake = FakeYandex(iam_token="rules-iam-token")
        url = fake.start()
        monkeypatch.setenv("YC_IAM_TOKEN", "rules-iam-token")
        yield YandexProvider(api_endpoint=url, folder_id=fake.folder, poll_seconds=0).ray_rules.store, "ru-central1-a"
        fake.stop()
    else:
        from cloudhop.spawner.providers.oci import OCIProvider

        fake = FakeOCI()
        url = fake.start()
        provider = OCIProvider(config_file=str(oci_config / "config"), api_endpoint=url, subnet_id=SUBNET,
                               regions=["eu-amsterdam-1"])
        yield provider.ray_rules.store, "eu-amsterdam-1"
        fake.stop()


def cluster_tags(cluster: str, hub: str = HUB_ID) -> dict:
    """The tags of a Ray cluster's node, as a provider passes them to ``ensure``."""
    return {TAG_HUB: hub, TAG_USER: "ada", TAG_SERVER: "gpu", CLUSTER_TAG: cluster}


def test_ensure_makes_one_rule_per_cluster_and_finds_it_again(cloud):
    store, where = cloud
    assert isinstance(store, RuleStore)
    assert store.list(where, HUB_ID) == []
    first = store.ensure(where, cluster_tags("spawn1"))
    assert store.ensure(where, cluster_tags("spawn1")) == first  # idempotent
    [rule] = store.list(where, HUB_ID)
    assert (rule.id, rule.cluster) == (first, "spawn1")
    # the cloud's creation time (AWS keeps it in a tag), recent; None only if the cloud does not say
    assert rule.created is None or abs(time.time() - rule.created) < 600


def test_list_finds_each_cluster_of_the_hub_and_no_other_hubs(cloud):
    store, where = cloud
    a = store.ensure(where, cluster_tags("spawn-a"))
    b = store.ensure(where, cluster_tags("spawn-b"))
    other = store.ensure(where, cluster_tags("elsewhere", hub="hub-2"))
    assert len({a, b, other}) == 3
    assert sorted((r.id, r.cluster) for r in store.list(where, HUB_ID)) == sorted([(a, "spawn-a"), (b, "spawn-b")])
    assert [(r.id, r.cluster) for r in store.list(where, "hub-2")] == [(other, "elsewhere")]


def test_delete_removes_the_rule_and_a_missing_one_is_fine(cloud):
    store, where = cloud
    rule_id = store.ensure(where, cluster_tags("spawn2"))
    [rule] = store.list(where, HUB_ID)
    store.delete(where, rule)
    assert store.list(where, HUB_ID) == []
    store.delete(where, rule)  # gone already: no error
    store.delete(where, RayRule(rule_id, "spawn2"))
    assert store.list(where, HUB_ID) == []
