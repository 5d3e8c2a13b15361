"""What the spend ledger and the budget check add to a spawn, against spawn-to-ready.

A ledger file is filled with 10,000 closed intervals of 1,000 users (ten each, spread
over this month, each counted for one of ten groups). Then, for ``--spawns`` new servers
of those users, the ledger work of one spawn runs exactly as the spawner does it:

* ``check_writable``: the write the spawner makes before it launches;
* ``check_budget``: the policy's budget check (an admin's runtime budgets, then the
  user's spend this month), with a budget per user;
* ``sync_server`` three times (the state saved after the launch attempt, after the
  launch, and once serving): the first opens the node's interval, the others find it open;
* ``budget_status``: what the Home page and the budget watcher read.

Each call is timed on its own (median, 99th percentile and worst, in milliseconds): the
calls run on the hub's event loop, so each must stay well under a millisecond. The sum
per spawn is compared with the median spawn-to-ready of the local provider, measured on
a real ``cloudhop up`` hub in the same run (``--no-hub`` skips it). Goals: < 2 ms per
spawn and < 5% of spawn-to-ready.

    python benchmarks/ledger.py [--spawns 500] [--rounds 3] [--no-hub]
"""

from __future__ import annotations

import argparse
import datetime
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from traitlets.config import Config  # noqa: E402

from cloudhop.spawner.ledger import Wanted, ledger_for  # noqa: E402
from cloudhop.spawner.policy import Policy, period_start  # noqa: E402

USERS, PER_USER, GROUPS = 1000, 10, 10


def fill(config: Config) -> None:
    """10,000 closed intervals of 1,000 users over this month, in one transaction each user."""
    ledger = ledger_for(config)
    start = period_start("month").timestamp()
    span = max(3600.0, time.time() - start)
    rng = random.Random(7)
    for u in range(USERS):
        group = f"group{u % GROUPS}"
        for k in range(PER_USER):
            t0 = start + rng.random() * span * 0.9
            node = Wanted("aws", f"i-{u}-{k}", "notebook", "us-east-1", "aws/us-east-1/g5.xlarge",
                          round(rng.uniform(0.2, 4.0), 3), t0)
            ledger.sync_server(f"user{u}", f"s{k}", [group], [node], now=t0)
            ledger.sync_server(f"user{u}", f"s{k}", [group], [], now=t0 + rng.uniform(60, 7200))


def timed(samples: dict, name: str, fn):
    t = time.perf_counter()
    out = fn()
    samples.setdefault(name, []).append((time.perf_counter() - t) * 1000)
    return out


def spawn_costs(config: Config, spawns: int) -> dict[str, list[float]]:
    """The ledger's calls of ``spawns`` spawns, each timed: name -> milliseconds."""
    ledger, policy = ledger_for(config), Policy(config=config)
    samples: dict[str, list[float]] = {}
    for n in range(spawns):
        user, groups = f"user{n % USERS}", [f"group{n % GROUPS}"]
        node = Wanted("aws", f"new-{n}", "notebook", "us-east-1", "aws/us-east-1/g5.xlarge", 1.0, time.time())
        t = time.perf_counter()
        timed(samples, "check_writable", ledger.check_writable)
        timed(samples, "check_budget", lambda: policy.check_budget(groups, user, 1.0))
        for _ in range(3):
            timed(samples, "sync_server", lambda: ledger.sync_server(user, f"new{n}", groups, [node]))
        samples.setdefault("per spawn", []).append((time.perf_counter() - t) * 1000)
        timed(samples, "budget_status", lambda: policy.budget_status(groups, user))
    return samples


def spawn_to_ready(rounds: int) -> float:
    """Median seconds from the REST request to a ready server on the local provider."""
    from hubfixture import HubProcess

    with tempfile.TemporaryDirectory() as tmp:
        hub = HubProcess(Path(tmp), name="ledger-bench").start()
        try:
            times = []
            for r in range(rounds + 1):  # the first is a warm-up
                hub.ensure_user(f"bench{r}")
                t = time.perf_counter()
                r_ = hub.api("POST", f"/users/bench{r}/server", json={"provider": "local", "gpu": "none"})
                assert r_.status_code in (201, 202), r_.text
                hub.wait_ready(f"bench{r}")
                if r:
                    times.append(time.perf_counter() - t)
                hub.stop_server(f"bench{r}")
            return statistics.median(times)
        finally:
            hub.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spawns", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3, help="local spawns timed for the baseline")
    ap.add_argument("--no-hub", action="store_true", help="skip the spawn-to-ready baseline")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Config()
        config.CloudhopLedger.path = str(Path(tmp) / "ledger.sqlite")
        config.Policy.groups = {f"group{g}": {"budget": {"usd": 1e6, "period": "month"}} for g in range(GROUPS)}
        t = time.perf_counter()
        fill(config)
        print(f"ledger: {USERS * PER_USER} closed intervals of {USERS} users written in "
              f"{time.perf_counter() - t:.1f} s ({datetime.date.today():%B %Y})")
        samples = spawn_costs(config, args.spawns)
    print(f"{'call':<16}{'median ms':>11}{'p99 ms':>9}{'max ms':>9}   ({args.spawns} spawns)")
    for name, ms in samples.items():
        ms = sorted(ms)
        print(f"{name:<16}{statistics.median(ms):>11.3f}{ms[int(len(ms) * 0.99) - 1]:>9.3f}{ms[-1]:>9.3f}")
    per_spawn = statistics.median(samples["per spawn"])
    print(f"added per spawn: {per_spawn:.3f} ms (goal < 2 ms)")
    if not args.no_hub:
        ready = spawn_to_ready(args.rounds)
        print(f"spawn-to-ready (local, median of {args.rounds}): {ready:.2f} s; ledger share: "
              f"{per_spawn / 1000 / ready:.4%} (goal < 5%)")


if __name__ == "__main__":
    main()
