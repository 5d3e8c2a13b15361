"""LocalProvider with real processes and a fake NVML: regions, GPU allocation,
idempotent launch, whole-tree stop, and re-discovery by a fresh provider instance."""

from __future__ import annotations

import json
import os
import time

import psutil
import pytest

from cloudhop.spawner.gpus import detect_gpus, model_name
from cloudhop.spawner.offers import Offer
from cloudhop.spawner.providers.base import TAG_HUB, TAG_USER, CapacityError, LaunchSpec
from cloudhop.spawner.providers.local import LocalProvider, safe_dirname
from fakes.nvml import fake_gpus_env

# a server with a child; the shell's, not this Python: as root the provider runs it as the
# user's own account, which may not reach an interpreter in a private folder
SLEEPER = ["/bin/sh", "-c", "sleep 120 & wait"]


@pytest.fixture
def gpus(monkeypatch):
    for k, v in fake_gpus_env("Tesla T4", "Tesla T4", "NVIDIA A100-SXM4-80GB").items():
        monkeypatch.setenv(k, v)


@pytest.fixture
def provider(tmp_path, gpus):
    # two hub users: as root each runs as their own account; a hub that is not root serves
    # two users only when told they share
    p = LocalProvider(default_root=str(tmp_path / "ws"), nvml_module="fakes.nvml",
                      regions={"a": {"gpus": "0,1"}, "b": {"gpus": "2"}, "cpu": {"gpus": "none"}},
                      stop_timeout=3, isolation="users" if os.geteuid() == 0 else "none")
    yield p
    for rec in p._records():
        p._kill_tree(rec)


def spec(offer, rid="r1", user="ada", server=""):
    return LaunchSpec(request_id=rid, offer=offer, cmd=SLEEPER, env={"PATH": "/usr/bin:/bin"},
                      tags={TAG_HUB: "hub-x", TAG_USER: user, "cloudhop-server": server}, port=9999)


def pick(p, region, gpu, count):
    return next(o for o in p.offers() if o.region == region and o.gpu == gpu and o.gpu_count == count)


def test_model_names_match_the_catalog():
    assert model_name("Tesla T4") == "T4"
    assert model_name("NVIDIA A100-SXM4-80GB") == "A100-80GB"
    assert model_name("NVIDIA A100-SXM4-40GB") == "A100"
    assert model_name("NVIDIA H100 80GB HBM3") == "H100"
    assert model_name("NVIDIA L4") == "L4"
    assert model_name("NVIDIA A10G") == "A10G"
    assert model_name("NVIDIA H100 80GB HBM3 MIG 1g.10gb") == "H100-MIG-1g.10gb"


def test_no_driver_means_cpu_only(tmp_path, monkeypatch):
    monkeypatch.delenv("CLOUDHOP_FAKE_GPUS", raising=False)
    assert detect_gpus("fakes.nvml") == []
    p = LocalProvider(default_root=str(tmp_path), nvml_module="fakes.nvml")
    assert [(o.region, o.gpu, o.gpu_count) for o in p.offers()] == [("local", "none", 0)]


def test_mig_devices_count_as_gpus(monkeypatch):
    monkeypatch.setenv("CLOUDHOP_FAKE_GPUS", json.dumps([{
        "name": "NVIDIA H100 80GB HBM3", "memory_gib": 80, "uuid": "GPU-1",
        "mig": [{"name": "NVIDIA H100 80GB HBM3 MIG 3g.40gb", "memory_gib": 40, "uuid": f"MIG-{i}"} for i in range(2)],
    }]))
    found = detect_gpus("fakes.nvml")
    assert [(g.index, g.uuid, g.model) for g in found] == [
        ("0/0", "MIG-0", "H100-MIG-3g.40gb"), ("0/1", "MIG-1", "H100-MIG-3g.40gb")]


def test_regions_partition_the_gpus(provider):
    offers = {(o.region, o.gpu, o.gpu_count) for o in provider.offers()}
    assert ("a", "T4", 2) in offers and ("b", "A100-80GB", 1) in offers
    assert not any(r == "a" and g == "A100-80GB" for r, g, _ in offers)
    assert {(r, g) for r, g, _ in offers if r == "cpu"} == {("cpu", "none")}


async def test_gpu_allocation_launch_and_stop(provider, tmp_path):
    one = await provider.launch(spec(pick(provider, "a", "T4", 1), "r1"))
    again = await provider.launch(spec(pick(provider, "a", "T4", 1), "r1"))
    assert again.id == one.id, "a retried launch must find the node it already made"
    two = await provider.launch(spec(pick(provider, "a", "T4", 1), "r2", user="bob"))
    assert set(one.info["gpus"]).isdisjoint(two.info["gpus"])
    assert pick(provider, "a", "T4", 1).available == 0
    with pytest.raises(CapacityError) as err:
        await provider.launch(spec(pick(provider, "a", "T4", 1), "r3"))
    assert "only 0 T4 GPU(s) free" in str(err.value)

    # jupyterhub-singleuser refuses root unless told; only a server running as root is told
    # (a root hub runs it as the user's own account)
    server = psutil.Process(one.info["pid"])
    assert ("--allow-root" in server.cmdline()) == (server.uids().real == 0)
    env = psutil.Process(one.info["pid"]).environ()
    assert env["CUDA_VISIBLE_DEVICES"] == one.info["gpus"][0]
    assert "CLOUDHOP_FAKE_GPUS" not in env, "a node gets none of the hub's environment"
    assert one.info["workspace"] == str(tmp_path / "ws" / "a" / "ada" / "default")

    # a fresh provider (a restarted hub) finds both nodes by tag
    fresh = LocalProvider(default_root=provider.default_root, nvml_module="fakes.nvml", regions=provider.regions,
                          isolation=provider.isolation)
    assert {n.id for n in await fresh.list_nodes({TAG_HUB: "hub-x"})} == {one.id, two.id}
    assert [n.id for n in await fresh.list_nodes({TAG_USER: "bob"})] == [two.id]

    for _ in range(100):  # the sleeper starts its child a moment after it starts
        tree = [one.info["pid"]] + [c.pid for c in psutil.Process(one.info["pid"]).children(recursive=True)]
        if len(tree) == 2:
            break
        time.sleep(0.05)
    assert len(tree) == 2
    await fresh.terminate(one.id)
    await fresh.terminate(one.id)  # idempotent
    time.sleep(0.2)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in tree)
    assert (await fresh.status(one.id)).state == "terminated"
    assert pick(provider, "a", "T4", 1).available == 1, "a stopped node frees its GPU"
    await provider.terminate(two.id)


ORPHANER = ["/bin/sh", "-c", "sleep 120 &"]


async def test_stop_ends_what_a_dead_server_left_in_its_session(provider):
    node = await provider.launch(LaunchSpec(
        request_id="r-orphan", offer=pick(provider, "cpu", "none", 0), cmd=ORPHANER,
        env={"PATH": "/usr/bin:/bin"}, tags={TAG_HUB: "hub-x", TAG_USER: "ada"}, port=9999))
    pid = node.info["pid"]
    left = []
    for _ in range(200):  # the server exits at once, leaving its child (a "kernel") behind
        left = [p for p in psutil.process_iter() if p.pid != pid and _sid(p.pid) == pid]
        if left and (await provider.status(node.id)).state != "running":
            break
        time.sleep(0.05)
    assert left and (await provider.status(node.id)).state != "running"
    await provider.terminate(node.id)
    time.sleep(0.2)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in left)


def _sid(pid):
    try:
        return os.getsid(pid)
    except OSError:
        return None


async def test_cpu_region_has_no_gpu(provider):
    offer = pick(provider, "cpu", "none", 0)
    node = await provider.launch(spec(offer))
    assert psutil.Process(node.info["pid"]).environ()["CUDA_VISIBLE_DEVICES"] == ""
    await provider.terminate(node.id)


def test_bad_region_config_names_the_field(tmp_path):
    with pytest.raises(Exception, match=r"regions\['x'\]\['gpus'\]|regions\['x'\]"):
        LocalProvider(default_root=str(tmp_path), regions={"x": {"gpus": 3}})
    with pytest.raises(Exception, match="unknown setting"):
        LocalProvider(default_root=str(tmp_path), regions={"x": {"gpu": "all"}})
    with pytest.raises(Exception, match="region names"):
        LocalProvider(default_root=str(tmp_path), regions={"../x": {}})


def test_workspace_names_cannot_escape():
    assert "/" not in safe_dirname("../../etc/passwd")
    assert not safe_dirname("..").startswith(".")
    assert safe_dirname("") == "default"
