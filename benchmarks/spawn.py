"""Spawn-to-ready time of Cloudhop's local provider against stock JupyterHub.

Starts two real hubs in this run, both with `cloudhop up`'s embedded defaults: one with
the Cloudhop spawner (local provider, {"provider": "local", "gpu": "none"}), one with
JupyterHub's own SimpleLocalProcessSpawner. Each round spawns a fresh user on each hub
through the REST API and measures request -> server ready; rounds alternate so both
see the same machine load. Prints the medians and their ratio (goal: <= 1.10).

    python benchmarks/spawn.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from hubfixture import HubProcess  # noqa: E402

STOCK = """
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {home!r}
c.Spawner.default_url = "/lab"
import os, sys
# the same command the local provider runs (the hub's interpreter; no venv on PATH needed)
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
if os.geteuid() == 0:  # Cloudhop's local provider adds this itself when the hub is root
    c.SimpleLocalProcessSpawner.args = ["--allow-root"]
"""


def spawn_to_ready(hub: HubProcess, user: str, options: dict) -> float:
    hub.ensure_user(user)
    t0 = time.perf_counter()
    r = hub.api("POST", f"/users/{user}/server", json=options)
    assert r.status_code in (201, 202), r.text
    while True:
        model = hub.server_model(user)
        if model and model.get("ready"):
            elapsed = time.perf_counter() - t0
            break
        time.sleep(0.02)
    hub.stop_server(user)
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cloudhop = HubProcess(tmp, name="cloudhop").start()
        stock = HubProcess(tmp, STOCK.format(home=str(tmp / "homes" / "{username}")), name="stock").start()
        try:
            spawn_to_ready(cloudhop, "warmup-c", {"provider": "local", "gpu": "none"})
            spawn_to_ready(stock, "warmup-s", {})
            ours, theirs = [], []
            for i in range(args.rounds):
                ours.append(spawn_to_ready(cloudhop, f"u{i}", {"provider": "local", "gpu": "none"}))
                theirs.append(spawn_to_ready(stock, f"u{i}", {}))
        finally:
            cloudhop.stop()
            stock.stop()
    mo, ms = statistics.median(ours), statistics.median(theirs)
    print(f"rounds: {args.rounds}")
    print(f"cloudhop local provider  spawn->ready median {mo:.3f}s  (min {min(ours):.3f}s)")
    print(f"stock SimpleLocalProcess spawn->ready median {ms:.3f}s  (min {min(theirs):.3f}s)")
    print(f"ratio cloudhop/stock: {mo / ms:.3f}x  (goal <= 1.10x)")


if __name__ == "__main__":
    main()
