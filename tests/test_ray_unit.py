"""Ray building blocks: port blocks, the worker's launch spec and command, the worker's
cloud-init, and the head launcher's wrapping of the notebook command."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time

import pytest

from cloudhop.spawner.bootstrap import render_user_data
from cloudhop.spawner.offers import Offer
from cloudhop.spawner.providers.base import TAG_ROLE, TAG_USER
from cloudhop.spawner.ray import WORKER_RESOURCE, WORKER_ROLE
from cloudhop.spawner.ray.commands import (
    LOCAL_ONLY_ENV, gpu_resource, head_address, head_command, head_start_args, ray_cli, temp_dir_for,
    token_path_for, worker_spec, worker_start_args,
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


def test_a_local_head_and_worker_listen_on_loopback_only_and_a_vm_node_on_rays_choice():
    local = head_command(["jupyterhub-singleuser"], python="/py", port_base=24064, loopback=True)
    assert local[:5] == ["/py", "-m", "cloudhop.spawner.ray.head", "--port-base=24064", "--loopback"]
    assert "--loopback" not in head_command(["jupyterhub-singleuser"], python="python", port_base=6379)
    args = head_start_args(PortBlock(24064), temp_dir="/t/ray-24064", loopback=True)
    assert "--node-ip-address=127.0.0.1" in args and "--dashboard-host=127.0.0.1" in args
    args = worker_start_args("127.0.0.1:24064", PortBlock(24192), temp_dir="/t/ray-24192", num_gpus=0,
                             resources={}, loopback=True)
    assert "--node-ip-address=127.0.0.1" in args
    for vm in (head_start_args(PortBlock(VM_BASE), temp_dir="/t/ray-6379"),
               worker_start_args("10.0.0.5:6379", PortBlock(VM_BASE), temp_dir="/t/ray-6379", num_gpus=1,
                                 resources={})):
        assert not any(a.startswith("--node-ip-address") for a in vm)
    # `ray start` itself would turn 127.0.0.1 into the machine's address: a loopback node
    # starts through the wrapper that keeps it
    assert ray_cli("/py", loopback=True) == ["/py", "-m", "cloudhop.spawner.ray.loopback"]
    assert ray_cli("/py") == ["/py", "-m", "ray.scripts.scripts"]
    # a worker's `ray start` waits for its head in its own process (one Ray import)
    assert ray_cli("/py", loopback=True, after_head="127.0.0.1:24064", head_timeout=60) == [
        "/py", "-m", "cloudhop.spawner.ray.join", "--head=127.0.0.1:24064", "--timeout=60", "--loopback", "--"]
    assert "--loopback" in worker_spec(offer=CPU_LOCAL, address="127.0.0.1:24064", request_id="r",
                                       tags=TAGS, python="/py").cmd
    assert "--loopback" not in worker_spec(offer=A10G, address="10.0.0.5:6379", request_id="r",
                                           tags=TAGS, python="python").cmd
    assert LOCAL_ONLY_ENV == {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def test_the_loopback_wrapper_keeps_loopback_and_passes_the_switch_to_rays_processes(monkeypatch):
    from ray._private import services

    from cloudhop.spawner.ray import loopback

    monkeypatch.setattr(services, "resolve_ip_for_localhost", services.resolve_ip_for_localhost)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "1")  # restored after the test
    loopback.keep_loopback()
    assert services.resolve_ip_for_localhost("127.0.0.1") == "127.0.0.1"
    assert services.resolve_ip_for_localhost("10.0.0.5") == "10.0.0.5"
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"


def test_a_nodes_files_live_in_the_accounts_private_folder():
    assert temp_dir_for(24064, "/tmp/cloudhop-u1000/") == "/tmp/cloudhop-u1000/ray-24064"
    assert token_path_for("/tmp/cloudhop-u1000/ray-24064") == "/tmp/cloudhop-u1000/ray-24064.token"
    # Ray's socket paths (session_<date>_<pid>/sockets/plasma_store) stay under 107 bytes
    longest = temp_dir_for(32640, "/tmp/cloudhop-u4294967294") + "/session_2026-12-04_06-43-35_132493_4194304"
    assert len(longest + "/sockets/plasma_store") < 107


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
    # with the cluster's token: Ray's variables, and still no hub token or credential
    spec = worker_spec(offer=A10G, address="10.0.0.5:6379", request_id="r1-w0-aws", tags=TAGS,
                       python="python", token="cluster-token-1")
    assert spec.env["RAY_AUTH_MODE"] == "token" and spec.env["RAY_AUTH_TOKEN"] == "cluster-token-1"
    assert not any(k.startswith(("AWS_", "JUPYTERHUB_")) for k in spec.env)
    assert "cluster-token-1" not in " ".join(spec.cmd)


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

    free, held, lone = candidate_bases()[:3]
    lock = claim_block(held)
    try:
        for base in (free, held):
            (tmp_path / f"ray-{base}" / "logs").mkdir(parents=True)
            (tmp_path / f"ray-{base}-jupyter").mkdir()
            (tmp_path / f"ray-{base}.token").write_text("t")
        (tmp_path / f"ray-{lone}.token").write_text("t")  # a launcher killed before Ray started
        (tmp_path / "unrelated").mkdir()
        assert sweep_stale_temp_dirs(str(tmp_path)) == sorted([f"ray-{free}", f"ray-{lone}"])
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [f"ray-{held}", f"ray-{held}-jupyter", f"ray-{held}.token", "unrelated"])
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


# -- a node's start: what it imports, how it waits, what it logs ------------------------


@pytest.mark.parametrize("launcher", ["worker", "head"])
def test_a_node_launcher_imports_neither_ray_nor_the_hub(launcher):
    """A launcher's own start is cheap: Ray is imported once, by ``ray start`` (for a
    worker through :mod:`.join`), and nothing of the hub, JupyterHub or traitlets."""
    code = (f"import sys, cloudhop.spawner.ray.{launcher}; "
            "print(sorted({m.split('.')[0] for m in sys.modules} "
            "& {'ray', 'jupyterhub', 'traitlets', 'tornado', 'jupyter_server', 'sqlalchemy'}), "
            "sorted(m for m in sys.modules if m.startswith('cloudhop.hub') "
            "or m in ('cloudhop.spawner.spawner', 'cloudhop.spawner.providers.base')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "[]"], out


def test_join_gives_up_on_a_head_that_never_answers_with_its_own_code(tmp_path):
    from cloudhop.spawner.ray.join import HEAD_NEVER_ANSWERED

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.run([sys.executable, "-m", "cloudhop.spawner.ray.join", f"--head=127.0.0.1:{port}",
                        "--timeout=1", "--", "start", f"--address=127.0.0.1:{port}"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == HEAD_NEVER_ANSWERED, p.stderr
    assert f"the head at 127.0.0.1:{port} never answered in 1 s" in p.stderr
    assert "head_seen" not in p.stderr


def test_phase_lines_read_back_in_order(capsys):
    from cloudhop.spawner.ray.node import phase, read_phases

    phase("launcher")
    phase("ray_start")
    phase("ray_start")  # a restarted `ray start`
    logged = capsys.readouterr().err
    phases = read_phases("Ray says hello\n" + logged)
    assert list(phases) == ["launcher", "ray_start"]
    assert len(phases["ray_start"]) == 2 and phases["launcher"][0] <= phases["ray_start"][0] <= phases["ray_start"][1]
    assert abs(phases["launcher"][0] - time.time()) < 60



def test_a_worker_waiting_for_its_head_reaches_a_restarted_head(monkeypatch):
    """A head whose first `ray start` gave up is started again with a new GCS on the same
    port; the worker's watch must not keep asking through its client of the old one."""
    import ray._raylet

    from cloudhop.spawner.ray.node import HeadWatch

    made = []

    class Gcs:
        def __init__(self, address):
            self.dead = not made  # the first client is of the head that gave up
            made.append(self)

        def get_all_node_info(self, timeout, state_filter):
            if self.dead:
                raise ConnectionError("the GCS this client knew is gone")
            return {"head": object()}

    monkeypatch.setattr(ray._raylet, "GcsClient", Gcs)
    watch = HeadWatch("127.0.0.1:24064")
    assert not watch.registered(1)
    assert watch.registered(1) and len(made) == 2
    assert watch.registered(1) and len(made) == 2  # a working client is kept


def test_a_worker_asks_the_gcs_only_once_the_heads_raylet_listens(monkeypatch):
    """The worker's Ray import (for the GCS call) waits for the head's raylet port, the
    one after its GCS port, so it does not compete with the head's start; a head laid out
    otherwise is still asked after ``raylet_wait``."""
    from cloudhop.spawner.ray import join
    from cloudhop.spawner.ray.ports import LAYOUT

    def pair_of_free_ports():
        for _ in range(200):
            with socket.socket() as a:
                a.bind(("127.0.0.1", 0))
                port = a.getsockname()[1]
                try:
                    with socket.socket() as b:
                        b.bind(("127.0.0.1", port + 1))
                        return port
                except OSError:
                    continue
        raise RuntimeError("no two free ports in a row")

    asked = []
    monkeypatch.setattr(join.HeadWatch, "registered", lambda self, timeout=2: asked.append(time.monotonic()) or True)
    gcs_port = pair_of_free_ports()
    assert join.raylet_address(f"127.0.0.1:{gcs_port}") == f"127.0.0.1:{gcs_port + LAYOUT['node_manager_port']}"
    gcs = socket.create_server(("127.0.0.1", gcs_port))
    try:
        # the GCS answers, the raylet does not: no GCS call (no Ray import) yet
        assert not join.wait_for_head(f"127.0.0.1:{gcs_port}", timeout=1.5, poll=0.05, raylet_wait=60)
        assert asked == []
        raylet = socket.create_server(("127.0.0.1", gcs_port + 1))
        try:
            assert join.wait_for_head(f"127.0.0.1:{gcs_port}", timeout=10, poll=0.05, raylet_wait=60)
            assert len(asked) == 1
        finally:
            raylet.close()
        # a head without a raylet at that port is asked once raylet_wait has passed
        asked.clear()
        assert join.wait_for_head(f"127.0.0.1:{gcs_port}", timeout=10, poll=0.05, raylet_wait=0.3)
        assert len(asked) == 1
    finally:
        gcs.close()
