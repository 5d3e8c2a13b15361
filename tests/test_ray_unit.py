"""Ray building blocks: port blocks, the worker's launch spec and command, the worker's
cloud-init, and the head launcher's wrapping of the notebook command."""

from __future__ import annotations

import json
import shlex
import socket

import pytest

from cloudhop.spawner.bootstrap import render_user_data
from cloudhop.spawner.offers import Offer
from cloudhop.spawner.providers.base import TAG_ROLE, TAG_USER
from cloudhop.spawner.ray import WORKER_RESOURCE, WORKER_ROLE
from cloudhop.spawner.ray.commands import (
    gpu_resource, head_address, head_command, head_start_args, worker_spec, worker_start_args,
)
from cloudhop.spawner.ray.ports import (
    BLOCK_SIZE, LAYOUT, VM_BASE, VM_PORT_RANGE, WORKER_OFFSET, PortBlock, PortsBusy, candidate_bases,
    claim_block, claim_free_block, find_free_block,
)

A10G = Offer("aws", "us-east-1", "g5.xlarge", "A10G", 1, vcpus=4, memory_gib=16, price_hour=1.0)
CPU_LOCAL = Offer("local", "local", "cpu", "none", 0, vcpus=2, price_hour=0.0)
TAGS = {"cloudhop-hub": "hub-x", TAG_USER: "ada", "cloudhop-server": ""}


# -- ports -----------------------------------------------------------------------


def _ports_in(args: list[str]) -> list[int]:
    return [int(a.split("=", 1)[1]) for a in args if a.split("=")[0].endswith("port")]


def test_every_ray_port_of_a_node_is_pinned_inside_its_block():
    block = PortBlock(24000)
    for head in (True, False):
        ports = _ports_in(block.ray_args(head=head))
        assert all(block.base <= p <= block.last for p in ports)
        assert len(ports) == len(set(ports)), "no two Ray services may share a port"
    head_args = " ".join(block.ray_args(head=True))
    for flag in ("--port=24000", "--node-manager-port", "--object-manager-port", "--dashboard-port",
                 "--ray-client-server-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                 "--metrics-export-port", "--runtime-env-agent-port", "--min-worker-port=24016",
                 f"--max-worker-port={24000 + BLOCK_SIZE - 1}"):
        assert flag in head_args
    assert max(LAYOUT.values()) < WORKER_OFFSET
    # on a VM every Ray port is inside the one range the firewall opens between nodes
    vm = PortBlock(VM_BASE)
    assert all(VM_PORT_RANGE[0] <= p <= VM_PORT_RANGE[1] for p in _ports_in(vm.ray_args(head=True)))


def test_two_claims_get_disjoint_blocks_and_a_held_block_is_refused(tmp_path):
    bases = candidate_bases()[:6]
    first = claim_free_block(str(tmp_path), bases)
    second = claim_free_block(str(tmp_path), bases)
    try:
        a, b = set(first.block.ports()), set(second.block.ports())
        assert not a & b
        with pytest.raises(PortsBusy, match="claimed by another Ray node"):
            claim_block(first.block.base, str(tmp_path))
    finally:
        first.release()
        second.release()
    # released blocks are free again
    claim_block(first.block.base, str(tmp_path)).release()


def test_a_block_with_a_port_in_use_is_skipped(tmp_path):
    bases = candidate_bases()[:3]
    busy = socket.socket()
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    busy.bind(("", bases[0] + 5))
    busy.listen()
    try:
        with pytest.raises(PortsBusy, match="in use"):
            claim_block(bases[0], str(tmp_path))
        assert find_free_block(str(tmp_path), bases).base != bases[0]
    finally:
        busy.close()


# -- commands and specs --------------------------------------------------------------


def test_head_wraps_the_notebook_and_pins_its_ports():
    cmd = head_command(["python", "-m", "jupyterhub.singleuser", "--debug"], python="/py", port_base=24064)
    assert cmd[:4] == ["/py", "-m", "cloudhop.spawner.ray.head", "--port-base=24064"]
    assert cmd[cmd.index("--") + 1:] == ["python", "-m", "jupyterhub.singleuser", "--debug"]
    args = head_start_args(PortBlock(24064), temp_dir="/tmp/cloudhop-ray-24064")
    assert "--head" in args and "--block" in args and "--dashboard-host=127.0.0.1" in args
    assert "--temp-dir=/tmp/cloudhop-ray-24064" in args


def test_head_address_is_loopback_locally_and_the_private_ip_on_a_vm():
    assert head_address("local", 24064, "127.0.0.1") == "127.0.0.1:24064"
    assert head_address("aws", VM_BASE, "3.4.5.6", "10.0.0.5") == f"10.0.0.5:{VM_BASE}"
    with pytest.raises(ValueError):
        head_address("gcp", VM_BASE, None, None)


def test_worker_spec_is_a_ray_worker_labelled_with_its_gpus_and_holds_no_secret():
    spec = worker_spec(offer=A10G, address="10.0.0.5:6379", request_id="r1-w0-aws", tags=TAGS,
                       python="python", image="ghcr.io/x/img:1", zone="us-east-1a")
    assert spec.role == WORKER_ROLE and spec.tags[TAG_ROLE] == WORKER_ROLE and spec.tags[TAG_USER] == "ada"
    cmd = spec.cmd
    assert cmd[:3] == ["python", "-m", "cloudhop.spawner.ray.worker"]
    assert "--address=10.0.0.5:6379" in cmd and "--num-gpus=1" in cmd and f"--ports={VM_BASE}" in cmd
    resources = json.loads(next(a for a in cmd if a.startswith("--resources=")).split("=", 1)[1])
    assert resources == {WORKER_RESOURCE: 1, gpu_resource("A10G"): 1}
    assert not any("TOKEN" in k or "SECRET" in k or k.startswith(("AWS_", "JUPYTERHUB_")) for k in spec.env)
    assert spec.env["CLOUDHOP_RAY_HEAD"] == "10.0.0.5:6379"


def test_local_worker_claims_its_own_ports_and_a_share_of_the_cpus():
    spec = worker_spec(offer=CPU_LOCAL, address="127.0.0.1:24064", request_id="r", tags=TAGS, python="/py")
    assert "--ports=auto" in spec.cmd and "--num-gpus=0" in spec.cmd and "--num-cpus=1" in spec.cmd
    args = worker_start_args("127.0.0.1:24064", PortBlock(24192), temp_dir="/tmp/cloudhop-ray-24192",
                             num_gpus=0, resources={WORKER_RESOURCE: 1})
    assert "--address=127.0.0.1:24064" in args and "--head" not in args
    assert all(24192 <= p <= 24192 + BLOCK_SIZE - 1 for p in _ports_in(args))


# -- VM bootstrap --------------------------------------------------------------------


def test_worker_cloud_init_runs_ray_start_against_the_head_and_carries_no_secret():
    spec = worker_spec(offer=A10G, address="10.0.0.5:6379", request_id="r1-w0-aws", tags=TAGS, python="python")
    text = render_user_data(spec, image="ghcr.io/cloudhop/singleuser:1", hub_connect_url="http://hub:8081")
    assert text.startswith("#cloud-config")
    run_line = next(line for line in text.splitlines() if "docker run" in line or "docker\\ run" in line
                    or "cloudhop.spawner.ray.worker" in line)
    argv = shlex.split(run_line.strip().lstrip("- "))
    assert "cloudhop.spawner.ray.worker" in argv and "--address=10.0.0.5:6379" in argv
    assert "--gpus" in argv and "--network" in argv  # GPUs exposed, host network for Ray's ports
    assert "CLOUDHOP_RAY_HEAD=10.0.0.5:6379" in text
    assert "JUPYTERHUB_API_TOKEN" not in text and "AWS_" not in text


def test_sweep_removes_only_dirs_of_dead_ray_nodes(tmp_path):
    from cloudhop.spawner.ray.node import sweep_stale_temp_dirs

    free, held = candidate_bases()[:2]
    lock = claim_block(held)
    try:
        for base in (free, held):
            (tmp_path / f"cloudhop-ray-{base}" / "logs").mkdir(parents=True)
        (tmp_path / "unrelated").mkdir()
        assert sweep_stale_temp_dirs(str(tmp_path)) == [f"cloudhop-ray-{free}"]
        assert (tmp_path / f"cloudhop-ray-{held}").is_dir() and (tmp_path / "unrelated").is_dir()
    finally:
        lock.release()


# -- the notebook panel ----------------------------------------------------------------


def test_panel_without_a_ray_head_says_how_to_get_one():
    from cloudhop.extensions.ray_panel import RayPanelError, cluster_summary

    with pytest.raises(RayPanelError, match='"ray"'):
        cluster_summary(env={})


def test_panel_renders_nodes_workers_and_escapes_what_it_shows():
    from cloudhop.extensions.ray_panel import dashboard_link, hub_ray_url, render

    env = {"JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api", "JUPYTERHUB_USER": "ada b",
           "JUPYTERHUB_SERVER_NAME": "gpu", "JUPYTERHUB_SERVICE_PREFIX": "/user/ada%20b/gpu/"}
    assert hub_ray_url(env) == "http://127.0.0.1:8081/hub/api/cloudhop/ray/ada%20b/gpu"
    assert dashboard_link(env) == "/user/ada%20b/gpu/ray-dashboard/"
    summary = {
        "address": "127.0.0.1:24064", "dashboard": dashboard_link(env), "errors": ["hub 502: <down>"],
        "nodes": [{"node_id": "a" * 56, "ip": "10.0.0.5", "role": "worker", "state": "DEAD",
                   "cpus": 4, "gpus": 1, "gpu_model": "A10G"}],
        "usage": {"GPU": {"used": 1.0, "total": 2.0}},
        "hub": {"alive": 0, "dead": 1, "requested": 1, "workers": [
            {"index": 0, "state": "dead", "id": "i-1", "offer": "aws/us-east-1/g5.xlarge",
             "detail": "process exited with code -9"}]},
    }
    page = render(summary)
    assert "0 node(s) alive" in page and "A10G" in page and "DEAD" in page
    assert "GPU 1/2" in page and "process exited with code -9" in page
    assert "/user/ada%20b/gpu/ray-dashboard/" in page
    assert "<down>" not in page and "&lt;down&gt;" in page
