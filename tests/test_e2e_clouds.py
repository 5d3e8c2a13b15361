"""Through a real hub: REST spawns on GCP and OCI against their local API fakes (the
real SDKs in the hub process) launch one VM of the cheapest matching catalog type,
tagged with its owner, whose user-data holds no credential; stopping deletes it."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cloudhop.spawner.catalog import catalog_offers
from cloudhop.spawner.offers import matching
from tests.cloudkit import wait_for
from tests.fakes.gcp_compute import FakeCompute
from tests.fakes.oci_api import FakeOCI

pytestmark = pytest.mark.e2e


def cheapest_in_catalog(provider, region, gpu, count):
    found = matching(catalog_offers(provider), provider=provider, region=region, gpu=gpu, gpu_count=count)
    return min(found, key=lambda o: o.price_hour)


def gcp_setup(tmp_path):
    fake = FakeCompute()
    url = fake.start()
    config = f"""
c.CloudhopSpawner.providers = ["local", "gcp"]
c.CloudhopSpawner.hibernate = False  # nothing of Jupyter serves at a fake instance
c.GCPProvider.api_endpoint = {url!r}
c.GCPProvider.anonymous_credentials = True
c.GCPProvider.project = "e2e-project"
c.GCPProvider.status_cache_seconds = 1
c.CloudProvider.hub_connect_url = "https://hub.example.org"
"""

    def launched():
        return [dict(inst, _type=inst["machineType"].rsplit("/", 1)[-1], _tags=inst["labels"],
                     _user_data={i["key"]: i["value"] for i in inst["metadata"]["items"]}["user-data"])
                for inst in list(fake.instances.values())]

    return fake, config, launched, {"provider": "gcp", "region": "us-central1", "gpu": "L4", "gpu_count": 1}


def oci_setup(tmp_path):
    fake = FakeOCI(region="eu-amsterdam-1")
    url = fake.start()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "oci.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "oci-config").write_text(
        "[DEFAULT]\nuser=ocid1.user.oc1..e2e\nfingerprint=11:22:33:44:55:66:77:88:99:00:aa:bb:cc:dd:ee:ff\n"
        f"tenancy=ocid1.tenancy.oc1..e2e\nregion=eu-amsterdam-1\nkey_file={tmp_path / 'oci.pem'}\n")
    config = f"""
c.CloudhopSpawner.providers = ["local", "oci"]
c.CloudhopSpawner.hibernate = False  # nothing of Jupyter serves at a fake instance
c.OCIProvider.config_file = {str(tmp_path / "oci-config")!r}
c.OCIProvider.service_endpoint = {url!r}
c.OCIProvider.subnet_id = "ocid1.subnet.oc1.eu-amsterdam-1.e2e"
c.OCIProvider.status_cache_seconds = 1
c.CloudProvider.hub_connect_url = "https://hub.example.org"
"""

    def launched():
        return [dict(inst, _type=inst["shape"], _tags=inst["freeformTags"],
                     _user_data=base64.b64decode(inst["metadata"]["user_data"]).decode())
                for inst in list(fake.instances.values()) if inst["lifecycleState"] != "TERMINATED"]

    return fake, config, launched, {"provider": "oci", "region": "eu-amsterdam-1", "gpu": "A10", "gpu_count": 1}


@pytest.mark.parametrize("setup", [gcp_setup, oci_setup], ids=["gcp", "oci"])
def test_rest_spawn_launches_the_cheapest_type_and_stop_deletes_it(setup, tmp_path, hub_factory):
    fake, config, launched, request = setup(tmp_path)
    try:
        hub = hub_factory(config)
        hub.ensure_user("carol")
        r = hub.api("POST", "/users/carol/server", json=request)
        assert r.status_code in (201, 202), r.text
        [inst] = wait_for(launched, what="instance")
        expected = cheapest_in_catalog(request["provider"], request["region"], request["gpu"], 1)
        assert inst["_type"] == expected.instance_type
        assert inst["_tags"]["cloudhop-user"] == "carol"
        user_data = inst["_user_data"]
        assert "JUPYTERHUB_API_URL=https://hub.example.org/hub/api" in user_data and "--gpus all" in user_data
        assert "oci.pem" not in user_data and "PRIVATE KEY" not in user_data
        # the hub records the node as soon as the launch returns (a restarted hub re-attaches by it)
        nodes = wait_for(lambda: ((hub.server_model("carol") or {}).get("state") or {}).get("nodes"),
                         what="node in the server's state")
        assert [n["id"].split("/")[-1] for n in nodes] == [inst.get("name") or inst["id"]]

        r = hub.api("DELETE", "/users/carol/server")
        assert r.status_code in (202, 204), r.text
        wait_for(lambda: hub.server_model("carol") is None, what="stopped server")
        wait_for(lambda: not launched(), what="deleted instance")
        assert json.dumps(fake.requests).count("DELETE") == 1
    finally:
        fake.stop()
