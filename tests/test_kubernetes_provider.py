"""KubernetesProvider lifecycle against a local Kubernetes API double (tests/fakes/k8s_api.py):
the real kubernetes_asyncio client, a generated kubeconfig, the API's JSON."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest
from traitlets.config import Config

from cloudhop.spawner.options import RayRequest
from cloudhop.spawner.providers.base import (
    FAILED, PENDING, RUNNING, STOPPING, TAG_HUB, TAG_REQUEST, TAG_ROLE, TAG_SERVER, TAG_USER, TERMINATED,
    CapacityError, CredentialsError, LaunchSpec, TransientError,
)
from cloudhop.spawner.providers.kubernetes import KubernetesProvider
from fakes.k8s_api import TOKEN

NS = "jhub"
TAGS = {TAG_HUB: "hub-a1", TAG_USER: "ana@example.org", TAG_SERVER: "", TAG_ROLE: "notebook"}


@pytest.fixture
def fake(kube_api):
    """The Kubernetes API double (conftest's ``kube_api``)."""
    return kube_api


@pytest.fixture
def make_provider(make_kube_provider):
    """conftest's ``make_kube_provider``: cluster ``gke-us`` in namespace :data:`NS`."""
    return make_kube_provider


def spec_for(offer, request_id="req-1", ray=None, tags=TAGS):
    return LaunchSpec(request_id=request_id, offer=offer, cmd=["jupyterhub-singleuser"],
                      env={"JUPYTERHUB_API_TOKEN": "server-token", "JUPYTERHUB_API_URL": "http://hub:8081/hub/api",
                           # a careless env_keep on the hub: neither may reach the pod
                           "AWS_SECRET_ACCESS_KEY": "hub-aws-secret", "CLOUDHOP_OCI_PASSWORD": "hub-oci-pass"},
                      tags=dict(tags), ray=ray)


async def offer_of(provider, gpu, count):
    assert await provider.check_available() is None
    return next(o for o in provider.offers() if o.gpu == gpu and o.gpu_count == count)


async def test_offers_show_free_and_scalable_gpus(fake, make_provider):
    provider = make_provider()
    offers = {o.instance_type: o for o in (await offer_of(provider, "L4", 1), *provider.offers())}
    assert offers["l4-x1"].available == 4 and offers["l4-x4"].available == 1
    assert offers["l4-x1"].zones == ("us-central1-a",)
    assert offers["t4-x1"].available == 1
    assert offers["h100-pool-x8"].available == 2  # no node yet, two can scale up
    assert "0 free now" in offers["h100-pool-x8"].note and "scales up" in offers["h100-pool-x8"].note
    assert offers["h100-pool-x8"].price_hour == 24.0 and offers["l4-x1"].price_hour == 0.0
    assert offers["cpu"].gpu == "none"
    # a pod holding 3 of the L4s leaves one free
    fake.create("pods", "other-team", {"metadata": {"name": "busy"}, "spec": {"nodeName": "l4-node-1", "containers": [
        {"name": "c", "resources": {"limits": {"nvidia.com/gpu": "3"}}}]}})
    fake.set_phase("other-team", "busy", "Running")
    await provider.check_available()
    offers = {o.instance_type: o for o in provider.offers()}
    assert offers["l4-x1"].available == 1 and offers["l4-x2"].available == 0
    await provider.close()


async def test_namespace_only_rights_still_give_offers(fake, make_provider):
    fake.forbid_cluster_pods = True
    provider = make_provider()
    assert (await offer_of(provider, "L4", 2)).available == 2
    await provider.close()


async def test_launch_poll_terminate_with_ray(fake, make_provider):
    provider = make_provider()
    offer = await offer_of(provider, "L4", 2)
    node = await provider.launch(spec_for(offer, ray=RayRequest(workers=2, gpu="H100", gpu_count=8)))
    assert node.state == PENDING and node.region == "gke-us" and node.ip is None

    (pod_name,) = fake.names("pods", NS)
    assert node.id == f"gke-us/{NS}/{pod_name}"
    pod = fake.get("pods", NS, pod_name)
    (c,) = pod["spec"]["containers"]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert pod["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"]["tolerations"]
    assert c["image"] == "example/cloudhop-singleuser:1"
    env = {e["name"]: e.get("value") for e in c["env"]}
    (ray_name,) = fake.names("rayclusters", NS)
    assert env["RAY_ADDRESS"] == f"ray://{ray_name}-head-svc.{NS}.svc.cluster.local:10001"
    assert env["JUPYTERHUB_API_TOKEN"] == "server-token"
    assert "hub-aws-secret" not in str(pod) and "hub-oci-pass" not in str(pod)
    assert TOKEN not in str(pod)  # the hub's cluster credentials never reach the pod
    assert pod["metadata"]["labels"][TAG_REQUEST] == "req-1"
    (pvc_name,) = fake.names("persistentvolumeclaims", NS)
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == pvc_name

    rc = fake.get("rayclusters", NS, ray_name)
    assert rc["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
    (group,) = rc["spec"]["workerGroupSpecs"]
    assert group["replicas"] == 2
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert group["template"]["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}

    # polling follows the pod's phase
    fake.set_phase(NS, pod_name, "Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                          "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}])
    node = await provider.status(node.id)
    assert node.state == PENDING and "Insufficient nvidia.com/gpu" in node.detail
    fake.set_phase(NS, pod_name, "Running", ip="10.8.0.7", node="l4-node-1", conditions=[])
    node = await provider.status(node.id)
    assert (node.state, node.ip, node.port) == (RUNNING, "10.8.0.7", 8888)
    assert node.info["ray_cluster"] == ray_name and node.tags[TAG_USER] == "ana@example.org"
    created = datetime.fromisoformat(pod["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    assert node.info["launched_at"] == created.timestamp()  # the reaper's grace period counts from here

    await provider.terminate(node.id)
    assert fake.names("pods", NS) == [] and fake.names("rayclusters", NS) == []
    assert fake.names("persistentvolumeclaims", NS) == [pvc_name]  # the workspace stays
    assert (await provider.status(node.id)).state == TERMINATED
    await provider.terminate(node.id)  # idempotent
    await provider.close()


async def test_failed_and_stopping_phases(fake, make_provider):
    provider = make_provider()
    offer = await offer_of(provider, "T4", 1)
    node = await provider.launch(spec_for(offer))
    (pod_name,) = fake.names("pods", NS)
    fake.set_phase(NS, pod_name, "Failed", message="OOMKilled")
    assert (await provider.status(node.id)).state == FAILED
    fake.graceful_delete = True
    await provider.terminate(node.id)
    stopping = await provider.status(node.id)
    assert stopping.state == STOPPING
    fake.finish_deletions()
    assert (await provider.status(node.id)).state == TERMINATED
    await provider.close()


async def test_unschedulable_with_no_scale_up_fails_so_failover_moves_on(fake, make_provider):
    provider = make_provider()
    node = await provider.launch(spec_for(await offer_of(provider, "T4", 1)))
    (pod_name,) = fake.names("pods", NS)
    fake.set_phase(NS, pod_name, "Pending", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                                          "message": "0/3 nodes are available"}])
    assert (await provider.status(node.id)).state == PENDING
    fake.add_event(NS, pod_name, "NotTriggerScaleUp", "pod didn't trigger scale-up: 1 max node group size reached")
    node = await provider.status(node.id)
    assert node.state == FAILED and "max node group size reached" in node.detail
    await provider.close()


async def test_a_fresh_provider_reattaches_by_label(fake, make_provider):
    first = make_provider()
    offer = await offer_of(first, "L4", 1)
    node = await first.launch(spec_for(offer))
    (pod_name,) = fake.names("pods", NS)
    fake.set_phase(NS, pod_name, "Running", ip="10.8.0.9")
    await first.close()

    second = make_provider()  # a restarted hub: no memory of the pod
    found = await second.list_nodes({TAG_HUB: "hub-a1", TAG_USER: "ana@example.org"})
    assert [n.id for n in found] == [node.id] and found[0].state == RUNNING and found[0].ip == "10.8.0.9"
    assert await second.list_nodes({TAG_HUB: "another-hub"}) == []
    assert (await second.status(node.id)).ip == "10.8.0.9"  # what the spawner's poll asks after a restart
    posts = sum(1 for m, p in fake.requests if m == "POST" and p.endswith("/pods"))
    again = await second.launch(spec_for(offer))  # the same request id: no second pod
    assert again.id == node.id and fake.names("pods", NS) == [pod_name]
    assert sum(1 for m, p in fake.requests if m == "POST" and p.endswith("/pods")) == posts
    await second.close()


async def test_throttling_is_retried_then_reported_as_transient(fake, make_provider):
    provider = make_provider()
    offer = await offer_of(provider, "L4", 1)
    fake.faults[("POST", "pods")] = [503]
    node = await provider.launch(spec_for(offer))
    assert node.state == PENDING
    fake.faults[("POST", "pods")] = [429, 503, 500]
    with pytest.raises(TransientError) as err:
        await provider.launch(spec_for(offer, request_id="req-2"))
    assert err.value.failover and "HTTP 500" in err.value.message
    await provider.close()


async def test_cluster_without_kuberay_fails_over_and_leaves_nothing(fake, make_provider):
    fake.ray_crd = False
    provider = make_provider()
    offer = await offer_of(provider, "L4", 1)
    with pytest.raises(CapacityError) as err:
        await provider.launch(spec_for(offer, ray=RayRequest(workers=1)))
    assert "KubeRay" in err.value.message and err.value.failover
    assert fake.names("pods", NS) == []
    await provider.close()


async def test_wrong_credentials_are_reported_without_the_secret(fake, make_provider, tmp_path):
    path = tmp_path / "bad-kubeconfig"
    fake.kubeconfig(path)
    path.write_text(path.read_text().replace(TOKEN, "wrong-token-value"))
    provider = make_provider(kubeconfig=str(path))
    reason = await provider.check_available()
    assert reason and "HTTP 401" in reason and "wrong-token-value" not in reason
    assert provider.offers() == []
    offer = next(iter(make_provider().offers()))
    with pytest.raises(CredentialsError) as err:
        await provider.launch(spec_for(offer))
    assert "wrong-token-value" not in str(err.value)
    await provider.close()


async def test_missing_kubeconfig_is_a_clear_reason(make_provider, tmp_path):
    provider = make_provider(kubeconfig=str(tmp_path / "nope"))
    reason = await provider.check_available()
    assert "gke-us" in reason and "kube config" in reason


@pytest.mark.parametrize("settings,field", [
    ({"flavour": "aks"}, "clusters.gke-us.flavour"),
    ({"pools": [{"name": "p"}]}, "clusters.gke-us.pools[0].gpu"),
    ({"pools": [{"name": "p", "gpu": "T4", "gpus_per_node": 0}]}, "clusters.gke-us.pools[0].gpus_per_node"),
    ({"price_per_gpu_hour": "cheap"}, "clusters.gke-us.price_per_gpu_hour"),
    ({"gpu_valuez": {}}, "clusters.gke-us"),
])
async def test_bad_cluster_settings_name_the_setting(make_provider, settings, field):
    reason = await make_provider(**settings).check_available()
    assert field in reason


def test_the_spawner_hands_the_ray_request_to_kubernetes():
    """Kubernetes builds the Ray cluster itself: the notebook spec carries the request,
    its command is not wrapped with a head launcher."""
    from cloudhop.spawner.offers import Offer
    from cloudhop.spawner.options import LaunchRequest
    import ray_calls as hooks

    provider = KubernetesProvider(config=Config())

    class Spawner:
        def provider(self, name):
            return provider

    offer = Offer(provider="kubernetes", region="gke-us", instance_type="l4-x1", gpu="L4", gpu_count=1)
    spec = spec_for(offer)
    ray = RayRequest(workers=2, gpu="L4", gpu_count=1)
    out = hooks.wrap_notebook_spec(Spawner(), spec, LaunchRequest(provider="kubernetes", ray=ray))
    assert out.ray == ray and out.cmd == spec.cmd
    assert not hooks.wants_ray(Spawner(), LaunchRequest(ray=ray), "kubernetes")


async def test_full_gpus_outside_any_pool_fail_fast_so_failover_moves_on(fake, make_provider):
    provider = make_provider()
    offer = await offer_of(provider, "T4", 1)
    fake.create("pods", "other-team", {"metadata": {"name": "busy"}, "spec": {"nodeName": "t4-node-1", "containers": [
        {"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}})
    fake.set_phase("other-team", "busy", "Running")
    assert (await offer_of(provider, "T4", 1)).available == 0
    with pytest.raises(CapacityError) as err:
        await provider.launch(spec_for(offer))
    assert err.value.failover and "no 1 x T4 free on cluster gke-us" in err.value.message
    assert fake.names("pods", NS) == []
    # a pool with no free node is left to the autoscaler
    pool_offer = next(o for o in provider.offers() if o.instance_type == "h100-pool-x8")
    assert (await provider.launch(spec_for(pool_offer, request_id="req-2"))).state == PENDING


async def test_a_bad_image_name_fails_the_launch_with_the_reason(fake, make_provider):
    provider = make_provider()
    node = await provider.launch(spec_for(await offer_of(provider, "L4", 1)))
    (pod_name,) = fake.names("pods", NS)
    fake.set_phase(NS, pod_name, "Pending")
    pod = fake.objects[("pods", NS, pod_name)]
    pod["status"]["containerStatuses"] = [{"name": "notebook", "ready": False, "restartCount": 0, "image": "x:<tag>",
                                           "imageID": "", "state": {"waiting": {"reason": "InvalidImageName",
                                           "message": 'Failed to apply default image tag "x:<tag>"'}}}]
    node = await provider.status(node.id)
    assert node.state == FAILED and "InvalidImageName" in node.detail


async def test_forms_reuse_a_fresh_cluster_read(fake, make_provider):
    provider = make_provider()
    provider.refresh_min_interval = 3600
    await provider.check_available()
    reads = sum(1 for m, p in fake.requests if p == "/api/v1/nodes")
    await provider.check_available()
    await provider.check_available()
    assert sum(1 for m, p in fake.requests if p == "/api/v1/nodes") == reads


async def test_the_users_image_wins_over_a_profiles_and_the_default(fake, make_provider, tmp_path):
    profile = tmp_path / "profiles.yaml"
    profile.write_text("- display_name: Torch\n  kubespawner_override: {image: example/torch:2}\n")
    provider = make_provider(profile_list=str(profile))
    await provider.check_available()
    offer = next(o for o in provider.offers() if o.instance_type == "torch")
    await provider.launch(spec_for(offer))
    await provider.launch(replace(spec_for(offer, request_id="req-2"), image="example/mine:3"))
    images = sorted(p["spec"]["containers"][0]["image"] for p in fake.pods(NS).values())
    assert images == ["example/mine:3", "example/torch:2"]


async def test_a_retried_launch_finishes_the_ray_cluster(fake, make_provider):
    provider = make_provider()
    provider.extra_labels = {"component": "singleuser-server"}
    offer = await offer_of(provider, "L4", 1)
    ray = RayRequest(workers=1, gpu="L4", gpu_count=1)
    fake.faults[("POST", "rayclusters")] = [500, 500, 500]  # the first try dies between pod and RayCluster
    with pytest.raises(TransientError):
        await provider.launch(spec_for(offer, ray=ray))
    assert fake.names("pods", NS) == [] and fake.names("rayclusters", NS) == []  # nothing half-made
    node = await provider.launch(spec_for(offer, ray=ray))
    (ray_name,) = fake.names("rayclusters", NS)
    labels = fake.get("rayclusters", NS, ray_name)["spec"]["workerGroupSpecs"][0]["template"]["metadata"]["labels"]
    assert "component" not in labels and labels["cloudhop-role"] == "ray-worker"
    assert fake.get("pods", NS, node.id.split("/")[2])["metadata"]["labels"]["component"] == "singleuser-server"
    # a hub that died after creating the pod but before its RayCluster: the retry makes it
    fake.delete("rayclusters", NS, ray_name)
    again = await provider.launch(spec_for(offer, ray=ray))
    assert again.id == node.id and fake.names("rayclusters", NS) == [ray_name]


async def test_an_unreachable_cluster_is_not_retried_by_every_form(fake, make_provider):
    provider = make_provider()
    provider.refresh_min_interval = 3600
    fake.faults[("GET", "nodes")] = [503, 503, 503]
    first = await provider.check_available()
    assert "no Kubernetes cluster reachable" in first and "HTTP 503" in first
    calls = len(fake.requests)
    assert await provider.check_available() == first and len(fake.requests) == calls


# -- a Ray server's token and NetworkPolicy ---------------------------------------------


def _ray_objects(fake) -> tuple[str, str, dict, dict]:
    """(pod name, RayCluster name, its Secret, its NetworkPolicy) of the one Ray server."""
    (pod_name,) = fake.names("pods", NS)
    (ray_name,) = fake.names("rayclusters", NS)
    return (pod_name, ray_name, fake.get("secrets", NS, f"{ray_name}-token"),
            fake.get("networkpolicies", NS, ray_name))


def _mounted_secrets(spec: dict) -> set:
    return {v["secret"]["secretName"] for v in spec.get("volumes") or [] if v.get("secret")}


async def test_a_ray_server_gets_a_token_secret_owned_by_its_pod(fake, make_provider):
    provider = make_provider()
    offer = await offer_of(provider, "L4", 1)
    node = await provider.launch(spec_for(offer, ray=RayRequest(workers=1, gpu="L4", gpu_count=1)))
    pod_name, ray_name, secret, policy = _ray_objects(fake)
    pod = fake.get("pods", NS, pod_name)
    owner = [{"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod["metadata"]["uid"],
              "blockOwnerDeletion": True, "controller": False}]
    assert secret["metadata"]["ownerReferences"] == owner and secret["immutable"] is True
    token = fake.secret_data(NS, f"{ray_name}-token")["token"]
    assert len(token) >= 43  # 256 random bits
    assert policy["metadata"]["ownerReferences"] == owner
    # the notebook, the head and the workers mount it, and run Ray with token authentication
    rc = fake.get("rayclusters", NS, ray_name)
    specs = [pod["spec"], rc["spec"]["headGroupSpec"]["template"]["spec"],
             rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]]
    for spec in specs:
        assert _mounted_secrets(spec) == {f"{ray_name}-token"}
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"].startswith("/var/run/secrets/")
    # the server stops: the RayCluster, the Secret and the NetworkPolicy are deleted by name
    await provider.terminate(node.id)
    for resource in ("pods", "rayclusters", "secrets", "networkpolicies"):
        assert fake.names(resource, NS) == [], resource
    assert ("DELETE", f"/api/v1/namespaces/{NS}/secrets/{ray_name}-token") in fake.requests
    assert ("DELETE", f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/{ray_name}") in fake.requests


async def test_a_pod_deleted_without_the_hub_takes_its_ray_token(fake, make_provider):
    provider = make_provider()
    offer = await offer_of(provider, "L4", 1)
    await provider.launch(spec_for(offer, ray=RayRequest(workers=1)))
    pod_name, *_ = _ray_objects(fake)
    fake.delete("pods", NS, pod_name)  # e.g. kubectl delete pod: the garbage collector follows the owner
    for resource in ("rayclusters", "secrets", "networkpolicies"):
        assert fake.names(resource, NS) == [], resource


async def test_a_restarted_hub_keeps_the_clusters_token(fake, make_provider):
    first = make_provider()
    offer = await offer_of(first, "L4", 1)
    ray = RayRequest(workers=1, gpu="L4", gpu_count=1)
    node = await first.launch(spec_for(offer, ray=ray))
    _, ray_name, secret, _ = _ray_objects(fake)
    token = fake.secret_data(NS, f"{ray_name}-token")["token"]
    await first.close()

    second = make_provider()  # a restarted hub, from the state's node id alone
    assert (await second.status(node.id)).id == node.id
    fake.delete("rayclusters", NS, ray_name)  # the first try stopped before its RayCluster
    again = await second.launch(spec_for(offer, ray=ray))  # the same request id
    assert again.id == node.id
    assert fake.secret_data(NS, f"{ray_name}-token")["token"] == token
    assert fake.get("secrets", NS, f"{ray_name}-token")["metadata"]["uid"] == secret["metadata"]["uid"]
    assert _mounted_secrets(fake.get("rayclusters", NS, ray_name)["spec"]["headGroupSpec"]["template"]["spec"]) \
        == {f"{ray_name}-token"}
    await second.terminate(node.id)
    assert fake.names("secrets", NS) == [] and fake.names("networkpolicies", NS) == []


async def test_a_failed_ray_launch_leaves_no_token_behind(fake, make_provider):
    fake.ray_crd = False
    provider = make_provider()
    offer = await offer_of(provider, "L4", 1)
    with pytest.raises(CapacityError):
        await provider.launch(spec_for(offer, ray=RayRequest(workers=1)))
    assert fake.names("secrets", NS) == [] and fake.names("networkpolicies", NS) == []
    # deleted by the provider, not only by the garbage collector following the pod
    assert any(m == "DELETE" and "/secrets/" in p for m, p in fake.requests)


async def test_without_rights_on_the_guards_a_stop_still_deletes_the_pod(fake, make_provider):
    """A hub whose RBAC predates the Secret's and NetworkPolicy's rules still stops a
    server; the owner references take what it could not delete."""
    provider = make_provider()
    offer = await offer_of(provider, "L4", 1)
    node = await provider.launch(spec_for(offer, ray=RayRequest(workers=0)))
    fake.faults[("DELETE", "secrets")] = [403]
    fake.faults[("DELETE", "networkpolicies")] = [403]
    await provider.terminate(node.id)
    for resource in ("pods", "rayclusters", "secrets", "networkpolicies"):
        assert fake.names(resource, NS) == [], resource


async def test_the_network_policy_can_be_turned_off(fake, make_kube_provider):
    provider = make_kube_provider()
    provider.ray_network_policy = False
    offer = await offer_of(provider, "L4", 1)
    node = await provider.launch(spec_for(offer, ray=RayRequest(workers=0)))
    assert fake.names("networkpolicies", NS) == [] and len(fake.names("secrets", NS)) == 1
    await provider.terminate(node.id)
    assert fake.names("secrets", NS) == []
