"""Pod, PVC and RayCluster manifests for each GPU flavour, read back field by field."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from cloudhop.spawner.kube import labels as kl
from cloudhop.spawner.kube import manifests
from cloudhop.spawner.kube.cluster import parse_cluster
from cloudhop.spawner.kube.flavours import EKS, GKE, NVIDIA, GPU_TOLERATION, model_from_product
from cloudhop.spawner.kube.plan import gpu_plan

TAGS = {"cloudhop-hub": "hub-1", "cloudhop-user": "ana@example.org", "cloudhop-server": "gpu box",
        "cloudhop-role": "notebook", "cloudhop-request": "req-1"}

# (flavour, GPU model, count, the node selector the pod must carry, or an In expression)
CASES = [
    (GKE, "T4", 1, {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}, None),
    (GKE, "L4", 2, {"cloud.google.com/gke-accelerator": "nvidia-l4"}, None),
    (GKE, "H100", 8, {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}, None),
    (GKE, "A100-80GB", 4, {"cloud.google.com/gke-accelerator": "nvidia-a100-80gb"}, None),
    (EKS, "T4", 1, {"karpenter.k8s.aws/instance-gpu-name": "t4"}, None),
    (EKS, "A10G", 4, {"karpenter.k8s.aws/instance-gpu-name": "a10g"}, None),
    (EKS, "H100", 8, {"karpenter.k8s.aws/instance-gpu-name": "h100"}, None),
    (EKS, "A100-80GB", 8, {"karpenter.k8s.aws/instance-gpu-name": "a100",
                           "karpenter.k8s.aws/instance-gpu-memory": "81920"}, None),
    (NVIDIA, "L4", 1, {"nvidia.com/gpu.product": "NVIDIA-L4"}, None),
    (NVIDIA, "A100-80GB", 2, {}, ("nvidia.com/gpu.product", ["NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"])),
    (NVIDIA, "H100", 8, {}, ("nvidia.com/gpu.product", ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe", "NVIDIA-H100-NVL"])),
]


def _pod(plan, **kw):
    labels, annotations = kl.tag_labels(TAGS)
    args = dict(plan=plan, image="example/gpu-notebook:2026.11", cmd=["jupyterhub-singleuser", "--debug"],
                env={"JUPYTERHUB_API_TOKEN": "server-token", "CLOUDHOP_GPU": plan.gpu}, port=8888,
                labels=labels, annotations=annotations, pvc_name="cloudhop-ws-ana-1234")
    args.update(kw)
    return manifests.notebook_pod("cloudhop-ana-1234", **args)


@pytest.mark.parametrize("flavour,gpu,count,selector,expression", CASES,
                         ids=[f"{c[0].name}-{c[1]}x{c[2]}" for c in CASES])
def test_gpu_pod_for_each_flavour(flavour, gpu, count, selector, expression):
    pod = _pod(gpu_plan(flavour, gpu, count))
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": str(count)}
    assert spec.get("nodeSelector", {}) == selector
    terms = spec.get("affinity", {}).get("nodeAffinity", {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms")
    if expression:
        key, values = expression
        assert terms == [{"matchExpressions": [{"key": key, "operator": "In", "values": values}]}]
    else:
        assert terms is None
    assert spec["tolerations"] == [GPU_TOLERATION]
    # workspace, image, command, env, labels
    assert spec["volumes"] == [{"name": "workspace", "persistentVolumeClaim": {"claimName": "cloudhop-ws-ana-1234"}}]
    assert container["volumeMounts"] == [{"name": "workspace", "mountPath": "/home/jovyan"}]
    assert container["image"] == "example/gpu-notebook:2026.11"
    assert container["args"] == ["jupyterhub-singleuser", "--debug"]
    assert container["ports"] == [{"containerPort": 8888, "name": "notebook-port"}]
    assert {e["name"]: e["value"] for e in container["env"]}["CLOUDHOP_GPU"] == gpu
    assert spec["automountServiceAccountToken"] is False  # user code gets no API token
    meta = pod["metadata"]
    assert meta["labels"]["cloudhop-user"] != "ana@example.org"  # not a valid label value
    assert kl.tags_from_metadata(meta) == TAGS
    json.dumps(pod)  # plain JSON, ready for the API


def test_cpu_pod_has_no_gpu_selector_or_toleration():
    pod = _pod(gpu_plan(GKE, "none", 0))
    assert "nodeSelector" not in pod["spec"] and "tolerations" not in pod["spec"]
    assert "nvidia.com/gpu" not in pod["spec"]["containers"][0]["resources"]["limits"]


def test_spot_adds_the_flavours_spot_selector_only_when_asked():
    gke = gpu_plan(GKE, "L4", 1, spot=True)
    assert _pod(gke.with_spot(True))["spec"]["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-l4", "cloud.google.com/gke-spot": "true"}
    assert "cloud.google.com/gke-spot" not in _pod(gke.with_spot(False))["spec"]["nodeSelector"]
    eks = gpu_plan(EKS, "L4", 1, spot=True).with_spot(True)
    assert _pod(eks)["spec"]["nodeSelector"]["karpenter.sh/capacity-type"] == "spot"


def test_cluster_overrides_label_and_values_and_tolerations():
    cluster = parse_cluster("onprem", {
        "flavour": "nvidia", "gpu_label": "example.org/gpu", "gpu_values": {"A100": ["a100-40", "a100-pcie"]},
        "gpu_tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
    })
    spec = _pod(cluster.plan_for_gpu("A100", 2))["spec"]
    assert spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": "example.org/gpu", "operator": "In", "values": ["a100-40", "a100-pcie"]}]}]
    assert spec["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]


def test_pool_selector_replaces_the_flavour_selector():
    cluster = parse_cluster("eks", {"flavour": "eks", "pools": [
        {"name": "g5", "gpu": "A10G", "gpus_per_node": 4, "selector": {"eks.amazonaws.com/nodegroup": "g5-12xl"}}]})
    spec = _pod(cluster.plan_for_gpu("A10G", 4, cluster.pools[0]))["spec"]
    assert spec["nodeSelector"] == {"eks.amazonaws.com/nodegroup": "g5-12xl"}
    assert spec["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "4"}


def test_workspace_pvc():
    labels, annotations = kl.tag_labels({"cloudhop-user": "ana@example.org"})
    pvc = manifests.workspace_pvc("cloudhop-ws-ana", size="20Gi", labels=labels, annotations=annotations,
                                  storage_class="premium-rwo")
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["spec"]["resources"]["requests"] == {"storage": "20Gi"}
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["storageClassName"] == "premium-rwo"
    assert kl.tags_from_metadata(pvc["metadata"]) == {"cloudhop-user": "ana@example.org"}


@pytest.mark.parametrize("flavour,gpu,count,selector,expression", CASES[::2],
                         ids=[f"{c[0].name}-{c[1]}x{c[2]}" for c in CASES[::2]])
def test_raycluster_workers_have_the_requested_gpus(flavour, gpu, count, selector, expression):
    labels = {"cloudhop-user": "ana-example.org-1", "cloudhop.io/pod": "cloudhop-ana-1234"}
    rc = manifests.ray_cluster(
        "cloudhop-ray-ana", image="example/gpu-notebook:2026.11", ray_version="2.60.0", workers=3,
        worker_plan=gpu_plan(flavour, gpu, count), labels=labels, annotations={},
        owner={"name": "cloudhop-ana-1234", "uid": "0b7c-uid"},
    )
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    assert rc["spec"]["rayVersion"] == "2.60.0"
    assert rc["metadata"]["ownerReferences"] == [{
        "apiVersion": "v1", "kind": "Pod", "name": "cloudhop-ana-1234", "uid": "0b7c-uid",
        "blockOwnerDeletion": True, "controller": False}]
    head = rc["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # tasks go to the GPU workers
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    (group,) = rc["spec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 3
    assert group["rayStartParams"] == {"num-gpus": str(count)}
    wspec = group["template"]["spec"]
    (worker,) = wspec["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == str(count)
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == str(count)
    assert worker["image"] == "example/gpu-notebook:2026.11"
    assert wspec.get("nodeSelector", {}) == selector
    if expression:
        terms = wspec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert terms[0]["matchExpressions"][0]["values"] == expression[1]
    assert wspec["tolerations"] == [GPU_TOLERATION]
    assert group["template"]["metadata"]["labels"] == labels
    assert wspec["automountServiceAccountToken"] is False


def test_raycluster_without_workers_lets_the_head_run_tasks():
    rc = manifests.ray_cluster("r", image="i", ray_version="2.60.0", workers=0,
                               worker_plan=gpu_plan(GKE, "none", 0), labels={}, annotations={})
    assert "num-cpus" not in rc["spec"]["headGroupSpec"]["rayStartParams"]
    assert rc["spec"]["workerGroupSpecs"][0]["replicas"] == 0
    assert "ownerReferences" not in rc["metadata"]
    assert manifests.ray_address("r", "jhub") == "ray://r-head-svc.jhub.svc.cluster.local:10001"


def test_label_values_and_names_are_valid_and_stable():
    import re

    valid = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
    for value in ["ana@example.org", "x" * 80, "-lead-", "日本語", "", "plain-name"]:
        out = kl.label_value(value)
        assert valid.match(out) and len(out) <= 63
        assert kl.label_value(value) == out
    assert kl.label_value("plain-name") == "plain-name"
    assert kl.label_value("a@b.org") != kl.label_value("a-b.org")
    name = kl.object_name("cloudhop", "Ana.Lovelace@Example.org", "my server " * 10, key="req")
    assert re.match(r"^[a-z]([-a-z0-9]*[a-z0-9])?$", name) and len(name) <= 63
    assert name != kl.object_name("cloudhop", "Ana.Lovelace@Example.org", "my server " * 10, key="req2")


@pytest.mark.parametrize("product,model", [
    ("NVIDIA-A100-SXM4-80GB", "A100-80GB"), ("NVIDIA-A100-SXM4-40GB", "A100"), ("Tesla-T4", "T4"),
    ("NVIDIA-H100-80GB-HBM3", "H100"), ("nvidia-l4", "L4"), ("NVIDIA-L40S", "L40S"), ("NVIDIA-A10G", "A10G"),
    ("Tesla-V100-SXM2-32GB", "V100-32GB"), ("NVIDIA-H200", "H200"),
])
def test_gpu_product_strings_map_to_catalog_models(product, model):
    assert model_from_product(product) == model
    assert NVIDIA.gpu_from_labels({"nvidia.com/gpu.product": product}) == model


async def test_manifests_use_only_fields_the_kubernetes_api_knows():
    """Round trip through the client's own models: a misspelt or misplaced field would
    be dropped on the way in and show up as a difference."""
    from types import SimpleNamespace

    from kubernetes_asyncio.client import ApiClient

    plan = gpu_plan(NVIDIA, "A100-80GB", 2)
    pod = _pod(plan)
    labels, annotations = kl.tag_labels(TAGS)
    pvc = manifests.workspace_pvc("ws", size="10Gi", labels=labels, annotations=annotations, storage_class="fast")
    async with ApiClient() as api:
        for body, kind in ((pod, "V1Pod"), (pvc, "V1PersistentVolumeClaim")):
            model = api.deserialize(SimpleNamespace(data=json.dumps(body)), kind)
            assert manifests.to_json(model) == body
        # the RayCluster's pod templates are Pod specs too
        rc = manifests.ray_cluster("r", image="i", ray_version="2.60.0", workers=2, worker_plan=plan,
                                   labels=labels, annotations={})
        for template in (rc["spec"]["headGroupSpec"]["template"], rc["spec"]["workerGroupSpecs"][0]["template"]):
            model = api.deserialize(SimpleNamespace(data=json.dumps(template)), "V1PodTemplateSpec")
            assert manifests.to_json(model) == template


# -- a Ray server's token: a Secret, mounted as a file; its NetworkPolicy ---------------


def _token_mount(spec: dict, container: dict, secret: str) -> None:
    """``container`` of a pod ``spec`` reads the token from Secret ``secret`` as a
    read-only file and runs Ray with token authentication."""
    (volume,) = [v for v in spec["volumes"] if v["name"] == manifests.RAY_TOKEN_VOLUME]
    assert volume["secret"] == {"secretName": secret, "defaultMode": 0o400,
                                "items": [{"key": "token", "path": "token"}]}
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == manifests.RAY_TOKEN_VOLUME]
    assert mount == {"name": "ray-token", "mountPath": "/var/run/secrets/cloudhop/ray", "readOnly": True}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == "/var/run/secrets/cloudhop/ray/token" == manifests.RAY_TOKEN_PATH
    assert "RAY_AUTH_TOKEN" not in env
    # the image's non-root user reads the root-owned file through the pod's fsGroup
    assert spec["securityContext"]["fsGroup"] == manifests.RAY_TOKEN_FS_GROUP


def test_every_pod_of_a_ray_cluster_mounts_its_token():
    rc = manifests.ray_cluster("cloudhop-ray-ana", image="i", ray_version="2.60.0", workers=2,
                               worker_plan=gpu_plan(GKE, "L4", 1), labels={}, annotations={},
                               token_secret="cloudhop-ray-ana-token")
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]
    worker = rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    for spec in (head, worker):
        _token_mount(spec, spec["containers"][0], "cloudhop-ray-ana-token")
    # without a Secret (a caller that makes none) nothing is mounted
    bare = manifests.ray_cluster("r", image="i", ray_version="2.60.0", workers=0,
                                 worker_plan=gpu_plan(GKE, "none", 0), labels={}, annotations={})
    assert "volumes" not in bare["spec"]["headGroupSpec"]["template"]["spec"]


def test_the_notebook_pod_of_a_ray_server_mounts_the_token_beside_its_workspace():
    plan = gpu_plan(GKE, "L4", 1)
    pod = _pod(plan, env={"JUPYTERHUB_API_TOKEN": "server-token", "RAY_AUTH_MODE": "disabled"},
               ray_token_secret="cloudhop-ray-ana-token")
    (c,) = pod["spec"]["containers"]
    _token_mount(pod["spec"], c, "cloudhop-ray-ana-token")  # RAY_AUTH_MODE=token wins over the env's
    assert any(v.get("persistentVolumeClaim") for v in pod["spec"]["volumes"])
    # a profile's own fsGroup is kept
    kept = _pod(replace(plan, make_pod_kwargs={"fs_gid": 2000}), ray_token_secret="s")
    assert kept["spec"]["securityContext"]["fsGroup"] == 2000
    # a server without Ray has none of it
    plain = _pod(plan)
    assert manifests.RAY_TOKEN_VOLUME not in {v["name"] for v in plain["spec"]["volumes"]}
    assert "RAY_AUTH_MODE" not in {e["name"] for e in plain["spec"]["containers"][0]["env"]}


def test_the_token_secret_is_immutable_and_owned_by_the_notebook_pod():
    secret = manifests.ray_token_secret("cloudhop-ray-ana-token", "t0ken", labels={"a": "b"}, annotations={},
                                        owner={"name": "cloudhop-ana-1234", "uid": "0b7c-uid"})
    assert secret["kind"] == "Secret" and secret["type"] == "Opaque" and secret["immutable"] is True
    assert secret["data"] == {"token": "dDBrZW4="} and "stringData" not in secret
    assert secret["metadata"]["ownerReferences"] == [{
        "apiVersion": "v1", "kind": "Pod", "name": "cloudhop-ana-1234", "uid": "0b7c-uid",
        "blockOwnerDeletion": True, "controller": False}]
    assert manifests.ray_token_secret_name("cloudhop-ray-ana") == "cloudhop-ray-ana-token"


def test_the_network_policy_admits_only_the_peers():
    policy = manifests.ray_network_policy(
        "cloudhop-ray-ana", ray_pods={"cloudhop.io/pod": "p"}, peers={"cloudhop-request": "r"},
        labels={}, annotations={}, owner={"name": "p", "uid": "u"})
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["kind"] == "NetworkPolicy"
    assert policy["spec"] == {"podSelector": {"matchLabels": {"cloudhop.io/pod": "p"}},
                              "policyTypes": ["Ingress"],
                              "ingress": [{"from": [{"podSelector": {"matchLabels": {"cloudhop-request": "r"}}}]}]}
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "u"


async def test_ray_guard_manifests_use_only_fields_the_kubernetes_api_knows():
    """The Secret, the NetworkPolicy and the pods that mount the token, round-tripped
    through the client's models (a misspelt field would be dropped)."""
    from types import SimpleNamespace

    from kubernetes_asyncio.client import ApiClient

    plan = gpu_plan(NVIDIA, "A100-80GB", 2)
    owner = {"name": "p", "uid": "u"}
    rc = manifests.ray_cluster("r", image="i", ray_version="2.60.0", workers=2, worker_plan=plan,
                               labels={}, annotations={}, token_secret="r-token")
    bodies = [
        (manifests.ray_token_secret("r-token", "t", labels={}, annotations={}, owner=owner), "V1Secret"),
        (manifests.ray_network_policy("r", ray_pods={"a": "b"}, peers={"c": "d"}, labels={}, annotations={},
                                      owner=owner), "V1NetworkPolicy"),
        (_pod(plan, ray_token_secret="r-token"), "V1Pod"),
        (rc["spec"]["headGroupSpec"]["template"], "V1PodTemplateSpec"),
        (rc["spec"]["workerGroupSpecs"][0]["template"], "V1PodTemplateSpec"),
    ]
    async with ApiClient() as api:
        for body, kind in bodies:
            model = api.deserialize(SimpleNamespace(data=json.dumps(body)), kind)
            assert manifests.to_json(model) == body, kind
