"""Spawn-to-Ray-cluster time: Cloudhop against starting the same cluster by hand.

Cloudhop: a real `cloudhop up` hub; each round POSTs a server with
``{"provider": "local", "gpu": "none", "ray": {"workers": N}}`` and measures request ->
server ready AND N+1 alive Ray nodes (read from the server's ``cloudhop/ray`` endpoint,
which asks the head's dashboard).

By hand, in the same run and on the same machine: ``ray start --head`` and, once it
returns, N ``ray start --address=<head>`` at once (the fastest a person can do it),
with the same ports, resources and dashboard as Cloudhop's nodes, measured until the
head's dashboard shows N+1 alive nodes. No notebook server is started on this side.

Rounds alternate which side goes first, each after a few seconds of quiet, so both
see the same machine load. Prints medians and the ratio
(goal: Cloudhop adds under 10%, ratio < 1.10).

    python benchmarks/ray_attach.py [--workers 1] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from hubfixture import HubProcess  # noqa: E402

from cloudhop.spawner.ray import WORKER_RESOURCE  # noqa: E402
from cloudhop.spawner.ray.commands import head_start_args, ray_cli, temp_dir_for, worker_start_args  # noqa: E402
from cloudhop.spawner.ray.node import RayNode  # noqa: E402
from cloudhop.spawner.ray.ports import claim_free_block  # noqa: E402


TIMEOUT = 300


def alive_nodes(dashboard_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{dashboard_port}/api/v0/nodes?limit=1000", timeout=5) as r:
            nodes = json.loads(r.read())["data"]["result"]["result"]
    except (OSError, ValueError, KeyError):
        return 0
    return sum(1 for n in nodes if n.get("state") == "ALIVE")


def cloudhop_round(hub: HubProcess, user: str, workers: int) -> float:
    hub.ensure_user(user)
    options = {"provider": "local", "gpu": "none", "ray": {"workers": workers, "gpu": "none", "gpu_count": 0}}
    t0 = time.perf_counter()
    r = hub.api("POST", f"/users/{user}/server", json=options)
    assert r.status_code in (201, 202), r.text
    deadline = t0 + TIMEOUT
    while True:
        if time.perf_counter() > deadline:
            hub.stop_server(user, timeout=120)
            raise TimeoutError(f"no server with {workers + 1} Ray nodes after {TIMEOUT}s")
        model = hub.server_model(user)
        if model and model.get("ready"):
            s = hub.server_api("GET", user, "cloudhop/ray")
            if s.status_code == 200 and s.json()["alive"] == workers + 1:
                elapsed = time.perf_counter() - t0
                break
        time.sleep(0.1)
    hub.stop_server(user, timeout=120)
    return elapsed


def by_hand_round(workers: int) -> float:
    """``ray start --head`` then N ``ray start --address`` (no --block: they return once
    started, as a person would type them), with ports like Cloudhop's."""
    locks = [claim_free_block() for _ in range(workers + 1)]
    for lock in locks:
        lock.release()  # `ray start` binds them itself; the claim only picked free blocks
    head, rest = locks[0].block, [lk.block for lk in locks[1:]]
    tmp = tempfile.gettempdir()
    nodes = [RayNode([], temp_dir_for(b.base, tmp)) for b in [head, *rest]]
    t0 = time.perf_counter()
    head_args = [a for a in head_start_args(head, temp_dir=temp_dir_for(head.base, tmp)) if a != "--block"]
    subprocess.run(ray_cli(sys.executable) + head_args, check=True, capture_output=True)
    procs = [subprocess.Popen(ray_cli(sys.executable) + [
        a for a in worker_start_args(f"127.0.0.1:{head.port}", b, temp_dir=temp_dir_for(b.base, tmp),
                                     num_gpus=0, num_cpus=1, resources={WORKER_RESOURCE: 1}) if a != "--block"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for b in rest]
    for p in procs:
        p.wait()
    while alive_nodes(head.dashboard_port) < workers + 1:
        if time.perf_counter() - t0 > TIMEOUT:
            for node in reversed(nodes):
                node.stop()
            raise TimeoutError(f"the hand-made cluster had no {workers + 1} alive nodes after {TIMEOUT}s")
        time.sleep(0.1)
    elapsed = time.perf_counter() - t0
    for node in reversed(nodes):
        node.stop()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds of quiet before each measurement")
    args = ap.parse_args()
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        hub = HubProcess(Path(tmp), name="cloudhop").start()
        try:
            for i in range(args.rounds):
                # alternate which goes first, and let the previous cluster's processes
                # finish exiting, so neither side inherits the other's teardown
                for side in (("hand", "cloudhop") if i % 2 == 0 else ("cloudhop", "hand")):
                    time.sleep(args.settle)
                    if side == "hand":
                        theirs.append(by_hand_round(args.workers))
                    else:
                        ours.append(cloudhop_round(hub, f"u{i}", args.workers))
                print(f"round {i}: by hand {theirs[-1]:.2f}s, cloudhop {ours[-1]:.2f}s", flush=True)
        finally:
            hub.stop()
    mo, mt = statistics.median(ours), statistics.median(theirs)
    print(f"workers: {args.workers}, rounds: {args.rounds}")
    print(f"cloudhop spawn -> server ready + {args.workers + 1} Ray nodes alive: median {mo:.2f}s (min {min(ours):.2f}s)")
    print(f"by hand  ray start head + {args.workers} worker(s) -> alive:        median {mt:.2f}s (min {min(theirs):.2f}s)")
    print(f"ratio cloudhop/by hand: {mo / mt:.3f}x  (goal < 1.10x)")


if __name__ == "__main__":
    main()
