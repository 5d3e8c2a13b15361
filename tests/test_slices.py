"""GPU slices on the local provider, with real processes and the fake NVML: MIG devices
offered one per server, whole GPUs time-shared by up to N servers, each server seeing
only its slice, and group policy allowing slices by name."""

from __future__ import annotations

import time
from collections import Counter

import psutil
import pytest

from cloudhop.spawner.gpus import detect_gpus
from cloudhop.spawner.offers import Offer, gpu_label
from cloudhop.spawner.policy import Policy, PolicyError, validate_request
from cloudhop.spawner.providers.base import TAG_HUB, TAG_USER, CapacityError, LaunchSpec
from cloudhop.spawner.providers.local import LocalProvider
from fakes.nvml import fake_env, mig_gpu

SLEEPER = ["/bin/sh", "-c", "exec sleep 300"]
MIG = "A100-80GB-MIG-1g.10gb"
SHARED = "L4-shared"
L4 = {"name": "NVIDIA L4", "memory_gib": 22.5}


@pytest.fixture
def machine(monkeypatch):
    """Two A100s in MIG mode (7 x 1g.10gb each), one A100 that could be but is not, and
    two L4s."""
    gpus = [mig_gpu(0), mig_gpu(1), {**mig_gpu(2), "mig_mode": 0},
            {**L4, "uuid": "GPU-fake-0003"}, {**L4, "uuid": "GPU-fake-0004"}]
    for k, v in fake_env(*gpus).items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def provider(tmp_path, machine):
    p = LocalProvider(default_root=str(tmp_path / "ws"), nvml_module="fakes.nvml", stop_timeout=3,
                      isolation="none",
                      regions={"mig": {"gpus": "0,1,2"}, "shared": {"gpus": "3,4", "share_gpus": 4}})
    yield p
    for rec in p._records():
        p._kill_tree(rec)


def offer(p, gpu, region=None) -> Offer:
    return next(o for o in p.offers() if o.gpu == gpu and (region is None or o.region == region))


def spec(o, rid, user):
    return LaunchSpec(request_id=rid, offer=o, cmd=SLEEPER, env={"PATH": "/usr/bin:/bin"},
                      tags={TAG_HUB: "hub-slices", TAG_USER: user}, port=9999)


def test_mig_mode_off_reports_the_whole_gpu(machine):
    found = {g.index: g for g in detect_gpus("fakes.nvml")}
    assert [i for i in found if i.startswith("0/")] == [f"0/{j}" for j in range(7)]
    assert found["0/3"].model == MIG and found["0/3"].memory_gib == 9.8 and found["0/3"].is_mig
    assert found["2"].model == "A100-80GB" and not found["2"].is_mig, "MIG-capable, MIG off: a whole GPU"


def test_slices_are_offered_with_their_memory_and_share(provider):
    offers = provider.offers()
    mig = [o for o in offers if o.gpu == MIG]
    assert [(o.gpu_count, o.available, o.gpu_memory_gib) for o in mig] == [(1, 14, 9.8)], \
        "one MIG slice per server (CUDA uses one MIG device per process)"
    assert mig[0].to_dict()["gpu_label"] == "A100-80GB 1g.10gb"
    shared = [o for o in offers if o.region == "shared" and o.gpu != "none"]
    assert [(o.gpu, o.gpu_count, o.available, o.gpu_shared_by) for o in shared] == [(SHARED, 1, 8, 4)], \
        "a shared region offers its whole GPUs only as shares"
    assert shared[0].to_dict()["gpu_label"] == "L4 (shared by up to 4)"
    assert "8 of 8 shares free" in shared[0].note
    assert ("mig", "A100-80GB", 1) in {(o.region, o.gpu, o.gpu_count) for o in offers}
    assert gpu_label("T4") == "T4"


def exec_environ(pid: int) -> dict:
    """The environment a launched server runs with, read once its process has exec'd (a
    child read before that still shows its parent's, or an empty one)."""
    for _ in range(200):
        env = psutil.Process(pid).environ()
        if "CLOUDHOP_NODE_ID" in env:  # set by the local provider for every node
            return env
        time.sleep(0.05)
    return psutil.Process(pid).environ()


async def test_fourteen_mig_and_eight_shared_servers_each_see_only_their_slice(provider):
    nodes = []
    for i in range(14):
        nodes.append(await provider.launch(spec(offer(provider, MIG), f"mig-{i}", f"student{i}")))
    for i in range(8):
        nodes.append(await provider.launch(spec(offer(provider, SHARED), f"share-{i}", f"student{14 + i}")))
    seen = [exec_environ(n.info["pid"]) for n in nodes]
    devices = [env["CUDA_VISIBLE_DEVICES"] for env in seen]
    assert all("," not in d for d in devices), "each server sees one device"

    mig = devices[:14]
    assert sorted(mig) == sorted(f"MIG-fake-{i:04d}-{j}" for i in (0, 1) for j in range(7)), \
        "each MIG server sees its own MIG UUID, no two the same"
    assert all("CLOUDHOP_GPU_SHARED_BY" not in env for env in seen[:14])

    shared = devices[14:]
    assert Counter(shared) == {"GPU-fake-0003": 4, "GPU-fake-0004": 4}, "spread over both L4s, 4 each"
    assert all(env["CLOUDHOP_GPU_SHARED_BY"] == "4" for env in seen[14:]), "each server is told its share"
    assert all(n.info["shared_by"] == 4 for n in nodes[14:])
    assert "GPU-fake-0002" not in devices, "the A100 not in MIG mode was not touched"

    assert offer(provider, MIG).available == 0 and offer(provider, SHARED).available == 0
    with pytest.raises(CapacityError, match="have 4 servers each"):
        await provider.launch(spec(offer(provider, SHARED), "share-9", "late"))
    with pytest.raises(CapacityError, match="only 0"):
        await provider.launch(spec(offer(provider, MIG), "mig-15", "late"))

    await provider.terminate(nodes[14].id)  # one share frees one seat on its GPU
    assert offer(provider, SHARED).available == 1
    again = await provider.launch(spec(offer(provider, SHARED), "share-10", "late"))
    assert again.info["gpus"] == [shared[0]], "the freed seat is the one given"


def test_share_gpus_is_checked(tmp_path):
    for bad in (0, "4", 1.5, True, 65):
        with pytest.raises(Exception, match=r"regions\['x'\]\['share_gpus'\] must be a whole number"):
            LocalProvider(default_root=str(tmp_path), regions={"x": {"share_gpus": bad}})


def test_group_policy_allows_slices_by_name(provider):
    offers = provider.offers()
    policy = Policy(groups={"students": {"gpus": [SHARED, "*-MIG-1g.*"]}})
    allowed = {o.gpu for o in policy.filter_offers(offers, ["students"])}
    assert allowed == {SHARED, MIG}, "slices by name and by pattern; no whole GPU, no CPU"
    assert validate_request({"gpu": MIG, "gpu_count": 1}, offers, policy, ["students"]).gpu == MIG
    with pytest.raises(PolicyError) as err:
        validate_request({"gpu": "A100-80GB", "gpu_count": 1}, offers, policy, ["students"])
    assert err.value.status == 403 and err.value.rule == "gpus" and err.value.field == "gpu"
    assert "'A100-80GB' is not allowed for group 'students'" in err.value.message
    assert f"allowed GPUs: {SHARED}, *-MIG-1g.*" in err.value.message
