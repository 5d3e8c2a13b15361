"""The Yandex Cloud provider: its real ``requests`` client against a local double of
Yandex Cloud's Compute, VPC, operation and IAM APIs (tests/fakes/yandex_api.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging

import pytest
import traitlets

from cloudhop.hub.cli import main
from cloudhop.spawner.providers.base import (
    RUNNING, STOPPING, TAG_USER, TERMINATED, CapacityError, CredentialsError, QuotaError, TransientError,
)
from cloudhop.spawner.providers.yandex import YandexProvider, parse_type
from cloudhop.spawner.ray import CLUSTER_TAG, WORKER_ROLE
from tests.cloudkit import spec_for
from tests.fakes.yandex_api import FakeYandex
from tests.new_clouds import cheapest_in_catalog

IAM = "t1.yc-secret-iam-token-0123456789"
CREDENTIAL_ENVS = ("YC_IAM_TOKEN", "YC_TOKEN", "YC_SERVICE_ACCOUNT_KEY_FILE", "YC_FOLDER_ID")


def t4():
    return cheapest_in_catalog("yandex", "ru-central1", "T4", 1)


@pytest.fixture
def api(monkeypatch):
    fake = FakeYandex(iam_token=IAM)
    fake.url = fake.start()
    for env in CREDENTIAL_ENVS:
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("YC_IAM_TOKEN", IAM)
    yield fake
    fake.stop()


@pytest.fixture
def provider(api):
    return YandexProvider(api_endpoint=api.url, folder_id=api.folder, poll_seconds=0, retry_base_delay=0.01,
                          status_cache_seconds=0)


def ray_spec(offer, cluster, **kw):
    spec = spec_for(offer, **kw)
    return dataclasses.replace(spec, tags={**spec.tags, CLUSTER_TAG: cluster})


def test_every_catalog_type_names_its_platform_and_shape():
    from cloudhop.spawner.catalog import catalog_offers

    offers = catalog_offers("yandex")
    assert {parse_type(o.instance_type)["platform"] for o in offers} == {
        "gpu-standard-v2", "gpu-standard-v3", "gpu-standard-v3i", "gpu-standard-v4", "standard-v3-t4"}
    for o in offers:
        shape = parse_type(o.instance_type)
        assert (shape["gpus"], shape["cores"], shape["memory"]) == (o.gpu_count, o.vcpus, int(o.memory_gib))
        assert o.region == "ru-central1" and o.zones and o.price_hour > 0


async def test_launch_a_labelled_gpu_vm_with_user_data_without_the_token(provider, api, caplog):
    caplog.set_level(logging.DEBUG)
    node = await provider.launch(spec_for(t4(), user="ada@example.org", spot=True))
    [inst] = api.instances.values()
    body = inst["_body"]
    assert body["platformId"] == "standard-v3-t4" and body["resourcesSpec"] == {
        "memory": str(16 * 1024 ** 3), "cores": "4", "coreFraction": "100", "gpus": "1"}
    assert body["schedulingPolicy"] == {"preemptible": True} and node.info["spot"] is True
    # a user name a label cannot hold is labelled by its hash, and read back exactly
    assert body["labels"][TAG_USER].startswith("h-") and node.tags[TAG_USER] == "ada@example.org"
    assert "JUPYTERHUB_API_TOKEN=server-own-token-123" in body["metadata"]["user-data"]
    assert node.id == f"ru-central1-a/{inst['id']}" and node.region == "ru-central1"
    assert IAM not in json.dumps(body) + caplog.text + repr(node)
    assert {r["headers"]["authorization"] for r in api.requests} == {f"Bearer {IAM}"}
    assert [r["headers"].get("idempotency-key") for r in api.requests if r["method"] == "POST"] != [None]
    assert (await provider.status(node.id)).state == RUNNING
    [found] = await provider.list_nodes({TAG_USER: "ada@example.org"})
    assert found.id == node.id and await provider.list_nodes({TAG_USER: "ada"}) == []


async def test_launch_is_idempotent_and_lists_page(provider, api, monkeypatch):
    spec = spec_for(t4())
    first = await provider.launch(spec)
    again = await provider.launch(spec)
    assert again.id == first.id and len(api.instances) == 1
    # a create retried after a lost answer reuses its idempotency key: still one VM
    monkeypatch.setattr("cloudhop.spawner.providers.yandex.PAGE", 1)
    spec2 = spec_for(t4())
    await provider.launch(spec2)
    await asyncio.to_thread(provider._create_in, spec2, provider.node_tags(spec2), "", "ru-central1-a", None)
    assert len(api.instances) == 2
    assert len(await provider.list_nodes({})) == 2  # over two pages


async def test_terminate_is_idempotent(provider, api):
    node = await provider.launch(spec_for(t4()))
    await provider.terminate(node.id)
    assert api.live() == [] and (await provider.status(node.id)).state == TERMINATED
    await provider.terminate(node.id)


async def test_a_preempted_vm_reads_as_going_away_and_is_deleted(provider, api):
    """Yandex stops a preempted VM (its disk stays and costs): the server reads gone, and
    the terminate the hub's stop makes deletes it."""
    node = await provider.launch(spec_for(t4(), spot=True))
    api.instances[node.id.split("/")[1]]["status"] = "STOPPED"
    assert (await provider.status(node.id)).state == STOPPING
    await provider.terminate(node.id)
    assert api.instances == {}


async def test_a_zone_without_resources_moves_on_then_capacity_quota(provider, api):
    api.script("create", "capacity")
    node = await provider.launch(spec_for(t4()))
    assert node.id.startswith("ru-central1-b/")
    api.no_capacity = True
    with pytest.raises(CapacityError, match="Not enough resources") as err:
        await provider.launch(spec_for(t4()))
    assert err.value.offer is not None and err.value.reason == "capacity"
    api.no_capacity = False
    api.script("create", "quota")
    with pytest.raises(QuotaError):
        await provider.launch(spec_for(t4()))


async def test_throttling_and_5xx_are_retried_then_transient(provider, api):
    api.script("create", 429, 500)
    await provider.launch(spec_for(t4()))
    api.script("create", *([500] * 10))
    with pytest.raises(TransientError):
        await provider.launch(spec_for(t4()))


async def test_a_refused_token_is_a_credentials_error_that_does_not_name_it(api, monkeypatch):
    monkeypatch.setenv("YC_IAM_TOKEN", "t1.wrong-token-abcdef")
    p = YandexProvider(api_endpoint=api.url, folder_id=api.folder)
    with pytest.raises(CredentialsError) as err:
        await p.launch(spec_for(t4()))
    assert "wrong-token" not in str(err.value)
    reason = await p.check_available()
    assert "refused" in reason and "wrong-token" not in reason


async def test_missing_credentials_or_folder_is_a_reason(api, monkeypatch, tmp_path):
    monkeypatch.delenv("YC_IAM_TOKEN")
    p = YandexProvider(api_endpoint=api.url, folder_id=api.folder, service_account_key_file=str(tmp_path / "none"))
    assert "no Yandex Cloud credentials" in await p.check_available()
    monkeypatch.setenv("YC_IAM_TOKEN", IAM)
    assert "no Yandex Cloud folder" in await YandexProvider(api_endpoint=api.url).check_available()
    monkeypatch.setenv("YC_FOLDER_ID", api.folder)
    assert await YandexProvider(api_endpoint=api.url).check_available() is None


async def test_a_service_account_key_is_exchanged_for_an_iam_token_once(api, monkeypatch, tmp_path):
    """The key signs a JWT (PS256) that the IAM double verifies with the public half; the
    private key is never sent, and the IAM token is reused until it nears expiry."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    api.add_key("ajekey1", "ajesa1", private.public_key())
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps({"id": "ajekey1", "service_account_id": "ajesa1", "private_key": pem}))
    monkeypatch.delenv("YC_IAM_TOKEN")
    p = YandexProvider(api_endpoint=api.url, folder_id=api.folder, service_account_key_file=str(key_file),
                       poll_seconds=0)
    assert await p.check_available() is None
    node = await p.launch(spec_for(t4()))
    await p.terminate(node.id)
    assert api.count("POST", "/iam/v1/tokens") == 1
    sent = json.dumps([r["body"] for r in api.requests])
    assert "PRIVATE KEY" not in sent and pem.splitlines()[1] not in sent
    # a key the IAM double does not know is refused: a credentials error
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file.write_text(json.dumps({"id": "ajekey1", "service_account_id": "ajesa1", "private_key": other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()}))
    q = YandexProvider(api_endpoint=api.url, folder_id=api.folder, service_account_key_file=str(key_file))
    assert "refused" in await q.check_available()


async def test_an_oauth_token_is_exchanged(api, monkeypatch):
    api.oauth_token = "y0_oauth-secret"
    monkeypatch.delenv("YC_IAM_TOKEN")
    monkeypatch.setenv("YC_TOKEN", "y0_oauth-secret")
    p = YandexProvider(api_endpoint=api.url, folder_id=api.folder, poll_seconds=0)
    await p.launch(spec_for(t4()))
    [exchange] = [r for r in api.requests if r["path"] == "/iam/v1/tokens"]
    assert exchange["body"] == {"yandexPassportOauthToken": "y0_oauth-secret"}
    assert all(r["headers"].get("authorization") == f"Bearer {IAM}" for r in api.requests if r is not exchange)


async def test_a_ray_clusters_vms_share_a_security_group_of_their_own(provider, api):
    offer = t4()
    head = await provider.launch(ray_spec(offer, "spawn1-yc", user="ada"))
    workers = await asyncio.gather(*[provider.launch(ray_spec(offer, "spawn1-yc", user="ada", role=WORKER_ROLE))
                                     for _ in range(2)])
    [group] = api.groups.values()
    ray = [r for r in group["rules"] if (r.get("ports") or {}).get("fromPort") == "6379"]
    assert len(ray) == 1 and ray[0]["predefinedTarget"] == "self_security_group" and "cidrBlocks" not in ray[0]
    assert ray[0]["ports"]["toPort"] == "6506" and ray[0]["direction"] == "INGRESS"
    assert any((r.get("ports") or {}).get("fromPort") == "8888" for r in group["rules"])
    assert any(r["direction"] == "EGRESS" for r in group["rules"])
    for node in [head, *workers]:
        nic = api.instances[node.id.split("/")[1]]["networkInterfaces"][0]
        assert nic["securityGroupIds"] == [group["id"]]
    plain = await provider.launch(spec_for(offer))
    assert api.instances[plain.id.split("/")[1]]["networkInterfaces"][0]["securityGroupIds"] == []
    for node in workers:
        await provider.terminate(node.id)
    assert len(api.groups) == 1
    await provider.terminate(head.id)
    assert api.groups == {}


async def test_a_ray_launch_without_capacity_leaves_no_security_group(provider, api):
    api.no_capacity = True
    with pytest.raises(CapacityError):
        await provider.launch(ray_spec(t4(), "spawn2-yc"))
    assert api.groups == {}


def test_catalog_check_through_the_cli(api, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CLOUDHOP_DATA_DIR", str(tmp_path / "data"))
    cfg = tmp_path / "hub_config.py"
    cfg.write_text(f"c.YandexProvider.api_endpoint = {api.url!r}\nc.YandexProvider.folder_id = {api.folder!r}\n")
    code = main(["catalog", "check", "--provider", "yandex", "--config", str(cfg), "--data-dir", str(tmp_path / "data")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "yandex: 20 of 20" in out
    result = json.loads((tmp_path / "data" / "catalog-check-yandex.json").read_text())
    assert {tuple(o["zones"]) for o in result["offers"]} == {
        ("ru-central1-a", "ru-central1-b"), ("ru-central1-a", "ru-central1-b", "ru-central1-d")}


def test_bad_settings_name_the_option():
    with pytest.raises(traitlets.TraitError, match=r"^c\.YandexProvider\.api_endpoint"):
        YandexProvider(api_endpoint="compute.api.cloud.yandex.net")
    with pytest.raises(traitlets.TraitError, match=r"disk_gb"):
        YandexProvider(disk_gb=0)

