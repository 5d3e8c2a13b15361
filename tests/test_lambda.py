"""The Lambda Cloud provider: its real ``requests`` client against a local double of
Lambda's REST API (tests/fakes/lambda_api.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest
import traitlets

from cloudhop.spawner.catalog import catalog_offers
from cloudhop.spawner.offers import matching
from cloudhop.spawner.providers.base import (
    RUNNING, TAG_HUB, TAG_REQUEST, TAG_USER, TERMINATED, CapacityError, CredentialsError, QuotaError,
    TransientError,
)
from cloudhop.spawner.providers.lambda_cloud import LambdaProvider, hub_prefix, instance_name, read_api_key
from cloudhop.spawner.ray import CLUSTER_TAG, WORKER_ROLE
from tests.cloudkit import HUB_ID, spec_for
from tests.fakes.lambda_api import FakeLambda

KEY = "lambda-secret-key-0123456789"


def a10(region="us-east-1"):
    [offer] = matching(catalog_offers("lambda"), provider="lambda", region=region, gpu="A10", gpu_count=1)
    return offer


@pytest.fixture
def api(monkeypatch):
    fake = FakeLambda(key=KEY)
    fake.url = fake.start() + "/api/v1"
    monkeypatch.setenv("LAMBDA_API_KEY", KEY)
    yield fake
    fake.stop()


@pytest.fixture
def provider(api):
    return LambdaProvider(api_endpoint=api.url, ssh_key_name="hub-key", retry_base_delay=0.01,
                          status_cache_seconds=0)


def ray_spec(offer, cluster, **kw):
    spec = spec_for(offer, **kw)
    return dataclasses.replace(spec, tags={**spec.tags, CLUSTER_TAG: cluster})


async def test_launch_names_the_owner_and_sends_user_data_without_the_key(provider, api, caplog):
    caplog.set_level(logging.DEBUG)
    spec = spec_for(a10(), user="alice", server="gpu")
    node = await provider.launch(spec)
    [inst] = api.live()
    assert inst["instance_type"]["name"] == "gpu_1x_a10" and inst["region"]["name"] == "us-east-1"
    assert inst["name"] == instance_name(node.tags) and inst["name"].startswith(hub_prefix(HUB_ID))
    assert len(inst["name"]) <= 64 and inst["ssh_key_names"] == ["hub-key"]
    assert "--gpus all" in inst["_user_data"] and "JUPYTERHUB_API_TOKEN=server-own-token-123" in inst["_user_data"]
    assert node.id == f"us-east-1/{inst['id']}" and node.tags[TAG_USER] == "alice"
    running = await provider.status(node.id)
    assert running.state == RUNNING and running.ip == inst["private_ip"] and running.port == 8888
    # the key goes in the Authorization header only
    sent = repr([{k: v for k, v in r.items() if k != "headers"} for r in api.requests])
    assert KEY not in sent and KEY not in inst["_user_data"] and KEY not in caplog.text
    assert KEY not in repr(running) and "lambda-jupyter-token" not in repr(running)


async def test_launch_is_idempotent_and_a_retried_launch_finds_its_instance(provider, api):
    spec = spec_for(a10())
    first = await provider.launch(spec)
    assert (await provider.launch(spec)).id == first.id
    api.script("launch", 500)  # a retry after a server error looks by name first
    again = LambdaProvider(api_endpoint=api.url, ssh_key_name="hub-key", retry_base_delay=0.01)
    assert (await again.launch(spec)).id == first.id
    assert api.count("POST", "launch") == 1


async def test_a_restarted_hub_finds_nodes_by_name(provider, api):
    a = await provider.launch(spec_for(a10(), user="alice"))
    await provider.launch(spec_for(a10(), user="bob"))
    fresh = LambdaProvider(api_endpoint=api.url, ssh_key_name="hub-key", status_cache_seconds=0)
    assert [n.id for n in await fresh.list_nodes({TAG_HUB: HUB_ID, TAG_USER: "alice"})] == [a.id]
    assert len(await fresh.list_nodes({TAG_HUB: HUB_ID})) == 2
    assert await fresh.list_nodes({TAG_HUB: "another-hub"}) == []
    assert (await fresh.list_nodes({TAG_HUB: HUB_ID, TAG_USER: "alice"}))[0].tags[TAG_HUB] == HUB_ID


async def test_terminate_is_confirmed_and_idempotent(provider, api):
    node = await provider.launch(spec_for(a10()))
    await provider.terminate(node.id)
    await provider.terminate(node.id)
    assert api.live() == []
    assert (await provider.status(node.id)).state == TERMINATED


async def test_insufficient_capacity_fails_fast(provider, api):
    api.script("launch", "capacity", None)
    with pytest.raises(CapacityError, match="insufficient-capacity") as err:
        await provider.launch(spec_for(a10()))
    assert err.value.offer is not None and api.count("POST", "launch") == 1 and api.live() == []


async def test_quota_is_a_quota_error(provider, api):
    api.script("launch", "quota")
    with pytest.raises(QuotaError):
        await provider.launch(spec_for(a10()))


async def test_throttling_and_5xx_are_retried_then_transient(provider, api):
    api.script("launch", 429, 500)
    await provider.launch(spec_for(a10()))
    api.script("launch", *([500] * 5))
    with pytest.raises(TransientError):
        await provider.launch(spec_for(a10()))


async def test_a_refused_key_is_a_credentials_error_that_does_not_name_it(api, monkeypatch):
    monkeypatch.setenv("LAMBDA_API_KEY", "wrong-key-abcdef")
    p = LambdaProvider(api_endpoint=api.url, ssh_key_name="k")
    with pytest.raises(CredentialsError) as err:
        await p.launch(spec_for(a10()))
    assert "wrong-key-abcdef" not in str(err.value)
    reason = await p.check_available()
    assert reason and "refused" in reason and "wrong-key-abcdef" not in reason


async def test_no_key_is_a_reason(monkeypatch, tmp_path):
    monkeypatch.delenv("LAMBDA_API_KEY", raising=False)
    p = LambdaProvider(api_key_file=str(tmp_path / "none"), ssh_key_name="k")
    assert "no Lambda Cloud credentials: no API key" in await p.check_available()


def test_the_key_file_is_read(monkeypatch, tmp_path):
    monkeypatch.delenv("LAMBDA_API_KEY", raising=False)
    (tmp_path / "keys").write_text("# Lambda\napi_key = from-file-key\n")
    assert read_api_key(str(tmp_path / "keys")) == "from-file-key"


async def test_the_form_shows_live_capacity(provider, api):
    api.capacity["gpu_1x_a10"] = ["us-west-1"]
    assert await provider.check_available() is None
    offers = {o.region: o for o in provider.offers() if o.instance_type == "gpu_1x_a10"}
    assert offers["us-east-1"].available == 0 and "none free" in offers["us-east-1"].note
    assert offers["us-west-1"].available is None and offers["us-west-1"].note == ""
    # the next form render after availability_seconds reads Lambda's answer again
    provider.availability_seconds = 0  # the last read is old now
    api.capacity["gpu_1x_a10"] = ["us-east-1"]
    assert await provider.check_available() is None
    provider.availability_seconds = 60
    offers = {o.region: o for o in provider.offers() if o.instance_type == "gpu_1x_a10"}
    assert offers["us-east-1"].available is None and offers["us-west-1"].available == 0


async def test_no_spot_on_lambda(provider):
    with pytest.raises(Exception, match="no spot"):
        await provider.launch(spec_for(a10(), spot=True))


async def test_catalog_check_keeps_the_types_lambda_lists(provider):
    offers = catalog_offers("lambda")
    found = await provider.check_catalog(offers)
    assert {t for t, _, _ in found} == {"gpu_1x_a10", "gpu_1x_h100_pcie", "gpu_8x_h100_sxm5"}


async def test_a_ray_clusters_nodes_share_a_ruleset_removed_with_the_last(provider, api):
    offer = a10()
    head = await provider.launch(ray_spec(offer, "spawn1-lambda", user="ada"))
    workers = await asyncio.gather(*[provider.launch(ray_spec(offer, "spawn1-lambda", user="ada", role=WORKER_ROLE))
                                     for _ in range(2)])
    [ruleset] = api.rulesets.values()
    assert ruleset["region"]["name"] == "us-east-1"
    ray = [r for r in ruleset["rules"] if r["port_range"] == [6379, 6506]]
    assert ray and ray[0]["source_network"] == "10.0.0.0/8"
    assert any(r["port_range"] == [22, 22] for r in ruleset["rules"])  # the account's rules stay
    for node in [head, *workers]:
        assert api.instances[node.id.split("/")[1]]["_firewall_rulesets"] == [ruleset["id"]]
    plain = await provider.launch(spec_for(offer))
    assert api.instances[plain.id.split("/")[1]]["_firewall_rulesets"] == []
    provider.ray_rules.retry_delay = 0.01
    for node in workers:
        await provider.terminate(node.id)
    assert len(api.rulesets) == 1
    await provider.terminate(head.id)
    await provider.ray_rules.settle()  # deleted once Lambda lets go of it
    assert api.rulesets == {}


async def test_a_ray_launch_without_capacity_leaves_no_ruleset(provider, api):
    api.script("launch", "capacity")
    with pytest.raises(CapacityError):
        await provider.launch(ray_spec(a10(), "spawn2-lambda"))
    assert api.rulesets == {}


def test_bad_endpoint_names_the_option():
    with pytest.raises(traitlets.TraitError, match=r"^c\.LambdaProvider\.api_endpoint"):
        LambdaProvider(api_endpoint="cloud.lambda.ai")


async def test_the_reaper_finds_a_leaked_instance_by_its_name_prefix(provider, api):
    """A reaper (another process: it never saw the launch) lists this hub's instances by
    the name prefix alone and terminates the one no server owns."""
    from cloudhop.hub.reaper import Reaper

    owned = await provider.launch(spec_for(a10(), user="alice"))
    leaked = await provider.launch(spec_for(a10(), user="bob"))
    other = await provider.launch(dataclasses.replace(spec_for(a10()), tags={TAG_HUB: "another-hub"}))

    class Hub:
        async def users(self):
            return [{"name": "alice", "servers": {"": {"name": "", "stopped": False, "state": {
                "version": 1, "nodes": [{"provider": "lambda", "id": owned.id, "role": "notebook",
                                         "region": owned.region}]}}}}]

    reaper_side = LambdaProvider(api_endpoint=api.url, ssh_key_name="hub-key", status_cache_seconds=0)
    report = await Reaper({"lambda": reaper_side}, Hub(), HUB_ID, grace=0).sweep()
    assert report["providers"]["lambda"]["terminated"] == [leaked.id]
    assert report["providers"]["lambda"]["listed"] == 2
    assert {i["id"] for i in api.live()} == {owned.id.split("/")[1], other.id.split("/")[1]}
