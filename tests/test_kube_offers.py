"""Offers a cluster makes from its nodes and pools (pure: the API's node and pod JSON)."""

from __future__ import annotations

import pytest

from cloudhop.spawner.kube.cluster import ClusterConfigError, cluster_offers, parse_cluster


def node(name, gpus, labels, ready=True, unschedulable=False):
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"unschedulable": True} if unschedulable else {},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def holding(node_name, gpus, phase="Running"):
    return {"spec": {"nodeName": node_name, "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
            "status": {"phase": phase}}


def offers(cluster, nodes, pods):
    return {o.instance_type: o for o, _ in cluster_offers(cluster, nodes, pods)}


def test_nodes_join_their_pool_by_the_flavours_pool_label():
    cluster = parse_cluster("gke", {"flavour": "gke", "pools": [
        {"name": "a100", "gpu": "A100-80GB", "gpus_per_node": 8, "max_nodes": 3, "price_per_gpu_hour": 2.0}]})
    nodes = [node("a", 8, {"cloud.google.com/gke-accelerator": "nvidia-a100-80gb", "cloud.google.com/gke-nodepool": "a100"}),
             node("b", 8, {"cloud.google.com/gke-accelerator": "nvidia-a100-80gb", "cloud.google.com/gke-nodepool": "a100"},
                  ready=False)]
    got = offers(cluster, nodes, [holding("a", 6), holding("a", 2, phase="Succeeded")])
    assert sorted(k for k in got if k.startswith("a100")) == ["a100-x1", "a100-x2", "a100-x4", "a100-x8"]
    # node a: 2 free; node b not ready; one more node can still come up
    assert got["a100-x1"].available == 2 + 8 and got["a100-x2"].available == 1 + 4
    assert got["a100-x8"].available == 1 and got["a100-x8"].note == "0 free now; 1 more after pool a100 scales up"
    assert got["a100-x8"].price_hour == 16.0


def test_gpus_outside_pools_are_offered_per_model_and_count():
    cluster = parse_cluster("onprem", {"flavour": "nvidia", "price_per_gpu_hour": 0.5})
    nodes = [node("h1", 6, {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}),
             node("h2", 6, {"nvidia.com/gpu.product": "NVIDIA-H100-PCIe"}, unschedulable=True),
             node("cpu", 0, {})]
    got = offers(cluster, nodes, [])
    assert [k for k in got if k.startswith("h100")] == ["h100-x1", "h100-x2", "h100-x4", "h100-x6"]
    assert got["h100-x6"].available == 1 and got["h100-x6"].gpu == "H100" and got["h100-x6"].price_hour == 3.0
    assert got["cpu"].gpu_count == 0


def test_a_pool_is_offered_before_the_cluster_is_read_and_names_do_not_clash():
    cluster = parse_cluster("eks", {"flavour": "eks", "pools": [
        {"name": "l4", "gpu": "T4", "gpus_per_node": 1, "spot": True, "price_per_gpu_hour": 0.2}]})
    unread = offers(cluster, None, None)
    assert unread["l4-x1"].available is None and unread["l4-x1"].spot_price_hour == 0.2
    got = offers(cluster, [node("x", 1, {"karpenter.k8s.aws/instance-gpu-name": "l4"})], [])
    assert got["l4-x1"].gpu == "T4" and got["l4-nodes-x1"].gpu == "L4"


@pytest.mark.parametrize("raw,field", [
    ({"pools": [{"name": "p", "gpu": "T4", "max_nodes": -1}]}, "pools[0].max_nodes"),
    ({"pools": [{"name": "p", "gpu": "T4"}, {"name": "p", "gpu": "L4"}]}, "pools"),
    ({"pools": [{"name": "p", "gpu": "T4", "colour": "red"}]}, "pools[0]"),
    ({"gpu_values": ["A100"]}, "gpu_values"),
])
def test_bad_pool_settings_name_the_setting(raw, field):
    with pytest.raises(ClusterConfigError) as err:
        parse_cluster("c1", raw)
    assert f"clusters.c1.{field}" in str(err.value)
