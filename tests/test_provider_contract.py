"""One contract, every provider: what the spawner and the reaper rely on (see
spawner/providers/base.py), run against AWS (moto), GCP and OCI (local API fakes with
the real SDKs), Kubernetes (a local API double with the real client) and the local
provider (real processes). A provider class that misses a method of the contract is
refused when it is created."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading

import pytest
from moto import mock_aws

from cloudhop.spawner.providers.base import RUNNING, TAG_HUB, TAG_REQUEST, TAG_USER, TERMINATED, Provider
from hubfixture import free_port
from tests.cloudkit import HUB_ID, cheapest, spec_for
from tests.fakes.gcp_compute import FakeCompute
from tests.fakes.oci_api import FakeOCI
from tests.new_clouds import NEW_CLOUDS

FAST = {"status_cache_seconds": 0, "retry_base_delay": 0.01}
OCI_SUBNET = "ocid1.subnet.oc1.eu-amsterdam-1.aaaatest"


def kubelet(api, namespace: str, stop: threading.Event) -> None:
    """What a scheduler and kubelet do for the Kubernetes API double (which has none):
    every pending pod is soon running on a node with an address."""
    while not stop.wait(0.02):
        for n, (name, pod) in enumerate(api.pods(namespace).items()):
            if pod["status"].get("phase") == "Pending" and not pod["metadata"].get("deletionTimestamp"):
                try:
                    api.set_phase(namespace, name, "Running", ip=f"10.8.0.{n + 2}", node="system-1")
                except KeyError:  # deleted meanwhile
                    pass


@pytest.fixture(params=["aws", "gcp", "oci", "lambda", "azure", "digitalocean", "yandex", "local", "kubernetes"])
async def cloud(request, monkeypatch, tmp_path, oci_config, kube_api, make_kube_provider):
    """(provider, make_spec(user)) for one provider."""
    if request.param == "aws":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        from cloudhop.spawner.providers.aws import AWSProvider

        with mock_aws():
            p = AWSProvider(image_ssm_parameter="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64",
                            regions=["us-east-1"], **FAST)
            yield p, lambda user: spec_for(cheapest("aws", "us-east-1", "T4", 1), user=user)
    elif request.param == "gcp":
        from cloudhop.spawner.providers.gcp import GCPProvider

        fake = FakeCompute()
        url = fake.start()
        yield (GCPProvider(api_endpoint=url, anonymous_credentials=True, project="p", **FAST),
               lambda user: spec_for(cheapest("gcp", "us-central1", "L4", 1), user=user))
        fake.stop()
    elif request.param == "oci":
        from cloudhop.spawner.providers.oci import OCIProvider

        fake = FakeOCI()
        url = fake.start()
        yield (OCIProvider(config_file=str(oci_config / "config"), service_endpoint=url, subnet_id=OCI_SUBNET,
                           regions=["eu-amsterdam-1"], **FAST),
               lambda user: spec_for(cheapest("oci", "eu-amsterdam-1", "A10", 1), user=user))
        fake.stop()
    elif request.param in NEW_CLOUDS:
        async with NEW_CLOUDS[request.param](monkeypatch) as wired:
            yield wired.provider, wired.make
    elif request.param == "kubernetes":
        p = make_kube_provider()
        assert await p.check_available() is None
        [cpu] = [o for o in p.offers() if o.gpu_count == 0][:1]
        stop = threading.Event()
        thread = threading.Thread(target=kubelet, args=(kube_api, "jhub", stop), daemon=True)
        thread.start()
        yield p, lambda user: spec_for(cpu, user=user)
        stop.set()
        thread.join()
    else:
        from cloudhop.spawner.providers.local import LocalProvider

        p = LocalProvider(default_root=str(tmp_path / "ws"), state_dir=str(tmp_path / "nodes"), isolation="none")  # unit level: accounts are tests/security's
        [cpu] = [o for o in p.offers() if o.gpu_count == 0][:1]

        def make(user):
            port = free_port()
            spec = spec_for(cpu, user=user, port=port)
            return dataclasses.replace(
                spec, cmd=[sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"])

        yield p, make
        for node in await p.list_nodes({TAG_HUB: HUB_ID}):
            await p.terminate(node.id)


async def eventually(provider, node_id, states, tries=20):
    """Poll status as the spawner does until the node is in one of ``states``."""
    for _ in range(tries):
        node = await provider.status(node_id)
        if node.state in states:
            return node
        await asyncio.sleep(0.1)
    return node


async def test_launch_is_idempotent_on_the_request_id(cloud):
    provider, make = cloud
    spec = make("alice")
    first = await provider.launch(spec)
    again = await provider.launch(spec)
    assert again.id == first.id
    assert [n.id for n in await provider.list_nodes({TAG_REQUEST: spec.request_id})] == [first.id]
    await provider.terminate(first.id)


async def test_status_reaches_running_with_an_address(cloud):
    provider, make = cloud
    spec = make("alice")
    node = await provider.launch(spec)
    assert node.provider == provider.name and node.tags[TAG_USER] == "alice"
    running = await eventually(provider, node.id, {RUNNING})
    assert running.state == RUNNING and running.ip and running.port == spec.port
    await provider.terminate(node.id)


async def test_list_nodes_by_tags(cloud):
    provider, make = cloud
    a = await provider.launch(make("alice"))
    b = await provider.launch(make("bob"))
    assert [n.id for n in await provider.list_nodes({TAG_HUB: HUB_ID, TAG_USER: "alice"})] == [a.id]
    assert {n.id for n in await provider.list_nodes({TAG_HUB: HUB_ID})} == {a.id, b.id}
    assert await provider.list_nodes({TAG_HUB: "not-this-hub"}) == []
    for n in (a, b):
        await provider.terminate(n.id)


async def test_terminate_is_idempotent_and_the_node_ends_terminated(cloud):
    provider, make = cloud
    spec = make("alice")
    node = await provider.launch(spec)
    await eventually(provider, node.id, {RUNNING})
    await provider.terminate(node.id)
    await provider.terminate(node.id)  # again: not an error
    assert (await eventually(provider, node.id, {TERMINATED})).state == TERMINATED
    assert await provider.list_nodes({TAG_REQUEST: spec.request_id}) == []


@pytest.mark.parametrize("missing", Provider.CONTRACT)
def test_a_provider_class_missing_a_contract_method_is_refused(missing):
    async def method(self, *args):  # pragma: no cover - never called
        return None

    methods = {name: method for name in Provider.CONTRACT if name != missing}
    with pytest.raises(TypeError, match=rf"Incomplete does not implement {missing} of the provider contract"):
        type("Incomplete", (Provider,), {"name": "incomplete", **methods})
    # a base its subclasses complete says so, and its subclasses are checked again
    base = type("Base", (Provider,), {"name": "base", **methods}, partial=True)
    with pytest.raises(TypeError, match=missing):
        type("StillIncomplete", (base,), {})
    complete = type("Complete", (base,), {missing: method})
    assert complete.node_port == 8888 and complete.handles_ray is False


def test_every_shipped_provider_keeps_the_contract():
    """Each shipped class is created, so it passed the check; the declared defaults."""
    from cloudhop.spawner.providers import PROVIDERS, provider_class

    classes = {name: provider_class(name) for name in PROVIDERS}
    assert all(issubclass(c, Provider) for c in classes.values())
    assert classes["local"].node_port is None and classes["aws"].node_port == 8888
    assert [n for n, c in classes.items() if c.handles_ray] == ["kubernetes"]
