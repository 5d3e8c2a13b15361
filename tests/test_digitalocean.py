"""The DigitalOcean provider: the real pydo client against a local double of
DigitalOcean's API v2 (tests/fakes/digitalocean_api.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest
import traitlets

from cloudhop.spawner.providers.base import (
    RUNNING, TAG_HUB, TAG_REQUEST, TAG_USER, TERMINATED, CapacityError, CredentialsError, QuotaError,
    TransientError,
)
from cloudhop.spawner.providers.digitalocean import DigitalOceanProvider, read_tags, tag_word
from cloudhop.spawner.ray import CLUSTER_TAG, WORKER_ROLE
from tests.cloudkit import HUB_ID, spec_for
from tests.fakes.digitalocean_api import FakeDigitalOcean
from tests.new_clouds import cheapest_in_catalog

TOKEN = "dop_v1_secret_token_0123456789"


def h100():
    return cheapest_in_catalog("digitalocean", "tor1", "H100", 1)


@pytest.fixture
def api(monkeypatch):
    fake = FakeDigitalOcean(token=TOKEN)
    fake.url = fake.start()
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", TOKEN)
    yield fake
    fake.stop()


@pytest.fixture
def provider(api):
    return DigitalOceanProvider(api_endpoint=api.url, retry_base_delay=0.01, status_cache_seconds=0)


async def until_running(provider, node_id):
    """Poll as the spawner does: the double's droplets are active from the next read."""
    for _ in range(3):
        node = await provider.status(node_id)
        if node.state == RUNNING:
            break
    return node


def ray_spec(offer, cluster, **kw):
    spec = spec_for(offer, **kw)
    return dataclasses.replace(spec, tags={**spec.tags, CLUSTER_TAG: cluster})


def test_tags_are_droplet_tag_words_and_read_back_exactly():
    assert tag_word("cloudhop-user", "alice") == "cloudhop-user:alice"
    for value in ("ada@example.org", "b32-looks-coded", "", "a b/c"):
        word = tag_word("cloudhop-user", value)
        assert all(c.isalnum() or c in ":-_" for c in word)
        assert read_tags([word, "other-tag"]) == {"cloudhop-user": value}


async def test_launch_a_tagged_gpu_droplet_with_user_data_without_the_token(provider, api, caplog):
    caplog.set_level(logging.DEBUG)
    spec = spec_for(h100(), user="ada@example.org", server="gpu")
    node = await provider.launch(spec)
    [d] = api.droplets.values()
    assert (d["size_slug"], d["region"]["slug"], d["image"]["slug"]) == ("gpu-h100x1-80gb", "tor1", "gpu-h100x1-base")
    assert read_tags(d["tags"])[TAG_USER] == "ada@example.org" and read_tags(d["tags"])[TAG_HUB] == HUB_ID
    assert "--gpus all" in d["_user_data"] and "JUPYTERHUB_API_TOKEN=server-own-token-123" in d["_user_data"]
    assert node.tags[TAG_USER] == "ada@example.org" and node.id == f"tor1/{d['id']}"
    running = await until_running(provider, node.id)
    assert running.state == RUNNING and running.ip.startswith("192.0.2.") and running.port == 8888
    sent = repr([r["body"] for r in api.requests]) + repr([r["query"] for r in api.requests])
    assert TOKEN not in sent and TOKEN not in d["_user_data"] and TOKEN not in caplog.text and TOKEN not in repr(running)


async def test_launch_is_idempotent_and_lists_page(provider, api):
    spec = spec_for(h100())
    first = await provider.launch(spec)
    assert (await provider.launch(spec)).id == first.id
    again = DigitalOceanProvider(api_endpoint=api.url, retry_base_delay=0.01)
    assert (await again.launch(spec)).id == first.id  # a restarted hub finds it by its tag
    for user in ("bob", "carol"):
        await provider.launch(spec_for(h100(), user=user))
    assert [n.id for n in await provider.list_nodes({TAG_REQUEST: spec.request_id})] == [first.id]
    assert len(await provider.list_nodes({TAG_HUB: HUB_ID})) == 3
    assert [n.tags[TAG_USER] for n in await provider.list_nodes({TAG_HUB: HUB_ID, TAG_USER: "bob"})] == ["bob"]
    assert api.count("POST", "/v2/droplets") == 3


async def test_terminate_is_idempotent(provider, api):
    node = await provider.launch(spec_for(h100()))
    await provider.terminate(node.id)
    await provider.terminate(node.id)
    assert api.droplets == {} and (await provider.status(node.id)).state == TERMINATED


async def test_no_capacity_fails_fast_limit_is_quota(provider, api):
    api.script("create", "capacity")
    with pytest.raises(CapacityError, match="not available") as err:
        await provider.launch(spec_for(h100()))
    assert err.value.offer is not None and api.droplets == {}
    api.script("create", "limit")
    with pytest.raises(QuotaError):
        await provider.launch(spec_for(h100()))


async def test_throttling_and_5xx_are_retried_then_transient(provider, api):
    api.script("create", 429, 500)
    await provider.launch(spec_for(h100()))
    api.script("create", *([500] * 10))
    with pytest.raises(TransientError):
        await provider.launch(spec_for(h100()))


async def test_a_refused_token_is_a_credentials_error_that_does_not_name_it(api, monkeypatch):
    monkeypatch.setenv("DIGITALOCEAN_TOKEN", "dop_v1_wrong_token_abcdef")
    p = DigitalOceanProvider(api_endpoint=api.url)
    with pytest.raises(CredentialsError) as err:
        await p.launch(spec_for(h100()))
    assert "wrong_token" not in str(err.value)
    reason = await p.check_available()
    assert "refused" in reason and "wrong_token" not in reason


async def test_no_token_is_a_reason(monkeypatch, tmp_path):
    for env in ("DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN"):
        monkeypatch.delenv(env, raising=False)
    p = DigitalOceanProvider(token_file=str(tmp_path / "none"))
    assert "no DigitalOcean credentials: no API token" in await p.check_available()


async def test_catalog_check_reads_sizes(provider):
    from cloudhop.spawner.catalog import catalog_offers

    found = await provider.check_catalog(catalog_offers("digitalocean"))
    assert [(t, r) for t, r, _ in found] == [("gpu-h100x1-80gb", "tor1")]


async def test_a_ray_clusters_droplets_share_a_firewall_on_their_tag(provider, api):
    offer = h100()
    head = await provider.launch(ray_spec(offer, "spawn1-do", user="ada"))
    workers = await asyncio.gather(*[provider.launch(ray_spec(offer, "spawn1-do", user="ada", role=WORKER_ROLE))
                                     for _ in range(2)])
    [fw] = api.firewalls.values()
    word = tag_word(CLUSTER_TAG, "spawn1-do")
    assert fw["tags"] == [word]
    ray = [r for r in fw["inbound_rules"] if r["ports"] == "6379-6506"]
    assert ray == [{"protocol": "tcp", "ports": "6379-6506", "sources": {"tags": [word]}}]
    assert any(r["ports"] == "8888" for r in fw["inbound_rules"]) and fw["outbound_rules"]
    for node in [head, *workers]:
        assert api.applied(int(node.id.split("/")[1])) == [fw["id"]]
    plain = await provider.launch(spec_for(offer))
    assert api.applied(int(plain.id.split("/")[1])) == []
    for node in workers:
        await provider.terminate(node.id)
    assert len(api.firewalls) == 1
    await provider.terminate(head.id)
    assert api.firewalls == {}


async def test_a_ray_launch_without_capacity_leaves_no_firewall(provider, api):
    api.script("create", "capacity")
    with pytest.raises(CapacityError):
        await provider.launch(ray_spec(h100(), "spawn2-do"))
    assert api.firewalls == {}


def test_bad_endpoint_names_the_option():
    with pytest.raises(traitlets.TraitError, match=r"^c\.DigitalOceanProvider\.api_endpoint"):
        DigitalOceanProvider(api_endpoint="api.digitalocean.com")
