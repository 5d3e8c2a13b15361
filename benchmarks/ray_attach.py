"""Spawn-to-Ray-cluster time: Cloudhop against starting the same cluster by hand, phase by phase.

Cloudhop: a real `cloudhop up` hub; each round POSTs a server with
``{"provider": "local", "gpu": "none", "ray": {"workers": N}}`` and measures request ->
server ready (the hub's progress stream says so) AND N+1 alive Ray nodes (read from the
server's ``cloudhop/ray`` endpoint, which asks the head's dashboard).

By hand, in the same run and on the same machine: ``ray start --head`` and, once it
returns, N ``ray start --address=<head>`` at once (the fastest a person can do it),
with the same ports, resources and dashboard as Cloudhop's nodes, measured until the
head's dashboard shows N+1 alive nodes. No notebook server is started on this side.

Neither side loads what it measures while its cluster starts. By hand, the alive count
is read (every ``--poll`` seconds) once each ``ray start`` has returned. Cloudhop: the
hub's progress stream (no polling) says when the server is ready; then the alive count
is read through the server (``cloudhop/ray``: proxy, server, dashboard) once each
worker's log says its ``ray start`` started (a file read every ``--poll`` seconds), and
every 2 s besides.

Each round also gives a per-phase timeline. On the Cloudhop side the phases come from
the node launchers' own log lines (``phase <name> at <time>``, written by
:func:`cloudhop.spawner.ray.node.phase`, read from the nodes' logs after the round):
the head launcher runs, the head's ``ray start`` begins and says the node is up, the
notebook server process starts, each worker saw its head and its ``ray start`` says
it is up; plus when the hub said the server was ready. On the by-hand side: when each
``ray start`` returned. The summary prints each phase's median on both sides and their
ratio, then how long each step took.

Rounds alternate which side goes first, each after a few seconds of quiet, so both
see the same machine load. A round that fails stops the run with an error naming the
side, the phase it reached and the output that says why (a retry would hide the cause).
One failure is Ray's own and is treated alike on both sides: Ray gives a raylet a fixed
time to register, which two workers starting at once on 2 busy cores can run out of
(``ray start`` then says the node "timed out during startup"); Cloudhop's worker
launcher starts Ray again (twice at most), and so does the by-hand side here, each
rerun printed as a note. A Cloudhop stop that keeps its nodes (a failed snapshot)
fails the round too, after stopping them, so no cluster loads the later rounds.
Prints medians and the ratio (goal: Cloudhop adds under 10%, ratio <= 1.10).

    python benchmarks/ray_attach.py [--workers 1] [--rounds 3] [--settle 5]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from hubfixture import HubProcess  # noqa: E402

from cloudhop.spawner.ray import WORKER_RESOURCE, WORKER_ROLE  # noqa: E402
from cloudhop.spawner.ray.commands import head_start_args, ray_cli, temp_dir_for, worker_start_args  # noqa: E402
from cloudhop.spawner.ray.node import RayNode, read_phases  # noqa: E402
from cloudhop.spawner.ray.ports import claim_free_block  # noqa: E402


TIMEOUT = 300
#: seconds between two looks at the Cloudhop cluster's alive count while its workers'
#: logs do not yet say they started (a look loads the proxy, the server and the dashboard)
SLOW_LOOK = 2.0
#: what `ray start` says when Ray's fixed wait for its raylet ran out (an overloaded machine)
RAY_STARTUP_TIMEOUT = "timed out during startup"
#: times a worker's `ray start` is run again after that, on both sides (Cloudhop's
#: worker launcher: ``--restarts``, 2 by default)
WORKER_RESTARTS = 2
#: users whose Cloudhop server a round started and has not stopped yet
RUNNING: set = set()

#: the timeline's rows: (key, label); a side that has no such phase shows "-"
PHASES = [
    ("head_launcher", "head launcher running"),
    ("head_begun", "head `ray start` begun"),
    ("worker_launcher", "worker launchers running (last)"),
    ("head_up", "head up (`ray start` says started)"),
    ("server_process", "notebook server process started"),
    ("server_listening", "notebook server listening (its log)"),
    ("workers_begun", "workers' `ray start` begun (head seen, last)"),
    ("workers_up", "workers up (`ray start` says started, last)"),
    ("server_ready", "server ready (hub's progress stream)"),
    ("ready", "cluster ready"),
]
#: how long each step took: (label, from, to)
STEPS = [
    ("request -> head `ray start` begun", None, "head_begun"),
    ("head `ray start`", "head_begun", "head_up"),
    ("head up -> workers' `ray start` begun", "head_up", "workers_begun"),
    ("workers' `ray start`", "workers_begun", "workers_up"),
    ("workers up -> cluster ready", "workers_up", "ready"),
    ("head up -> notebook server listening", "head_up", "server_listening"),
    ("notebook server listening -> hub says ready", "server_listening", "server_ready"),
]


class RoundFailed(RuntimeError):
    """A round that did not produce a cluster: which side, how far it got, and why."""

    def __init__(self, side: str, reached: str, why: str):
        super().__init__(f"{side}: failed after {reached}: {why}")


@dataclass
class Round:
    """One measurement: seconds from the start to each phase reached (see PHASES)."""

    total: float
    phases: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def dashboard_nodes(dashboard_port: int) -> list[dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{dashboard_port}/api/v0/nodes?limit=1000", timeout=5) as r:
            return json.loads(r.read())["data"]["result"]["result"]
    except (OSError, ValueError, KeyError):
        return []


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])


# -- Cloudhop ---------------------------------------------------------------------------


def wait_for_progress(hub: HubProcess, user: str, t0: float, deadline: float) -> tuple[float, list]:
    """Follow the hub's progress stream of ``user``'s server until it is ready; returns the
    seconds from ``t0`` to ready and the messages seen (seconds, text). Raises
    :class:`RoundFailed` with the hub's message when the spawn fails."""
    seen = []
    url = f"{hub.url}/hub/api/users/{user}/server/progress"
    # as a browser asks for it: the hub's proxy passes an event stream on as it comes only
    # when asked for one (otherwise it waits for the whole answer, and times out)
    headers = {"Authorization": f"token {hub.token}", "Accept": "text/event-stream"}
    with requests.get(url, headers=headers, stream=True,
                      timeout=(10, max(1.0, deadline - time.perf_counter()))) as r:
        if r.status_code != 200:
            raise RoundFailed("cloudhop", "the request", f"progress stream: {r.status_code} {r.text[:500]}")
        for raw in r.iter_lines():
            if not raw.startswith(b"data:"):
                continue
            event = json.loads(raw[5:])
            at = time.perf_counter() - t0
            if event.get("message"):
                seen.append((round(at, 2), event["message"]))
            if event.get("ready"):
                return at, seen
            if event.get("failed"):
                raise RoundFailed("cloudhop", "the spawn", f"{event.get('message')}\nprogress: {seen}\n"
                                  f"hub log:\n{tail(hub.log())}")
    raise RoundFailed("cloudhop", "the spawn", f"the progress stream ended without ready; progress: {seen}")


def server_nodes(hub: HubProcess, user: str) -> list[dict]:
    """The server's node records from its state (admin:server_state): notebook and workers."""
    r = hub.api("GET", f"/users/{user}")
    r.raise_for_status()
    state = ((r.json().get("servers") or {}).get("") or {}).get("state") or {}
    return list(state.get("nodes") or [])


def node_log_path(hub: HubProcess, node_id: str) -> Path | None:
    """Where a local node's log is (the launcher's and Ray's output, kept after the node
    stops): the local provider's state folder in the hub's data folder."""
    for path in hub.data_dir.rglob(f"{node_id}.log"):
        return path
    return None


def node_log(hub: HubProcess, node_id: str) -> str:
    path = node_log_path(hub, node_id)
    return path.read_text(errors="replace") if path else ""


#: Jupyter Server's log line once it listens (its default log format: local time, ms)
JUPYTER_RUNNING = re.compile(r"\[\w (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3}) \w+\] Jupyter Server \S+ is running at")


def wait_for_phase(hub: HubProcess, nodes: list[dict], name: str, timeout: float = 15) -> None:
    """Give ``nodes`` (already counted alive by Ray) a moment to log phase ``name``: a raylet
    is alive before its ``ray start`` says so, and stopping the server at once would cut
    the line from the timeline. Not part of the measured time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(name in read_phases(node_log(hub, n["id"])) for n in nodes):
            return
        time.sleep(0.2)


def cloudhop_phases(hub: HubProcess, nodes: list[dict], t_request: float) -> tuple[dict, list]:
    """Phases (seconds after the request, a Unix time) from the nodes' launcher logs."""
    out, notes = {}, []
    workers = {"launcher": [], "head_seen": [], "ray_up": []}
    for ref in nodes:
        text = node_log(hub, ref["id"])
        phases = read_phases(text)
        starts = len(phases.get("ray_start", []))
        if starts > 1:
            notes.append(f"{ref.get('role')} {ref['id']}: `ray start` ran {starts} times")
        if ref.get("role") == WORKER_ROLE:
            for key in workers:
                if phases.get(key):
                    workers[key].append(phases[key][0])
            continue
        for key, name in (("head_launcher", "launcher"), ("head_begun", "ray_start"), ("head_up", "ray_up"),
                          ("server_process", "server_process")):
            if phases.get(name):
                out[key] = phases[name][0] - t_request
        listening = JUPYTER_RUNNING.search(text)
        if listening:
            out["server_listening"] = time.mktime(time.strptime(listening.group(1), "%Y-%m-%d %H:%M:%S")) \
                + float(listening.group(2)) / 1000 - t_request
    for key, name in (("worker_launcher", "launcher"), ("workers_begun", "head_seen"), ("workers_up", "ray_up")):
        if workers[name]:
            out[key] = max(workers[name]) - t_request
    return out, notes


def stop_and_check(hub: HubProcess, user: str, nodes: list[dict]) -> None:
    """Stop ``user``'s server and make sure its nodes went: a stop whose snapshot fails
    keeps the nodes running (by design, docs/durability.md), and a kept Ray cluster
    would load every later round. Kept nodes are stopped here (their launchers stop
    exactly their own Ray) and the round fails, saying so."""
    hub.stop_server(user, timeout=120)
    left = []
    for ref in nodes:
        record = next(iter(hub.data_dir.rglob(f"{ref['id']}.json")), None)
        if record is None:
            continue
        try:
            pid = json.loads(record.read_text())["pid"]
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError, KeyError):
            continue
        left.append((ref["id"], pid))
    for _, pid in left:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            time.sleep(0.2)
    if left:
        said = [line for line in hub.log().splitlines() if "WITHOUT terminating" in line or "kept" in line]
        raise RoundFailed("cloudhop", "the stop", f"the hub kept node(s) {[i for i, _ in left]} running "
                          f"(stopped here now): {' | '.join(said[-3:]) or 'the hub log does not say why'}")


def cloudhop_round(hub: HubProcess, user: str, workers: int, poll: float) -> Round:
    hub.ensure_user(user)
    RUNNING.add(user)  # stopped by main() if this round is cut short
    options = {"provider": "local", "gpu": "none", "ray": {"workers": workers, "gpu": "none", "gpu_count": 0}}
    t_request = time.time()
    t0 = time.perf_counter()
    deadline = t0 + TIMEOUT
    r = hub.api("POST", f"/users/{user}/server", json=options)
    if r.status_code not in (201, 202):
        raise RoundFailed("cloudhop", "the request", f"{r.status_code} {r.text[:500]}")
    try:
        server_ready, _progress = wait_for_progress(hub, user, t0, deadline)
        nodes = server_nodes(hub, user)
        logs = {n["id"]: node_log_path(hub, n["id"]) for n in nodes if n.get("role") == WORKER_ROLE}
        last_look = 0.0
        while True:
            # as by hand, where the alive count is checked once each `ray start` has said
            # the node started: here the workers' logs say it (reading a file loads no part
            # of the cluster); every few seconds the count is checked anyway
            said = all(path and "ray_up" in read_phases(path.read_text(errors="replace"))
                       for path in logs.values())
            if said or time.perf_counter() - last_look > SLOW_LOOK:
                last_look = time.perf_counter()
                s = hub.server_api("GET", user, "cloudhop/ray")
                status = s.json() if s.status_code == 200 else {"http": s.status_code, "body": s.text[:300]}
                alive = sum(1 for n in status.get("nodes") or [] if n.get("state") == "ALIVE")
                if s.status_code == 200 and alive == workers + 1:
                    elapsed = time.perf_counter() - t0
                    break
                if time.perf_counter() > deadline:
                    raise RoundFailed("cloudhop", "the server was ready",
                                      f"{alive} of {workers + 1} Ray nodes alive after {TIMEOUT}s; "
                                      f"status: {json.dumps(status)[:1500]}")
            time.sleep(poll)
    except (RoundFailed, requests.RequestException) as err:
        # the nodes' own logs say why (a `ray start` that gave up, a head that never came)
        try:
            nodes = server_nodes(hub, user)
        except requests.RequestException:
            nodes = []
        try:
            stop_and_check(hub, user, nodes)
        except RoundFailed as kept:
            err = f"{err}; and {kept}"
        logs = "\n".join(f"--- node {n['id']} ({n.get('role')}):\n{tail(node_log(hub, n['id']))}" for n in nodes)
        RUNNING.discard(user)
        raise RoundFailed("cloudhop", "the request", f"{err}\n{logs}") from None
    stop_and_check(hub, user, nodes)
    RUNNING.discard(user)
    phases, notes = cloudhop_phases(hub, nodes, t_request)
    phases.update(server_ready=server_ready, ready=elapsed)
    if len([n for n in nodes if n.get("role") == WORKER_ROLE]) != workers:
        notes.append(f"the state listed {len(nodes) - 1} worker node(s), not {workers}")
    return Round(elapsed, phases, notes)


# -- by hand ----------------------------------------------------------------------------


def by_hand_round(workers: int, poll: float) -> Round:
    """``ray start --head`` then N ``ray start --address`` (no --block: they return once
    started, as a person would type them), with ports like Cloudhop's. The port blocks
    stay claimed for the round, so no other Ray node on the machine takes them."""
    locks = [claim_free_block() for _ in range(workers + 1)]
    head, rest = locks[0].block, [lk.block for lk in locks[1:]]
    tmp = tempfile.gettempdir()
    nodes = [RayNode([], temp_dir_for(b.base, tmp)) for b in [head, *rest]]
    phases: dict = {}
    try:
        t0 = time.perf_counter()
        phases["head_begun"] = 0.0
        head_args = [a for a in head_start_args(head, temp_dir=temp_dir_for(head.base, tmp)) if a != "--block"]
        p = subprocess.run(ray_cli(sys.executable) + head_args, capture_output=True, text=True)
        if p.returncode:
            raise RoundFailed("by hand", "head `ray start`", f"exit {p.returncode}:\n{tail(p.stdout + p.stderr)}")
        phases["head_up"] = phases["workers_begun"] = time.perf_counter() - t0
        def start_worker(b):
            return subprocess.Popen(ray_cli(sys.executable) + [
                a for a in worker_start_args(f"127.0.0.1:{head.port}", b, temp_dir=temp_dir_for(b.base, tmp),
                                             num_gpus=0, num_cpus=1, resources={WORKER_RESOURCE: 1}) if a != "--block"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        procs = [start_worker(b) for b in rest]
        ups, notes = [], []
        for b, proc in zip(rest, procs):
            out, _ = proc.communicate()
            for rerun in range(1, WORKER_RESTARTS + 1):
                if not (proc.returncode and RAY_STARTUP_TIMEOUT in out):
                    break
                # Ray gives a raylet a fixed time to register; on 2 busy cores it can run
                # out. Cloudhop's worker launcher starts Ray again (twice at most), so
                # does this side, as a person would, and the note says so
                notes.append(f"a worker's `ray start` timed out in Ray's startup; run again ({rerun})")
                RayNode([], temp_dir_for(b.base, tmp)).stop()
                proc = start_worker(b)
                out, _ = proc.communicate()
            ups.append(time.perf_counter() - t0)
            if proc.returncode:
                raise RoundFailed("by hand", "a worker's `ray start`", f"exit {proc.returncode}:\n{tail(out)}")
        if ups:
            phases["workers_up"] = max(ups)
        while True:
            alive = [n for n in dashboard_nodes(head.dashboard_port) if n.get("state") == "ALIVE"]
            if len(alive) >= workers + 1:
                break
            if time.perf_counter() - t0 > TIMEOUT:
                raise RoundFailed("by hand", "every `ray start` returned",
                                  f"{len(alive)} of {workers + 1} nodes alive after {TIMEOUT}s")
            time.sleep(poll)
        elapsed = time.perf_counter() - t0
        phases["ready"] = elapsed
        return Round(elapsed, phases, notes)
    finally:
        for node in reversed(nodes):
            node.stop()
        for lock in locks:
            lock.release()


# -- report -----------------------------------------------------------------------------


def median_of(rounds: list[Round], key: str) -> float | None:
    values = [r.phases[key] for r in rounds if key in r.phases]
    return statistics.median(values) if values else None


def step_of(rounds: list[Round], start: str | None, end: str) -> float | None:
    values = [r.phases[end] - (r.phases[start] if start else 0.0) for r in rounds
              if end in r.phases and (start is None or start in r.phases)]
    return statistics.median(values) if values else None


def row(label: str, theirs: float | None, ours: float | None) -> str:
    def cell(v):
        return f"{v:9.2f}" if v is not None else f"{'-':>9}"
    ratio = f"{ours / theirs:7.2f}x" if ours is not None and theirs else f"{'':>8}"
    return f"  {label:<46}{cell(theirs)} {cell(ours)} {ratio}"


def report(workers: int, ours: list[Round], theirs: list[Round]) -> None:
    mo, mt = statistics.median(r.total for r in ours), statistics.median(r.total for r in theirs)
    print(f"\nworkers: {workers}, rounds: {len(ours)}")
    print(f"timeline, median seconds from the request (Cloudhop) / the first `ray start` (by hand):")
    print(f"  {'phase':<46}{'by hand':>9} {'cloudhop':>9}   ratio")
    for key, label in PHASES:
        print(row(label, median_of(theirs, key), median_of(ours, key)))
    print("steps, median seconds each took:")
    for label, start, end in STEPS:
        print(row(label, step_of(theirs, start, end), step_of(ours, start, end)))
    for side, rounds in (("cloudhop", ours), ("by hand", theirs)):
        for i, r in enumerate(rounds):
            for note in r.notes:
                print(f"  note, {side}, round {i}: {note}")
    print(f"cloudhop spawn -> server ready + {workers + 1} Ray nodes alive: median {mo:.2f}s "
          f"(min {min(r.total for r in ours):.2f}s)")
    print(f"by hand  ray start head + {workers} worker(s) -> alive:        median {mt:.2f}s "
          f"(min {min(r.total for r in theirs):.2f}s)")
    print(f"ratio cloudhop/by hand: {mo / mt:.3f}x  (goal <= 1.10x)")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settle", type=float, default=5.0, help="seconds of quiet before each measurement")
    ap.add_argument("--poll", type=float, default=0.2,
                    help="seconds between two looks at a starting cluster's nodes (both sides)")
    args = ap.parse_args()
    if args.workers < 0 or args.rounds < 1:
        ap.error("--workers must be 0 or more and --rounds 1 or more")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the clean-up below runs
    print(f"load average at start: {loadavg()}", flush=True)
    ours: list[Round] = []
    theirs: list[Round] = []
    with tempfile.TemporaryDirectory() as tmp:
        hub = HubProcess(Path(tmp), name="cloudhop").start()
        i = 0
        try:
            for i in range(args.rounds):
                # alternate which goes first, and let the previous cluster's processes
                # finish exiting, so neither side inherits the other's teardown
                for side in (("hand", "cloudhop") if i % 2 == 0 else ("cloudhop", "hand")):
                    time.sleep(args.settle)
                    if side == "hand":
                        theirs.append(by_hand_round(args.workers, args.poll))
                    else:
                        ours.append(cloudhop_round(hub, f"u{i}", args.workers, args.poll))
                print(f"round {i}: by hand {theirs[-1].total:.2f}s, cloudhop {ours[-1].total:.2f}s "
                      f"(load {loadavg()})", flush=True)
        except RoundFailed as err:
            print(f"\nround {i} failed (load {loadavg()}) on the side {err}", file=sys.stderr)
            return 1
        finally:
            for user in list(RUNNING):  # cut short (Ctrl-C, SIGTERM): no cluster is left running
                try:
                    stop_and_check(hub, user, server_nodes(hub, user))
                except Exception as err:
                    print(f"could not stop {user}'s server: {err}", file=sys.stderr)
            hub.stop()
    report(args.workers, ours, theirs)
    print(f"load average at end: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
