"""Pure builders: the ``ray start`` argv of a head and a worker, the worker's
:class:`LaunchSpec`, and the notebook command wrapped by the head launcher.

No process is started here and nothing is read from the environment, so tests read
the results back (as KubeSpawner's ``make_pod``). The node launchers import this module:
what only the hub needs (offers, the providers' :class:`LaunchSpec`) is imported where it
is used, so a launcher's start imports neither traitlets nor the hub.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from . import WORKER_RESOURCE, WORKER_ROLE
from .auth import node_env
from .ports import VM_BASE, PortBlock

if TYPE_CHECKING:
    from ..offers import Offer
    from ..providers.base import LaunchSpec

HEAD_RESOURCE = "cloudhop_head"
#: env names the notebook gets from the head launcher (documented in docs/ray.md)
ENV_ADDRESS = "RAY_ADDRESS"
ENV_DASHBOARD_PORT = "CLOUDHOP_RAY_DASHBOARD_PORT"
ENV_HEAD = "CLOUDHOP_RAY_HEAD"
#: the address of every Ray node of a cluster on this machine (the local provider)
LOOPBACK = "127.0.0.1"
#: Ray's switch that makes loopback the node's address in Ray's own resolution, so the
#: processes of a loopback node and the kernels that drive it keep ``127.0.0.1`` (see
#: :mod:`.loopback`); never set on a VM, whose nodes talk over the private network
LOCAL_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def gpu_resource(gpu: str) -> str:
    """The custom resource naming a worker's GPU model (``cloudhop_gpu:A10G``), so a
    task can ask for a model: ``@ray.remote(num_gpus=1, resources={"cloudhop_gpu:A10G": 1})``."""
    return f"cloudhop_gpu:{gpu}"


def worker_resources(offer: Offer) -> dict:
    """Custom resources a worker on ``offer`` advertises (its GPUs by model)."""
    from ..offers import NO_GPU

    res = {WORKER_RESOURCE: 1}
    if offer.gpu != NO_GPU and offer.gpu_count:
        res[gpu_resource(offer.gpu)] = offer.gpu_count
    return res


def temp_dir_for(base: int, root: str) -> str:
    """Ray's ``--temp-dir`` for the node on block ``base``, in ``root`` (the account's
    private folder, :func:`.node.private_root`): one per node, short (Ray's socket paths
    must stay under 107 bytes), so a scoped stop finds its processes."""
    return f"{root.rstrip('/')}/ray-{base}"


def token_path_for(temp_dir: str) -> str:
    """Where the node's launcher keeps the cluster's token: beside the node's temp dir
    (which a restarted ``ray start`` empties), in the same private folder."""
    return temp_dir.rstrip("/") + ".token"


def ray_cli(python: str, *, loopback: bool = False, after_head: str | None = None,
            head_timeout: float = 600.0) -> list[str]:
    """The ``ray`` CLI through an interpreter, so no PATH lookup is involved; for a node
    reachable from this machine only (``loopback``), through :mod:`.loopback`. With
    ``after_head`` (a worker: its head's GCS address), through :mod:`.join`, which runs
    the CLI once that head has registered (giving up after ``head_timeout`` s)."""
    if after_head:
        return [python, "-m", "cloudhop.spawner.ray.join", f"--head={after_head}",
                f"--timeout={float(head_timeout):g}", *(["--loopback"] if loopback else []), "--"]
    return [python, "-m", "cloudhop.spawner.ray.loopback" if loopback else "ray.scripts.scripts"]


def _node_ip_args(loopback: bool) -> list[str]:
    # a VM's node takes the address Ray finds (the one it reaches the others by: the
    # private one); Ray's gRPC servers listen on every interface there (see docs/ray.md)
    return [f"--node-ip-address={LOOPBACK}"] if loopback else []


def head_start_args(block: PortBlock, *, temp_dir: str, num_cpus: int | None = None,
                    num_gpus: int | None = None, loopback: bool = False) -> list[str]:
    """``ray start`` arguments of the head beside the notebook. The dashboard listens on
    loopback only: users reach it through their server's authenticated proxy. With
    ``loopback`` (the local provider) every Ray port of the node listens on loopback."""
    args = [
        "start", "--head", "--block", "--disable-usage-stats",
        *block.ray_args(head=True),
        "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        *_node_ip_args(loopback),
        f"--temp-dir={temp_dir}",
        f"--resources={json.dumps({HEAD_RESOURCE: 1})}",
    ]
    if num_cpus is not None:
        args.append(f"--num-cpus={int(num_cpus)}")
    if num_gpus is not None:
        args.append(f"--num-gpus={int(num_gpus)}")
    return args


def worker_start_args(address: str, block: PortBlock, *, temp_dir: str, num_gpus: int,
                      resources: dict, num_cpus: int | None = None, loopback: bool = False) -> list[str]:
    """``ray start`` arguments of a worker joining the head at ``address`` (with
    ``loopback``, a worker whose every Ray port listens on loopback)."""
    args = [
        "start", f"--address={address}", "--block", "--disable-usage-stats",
        *block.ray_args(head=False),
        *_node_ip_args(loopback),
        f"--temp-dir={temp_dir}",
        f"--num-gpus={int(num_gpus)}",
        f"--resources={json.dumps(resources, sort_keys=True)}",
    ]
    if num_cpus is not None:
        args.append(f"--num-cpus={int(num_cpus)}")
    return args


def python_for(provider: str, hub_python: str) -> str:
    """The interpreter a node runs launchers with: the hub's own on this machine (a venv
    need not be on PATH), the single-user image's ``python`` elsewhere."""
    return hub_python if provider == "local" else "python"


def head_command(notebook_cmd: list, *, python: str, port_base: int, loopback: bool = False) -> list[str]:
    """The notebook node's command with the Ray head launcher in front of it (with
    ``--loopback`` on the local provider: the head listens on loopback only)."""
    return [python, "-m", "cloudhop.spawner.ray.head", f"--port-base={int(port_base)}",
            *(["--loopback"] if loopback else []), "--", *[str(a) for a in notebook_cmd]]


def head_address(provider: str, port_base: int, node_ip: str | None, private_ip: str | None = None) -> str:
    """Where workers reach the head's GCS: loopback on this machine, else the notebook
    node's private address (workers join over the private network)."""
    if provider == "local":
        return f"127.0.0.1:{port_base}"
    host = private_ip or node_ip
    if not host:
        raise ValueError("the notebook node has no address yet")
    return f"{host}:{port_base}"


def head_port_base(provider: str) -> int | None:
    """The fixed block of a VM head; ``None`` means "allocate one" (local)."""
    return None if provider == "local" else VM_BASE


def worker_command(*, python: str, address: str, offer: Offer, ports: str = "auto") -> list[str]:
    """The worker node's command: the worker launcher, which claims a port block
    (``ports="auto"``, on a shared machine) or uses the fixed one (a VM) and runs
    ``ray start --address=<head> --block`` labelled with the offer's GPUs (listening on
    loopback only on the local provider)."""
    cmd = [
        python, "-m", "cloudhop.spawner.ray.worker",
        f"--address={address}",
        f"--num-gpus={int(offer.gpu_count)}",
        f"--resources={json.dumps(worker_resources(offer), sort_keys=True)}",
        f"--ports={ports}",
    ]
    if offer.provider == "local":
        cmd.append("--loopback")
    if offer.provider == "local" and offer.vcpus:
        # a local worker shares the machine: give it its fair share, not every core
        cmd.append(f"--num-cpus={max(1, int(offer.vcpus) // 2)}")
    elif offer.vcpus:
        cmd.append(f"--num-cpus={int(offer.vcpus)}")
    return cmd


def worker_spec(*, offer: Offer, address: str, request_id: str, tags: dict, python: str,
                image: str | None = None, zone: str | None = None, spot: bool = False,
                token: str | None = None) -> LaunchSpec:
    """The :class:`LaunchSpec` of one Ray worker on ``offer``.

    Its environment names the head and holds the cluster's Ray ``token``
    (:func:`.auth.node_env`, which the worker launcher moves into a private file) and
    nothing else: no hub token, no credential (a worker runs user code but never talks
    to the hub)."""
    from ..providers.base import TAG_ROLE, LaunchSpec

    ports = "auto" if offer.provider == "local" else str(VM_BASE)
    env = {
        ENV_HEAD: address,
        "CLOUDHOP_ROLE": WORKER_ROLE,
        "CLOUDHOP_GPU": offer.gpu,
        "CLOUDHOP_GPU_COUNT": str(offer.gpu_count),
        "RAY_USAGE_STATS_ENABLED": "0",
        **node_env(token),
    }
    return LaunchSpec(
        request_id=request_id, offer=offer,
        cmd=worker_command(python=python, address=address, offer=offer, ports=ports),
        env=env, tags={**tags, TAG_ROLE: WORKER_ROLE}, role=WORKER_ROLE,
        image=image, zone=zone if zone and (not offer.zones or zone in offer.zones) else None,
        spot=spot,
    )
