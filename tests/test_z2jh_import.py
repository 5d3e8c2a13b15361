"""Zero-to-JupyterHub profile lists (published examples in tests/data/z2jh) as offers."""

from __future__ import annotations

from pathlib import Path

import pytest
from traitlets.config import Config

from cloudhop.spawner.kube import manifests
from cloudhop.spawner.kube import profiles as z2jh
from cloudhop.spawner.kube.cluster import parse_cluster, cluster_offers
from cloudhop.spawner.kube.flavours import GPU_TOLERATION
from cloudhop.spawner.options import OptionError, parse_options
from cloudhop.spawner.providers.kubernetes import KubernetesProvider

DATA = Path(__file__).parent / "data" / "z2jh"


def imported(name: str) -> dict:
    return {p.slug: p for p in z2jh.import_profiles(z2jh.load_profile_list(DATA / name))}


def test_z2jh_docs_gpu_server_profile():
    (profile,) = imported("z2jh-gpu-server.yaml").values()
    assert profile.slug == "gpu-server"  # what KubeSpawner generates from "GPU Server"
    assert profile.plan.gpu_count == 1
    assert profile.plan.gpu == z2jh.UNKNOWN_GPU  # the profile does not say which GPU
    assert profile.plan.resource_limits() == {"nvidia.com/gpu": "1"}
    assert GPU_TOLERATION in profile.plan.tolerations
    offer = z2jh.profile_offer(profile, provider="kubernetes", region="campus", price_per_gpu_hour=0.5)
    assert (offer.key, offer.gpu, offer.gpu_count, offer.price_hour) == ("kubernetes/campus/gpu-server", "GPU", 1, 0.5)
    assert "Spawns a notebook server with access to a GPU" in offer.note


def test_2i2c_t4_profile_with_image_choices():
    profiles = imported("2i2c-t4-profile.yaml")  # z2jh values nested under a parent chart
    default = profiles["nvidia-tesla-t4-16-gb-4-cpus"]
    other = profiles["nvidia-tesla-t4-16-gb-4-cpus:tensorflow"]
    for p in (default, other):
        assert p.plan.gpu == "T4"  # from node.kubernetes.io/instance-type: g4dn.xlarge
        assert p.plan.gpu_count == 1
        assert p.plan.node_selector == {"node.kubernetes.io/instance-type": "g4dn.xlarge"}
        assert p.plan.environment == {"NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}
        assert p.plan.mem_guarantee == "14G" and p.plan.mem_limit is None
        assert p.ignored == ()
    assert default.default_choices and default.plan.image == "pangeo/pytorch-notebook:<tag>"
    assert other.plan.image == "pangeo/ml-notebook:<tag>" and other.choices == {"image": "tensorflow"}
    offer = z2jh.profile_offer(default, provider="kubernetes", region="eks-west")
    assert offer.memory_gib == 13.0  # 14 GB in GiB
    pod = manifests.notebook_pod("p", plan=default.plan, image=default.plan.image, cmd=["jupyterhub-singleuser"],
                                 env={}, port=8888, labels={}, annotations={})
    (c,) = pod["spec"]["containers"]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert c["resources"]["requests"] == {"memory": "14G"}
    assert pod["spec"]["nodeSelector"] == {"node.kubernetes.io/instance-type": "g4dn.xlarge"}
    assert {e["name"]: e["value"] for e in c["env"]} == {"NVIDIA_DRIVER_CAPABILITIES": "compute,utility"}


def test_misplaced_selector_is_reported_not_guessed():
    profiles = imported("2i2c-t4-profile-misplaced-selector.yaml")
    p = profiles["large-gpu"]
    assert p.plan.gpu == z2jh.UNKNOWN_GPU and p.plan.node_selector == {}
    assert any("node.kubernetes.io/instance-type" in why and "node_selector" in why for why in p.ignored)
    assert any(why.startswith("profile_options.gpu") for why in p.ignored)


def test_kubespawner_demo_profiles_merge_choices_and_report_the_rest():
    profiles = imported("kubespawner-demo-profiles.yaml")
    assert list(profiles) == ["demo-1", "demo-1:base", "demo-2"]
    assert profiles["demo-1"].plan.image == "jupyter/minimal-notebook:latest"  # the default choice
    assert profiles["demo-1:base"].plan.image == "jupyter/base-notebook:latest"
    assert profiles["demo-1"].default and not profiles["demo-2"].default
    assert any("unlisted_choice" in why for why in profiles["demo-1"].ignored)
    assert any(why.startswith("default_url") for why in profiles["demo-1"].ignored)
    demo2 = profiles["demo-2"].plan  # a GPU asked for through extra_resource_guarantees
    assert demo2.gpu_count == 1 and demo2.resource_limits() == {"nvidia.com/gpu": "1"}


def test_runai_profiles_counts_and_slugs():
    profiles = imported("runai-gpu-profiles.yaml")
    assert [(s, p.plan.gpu_count) for s, p in profiles.items()] == [("ra-0-5", 0), ("ra-1", 1), ("ra-2", 2)]
    assert profiles["ra-1"].default
    assert profiles["ra-0-5"].plan.extra_annotations == {"gpu-fraction": "0.5"}
    assert all(any(why.startswith("tag:") for why in p.ignored) for p in profiles.values())


def test_profiles_become_offers_the_user_can_pick(tmp_path):
    config = Config()
    config.KubernetesProvider.clusters = {"campus": {
        "kubeconfig": str(tmp_path / "none"), "profile_list": str(DATA / "runai-gpu-profiles.yaml"),
        "price_per_gpu_hour": 1.25, "node_offers": False,
    }}
    provider = KubernetesProvider(config=config)
    offers = {o.instance_type: o for o in provider.offers()}  # before any cluster read
    assert {"cpu", "ra-0-5", "ra-1", "ra-2"} <= set(offers)
    assert offers["ra-2"].gpu_count == 2 and offers["ra-2"].price_hour == 2.5
    request = parse_options({"provider": "kubernetes", "region": "campus", "gpu": "GPU", "gpu_count": 2,
                             "instance_type": "ra-2"}, list(offers.values()), providers=["kubernetes"])
    assert request.instance_type == "ra-2"
    with pytest.raises(OptionError) as err:
        parse_options({"provider": "kubernetes", "region": "campus", "gpu": "GPU", "gpu_count": 1,
                       "instance_type": "ra-9"}, list(offers.values()), providers=["kubernetes"])
    assert err.value.field == "instance_type" and "ra-1" in err.value.message


def test_profile_list_from_the_hubs_kubespawner_config(tmp_path):
    config = Config()
    config.KubeSpawner.profile_list = z2jh.load_profile_list(DATA / "z2jh-gpu-server.yaml")
    config.KubernetesProvider.clusters = {"z2jh": {"kubeconfig": str(tmp_path / "none"), "profile_list": "KubeSpawner"}}
    offers = {o.instance_type: o for o in KubernetesProvider(config=config).offers()}
    assert offers["gpu-server"].gpu_count == 1


def test_profile_availability_counts_matching_free_nodes():
    cluster = parse_cluster("eks", {"flavour": "eks"})
    nodes = [
        {"metadata": {"name": "g4-a", "labels": {"node.kubernetes.io/instance-type": "g4dn.xlarge"}},
         "status": {"allocatable": {"nvidia.com/gpu": "1"}, "conditions": [{"type": "Ready", "status": "True"}]}},
        {"metadata": {"name": "g4-b", "labels": {"node.kubernetes.io/instance-type": "g4dn.xlarge"}},
         "status": {"allocatable": {"nvidia.com/gpu": "1"}, "conditions": [{"type": "Ready", "status": "True"}]}},
    ]
    busy = [{"spec": {"nodeName": "g4-a", "containers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
             "status": {"phase": "Running"}}]
    profiles = z2jh.import_profiles(z2jh.load_profile_list(DATA / "2i2c-t4-profile.yaml"))
    offers = {o.instance_type: o for o, _ in cluster_offers(cluster, nodes, busy, profiles=profiles)}
    assert offers["nvidia-tesla-t4-16-gb-4-cpus"].available == 1


@pytest.mark.parametrize("bad,field", [
    ("- {description: no name}", "profileList[0]"),
    ("- display_name: x\n  kubespawner_override: {extra_resource_limits: {nvidia.com/gpu: one}}", "nvidia.com/gpu"),
    ("- display_name: x\n  kubespawner_override: {cpu_limit: lots}", "cpu_limit"),
    ("singleuser: {profileList: {a: [1}", "YAML"),
])
def test_bad_profile_lists_name_what_is_wrong(bad, field):
    with pytest.raises(z2jh.ProfileImportError) as err:
        z2jh.import_profiles(z2jh.load_profile_list(bad))
    assert field in str(err.value)


async def test_bad_profile_list_reaches_the_operator_through_check_available(tmp_path):
    config = Config()
    config.KubernetesProvider.clusters = {"c1": {"profile_list": "- display_name: x\n  kubespawner_override: {cpu_limit: lots}\n"}}
    reason = await KubernetesProvider(config=config).check_available()
    assert "clusters.c1.profile_list" in reason and "cpu_limit" in reason
