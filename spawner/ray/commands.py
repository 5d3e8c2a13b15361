"""Pure builders: the ``ray start`` argv of a head and a worker, the worker's
:class:`LaunchSpec`, and the notebook command wrapped by the head launcher.

No process is started here and nothing is read from the environment, so tests read
the results back (as KubeSpawner's ``make_pod``).
"""

from __future__ import annotations

import json

from ..offers import NO_GPU, Offer
from ..providers.base import TAG_ROLE, LaunchSpec
from . import WORKER_RESOURCE, WORKER_ROLE
from .ports import VM_BASE, PortBlock

HEAD_RESOURCE = "cloudhop_head"
#: env names the notebook gets from the head launcher (documented in docs/ray.md)
ENV_ADDRESS = "RAY_ADDRESS"
ENV_DASHBOARD_PORT = "CLOUDHOP_RAY_DASHBOARD_PORT"
ENV_HEAD = "CLOUDHOP_RAY_HEAD"


def gpu_resource(gpu: str) -> str:
    """The custom resource naming a worker's GPU model (``cloudhop_gpu:A10G``), so a
    task can ask for a model: ``@ray.remote(num_gpus=1, resources={"cloudhop_gpu:A10G": 1})``."""
    return f"cloudhop_gpu:{gpu}"


def worker_resources(offer: Offer) -> dict:
    """Custom resources a worker on ``offer`` advertises (its GPUs by model)."""
    res = {WORKER_RESOURCE: 1}
    if offer.gpu != NO_GPU and offer.gpu_count:
        res[gpu_resource(offer.gpu)] = offer.gpu_count
    return res


def temp_dir_for(base: int, root: str = "/tmp") -> str:
    """Ray's ``--temp-dir`` for the node on block ``base``: one per node, short (Ray's
    socket paths must stay under 107 bytes), so a scoped stop finds its processes."""
    return f"{root.rstrip('/')}/cloudhop-ray-{base}"


def ray_cli(python: str) -> list[str]:
    """The ``ray`` CLI through an interpreter, so no PATH lookup is involved."""
    return [python, "-m", "ray.scripts.scripts"]


def head_start_args(block: PortBlock, *, temp_dir: str, num_cpus: int | None = None,
                    num_gpus: int | None = None) -> list[str]:
    """``ray start`` arguments of the head beside the notebook. The dashboard listens on
    loopback only: users reach it through their server's authenticated proxy."""
    args = [
        "start", "--head", "--block", "--disable-usage-stats",
        *block.ray_args(head=True),
        "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--temp-dir={temp_dir}",
        f"--resources={json.dumps({HEAD_RESOURCE: 1})}",
    ]
    if num_cpus is not None:
        args.append(f"--num-cpus={int(num_cpus)}")
    if num_gpus is not None:
        args.append(f"--num-gpus={int(num_gpus)}")
    return args


def worker_start_args(address: str, block: PortBlock, *, temp_dir: str, num_gpus: int,
                      resources: dict, num_cpus: int | None = None) -> list[str]:
    """``ray start`` arguments of a worker joining the head at ``address``."""
    args = [
        "start", f"--address={address}", "--block", "--disable-usage-stats",
        *block.ray_args(head=False),
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


def head_command(notebook_cmd: list, *, python: str, port_base: int) -> list[str]:
    """The notebook node's command with the Ray head launcher in front of it."""
    return [python, "-m", "cloudhop.spawner.ray.head", f"--port-base={int(port_base)}",
            "--", *[str(a) for a in notebook_cmd]]


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
    ``ray start --address=<head> --block`` labelled with the offer's GPUs."""
    cmd = [
        python, "-m", "cloudhop.spawner.ray.worker",
        f"--address={address}",
        f"--num-gpus={int(offer.gpu_count)}",
        f"--resources={json.dumps(worker_resources(offer), sort_keys=True)}",
        f"--ports={ports}",
    ]
    if offer.provider == "local" and offer.vcpus:
        # a local worker shares the machine: give it its fair share, not every core
        cmd.append(f"--num-cpus={max(1, int(offer.vcpus) // 2)}")
    elif offer.vcpus:
        cmd.append(f"--num-cpus={int(offer.vcpus)}")
    return cmd


def worker_spec(*, offer: Offer, address: str, request_id: str, tags: dict, python: str,
                image: str | None = None, zone: str | None = None, spot: bool = False) -> LaunchSpec:
    """The :class:`LaunchSpec` of one Ray worker on ``offer``.

    Its environment names the head and nothing else: no hub token, no credential (a
    worker runs user code but never talks to the hub)."""
    ports = "auto" if offer.provider == "local" else str(VM_BASE)
    env = {
        ENV_HEAD: address,
        "CLOUDHOP_ROLE": WORKER_ROLE,
        "CLOUDHOP_GPU": offer.gpu,
        "CLOUDHOP_GPU_COUNT": str(offer.gpu_count),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    return LaunchSpec(
        request_id=request_id, offer=offer,
        cmd=worker_command(python=python, address=address, offer=offer, ports=ports),
        env=env, tags={**tags, TAG_ROLE: WORKER_ROLE}, role=WORKER_ROLE,
        image=image, zone=zone if zone and (not offer.zones or zone in offer.zones) else None,
        spot=spot,
    )
