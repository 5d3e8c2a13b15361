"""GPU slices on Kubernetes: the NVIDIA device plugin's MIG resources and time-sliced
GPUs become one-per-server offers whose pods ask for the slice's resource."""

from __future__ import annotations

from cloudhop.spawner.kube.cluster import cluster_offers, parse_cluster
from cloudhop.spawner.kube.flavours import node_slices

PRODUCT = "nvidia.com/gpu.product"


def node(name, allocatable, labels):
    return {"metadata": {"name": name, "labels": labels}, "spec": {},
            "status": {"allocatable": allocatable, "conditions": [{"type": "Ready", "status": "True"}]}}


def pod(node_name, resource, n):
    return {"spec": {"nodeName": node_name, "containers": [{"resources": {"limits": {resource: str(n)}}}]},
            "status": {"phase": "Running"}}


def test_node_slices():
    assert node_slices({"nvidia.com/mig-1g.10gb": "7", "nvidia.com/gpu": "0"}, {}) == [
        ("nvidia.com/mig-1g.10gb", "MIG-1g.10gb", 7)]
    assert node_slices({"nvidia.com/gpu": "8"}, {"nvidia.com/gpu.replicas": "4"}) == [("nvidia.com/gpu", "shared", 8)]
    assert node_slices({"nvidia.com/gpu.shared": "8"}, {"nvidia.com/gpu.replicas": "4"}) == [
        ("nvidia.com/gpu.shared", "shared", 8)]
    assert node_slices({"nvidia.com/gpu": "2"}, {}) == [], "whole GPUs are no slices"


def test_mig_and_time_sliced_nodes_are_offered_as_slices():
    cluster = parse_cluster("onprem", {"flavour": "nvidia", "price_per_gpu_hour": 7.0})
    nodes = [
        node("mig", {"nvidia.com/mig-1g.10gb": "7", "nvidia.com/mig-3g.40gb": "2"}, {PRODUCT: "NVIDIA-A100-SXM4-80GB"}),
        node("ts", {"nvidia.com/gpu": "8"}, {PRODUCT: "NVIDIA-L4-SHARED", "nvidia.com/gpu.replicas": "4"}),
        node("whole", {"nvidia.com/gpu": "2"}, {PRODUCT: "NVIDIA-L4"}),
    ]
    pods = [pod("mig", "nvidia.com/mig-1g.10gb", 1), pod("ts", "nvidia.com/gpu", 3)]
    got = {o.gpu: (o, plan) for o, plan in cluster_offers(cluster, nodes, pods)}

    mig, plan = got["A100-80GB-MIG-1g.10gb"]
    assert (mig.gpu_count, mig.available, mig.price_hour) == (1, 6, 1.0), "one of seven compute slices"
    assert plan.resource_limits() == {"nvidia.com/mig-1g.10gb": "1"}
    assert plan.node_selector == {PRODUCT: "NVIDIA-A100-SXM4-80GB"}
    assert got["A100-80GB-MIG-3g.40gb"][0].available == 2
    assert mig.to_dict()["gpu_label"] == "A100-80GB 1g.10gb"

    shared, plan = got["L4-shared"]
    assert (shared.gpu_count, shared.available, shared.gpu_shared_by, shared.price_hour) == (1, 5, 4, 1.75)
    assert plan.resource_limits() == {"nvidia.com/gpu": "1"}
    assert plan.node_selector == {PRODUCT: "NVIDIA-L4-SHARED"}, "the time-sliced node's own label"
    assert shared.to_dict()["gpu_label"] == "L4 (shared by up to 4)"

    whole = [o for o, _ in cluster_offers(cluster, nodes, pods) if o.gpu == "L4"]
    assert {o.gpu_count for o in whole} == {1, 2} and all(o.available <= 2 for o in whole), \
        "the time-sliced node's 8 shares are not whole GPUs"
