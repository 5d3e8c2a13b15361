"""Running one Ray node on a node: start ``ray start --block``, stop exactly it.

Shared by the head launcher (:mod:`.head`) and the worker launcher (:mod:`.worker`).
``ray stop`` is never used: it stops every Ray process of the machine, other users'
included. A node is stopped by signalling the processes that belong to it - the
``ray start`` process's descendants and anything whose command line names its own
``--temp-dir`` - SIGTERM first (the raylet then leaves the cluster cleanly), SIGKILL
after a grace period.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil

from ..procs import stop_processes
from .commands import ray_cli


def log(msg: str) -> None:
    print(f"[cloudhop-ray {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_for_port(address: str, timeout: float) -> bool:
    """True once ``host:port`` accepts a TCP connection, False after ``timeout`` s."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return True
        except OSError:
            time.sleep(0.25)
    return False


class HeadWatch:
    """Asks a cluster's GCS whether it has an alive node (the head's raylet), with one
    client kept across calls (making a client per poll costs the CPU a starting head
    needs).

    A worker that joins while the head is still starting competes with it for the CPU
    and can hit ``ray start``'s fixed 30 s registration timeout, so workers wait for
    this. Uses Ray's own GCS client; if that moves in a future Ray, the GCS port
    answering is taken as enough."""

    def __init__(self, address: str):
        self.address = address
        self._client = None

    def registered(self, timeout: float = 2) -> bool:
        try:
            from ray._raylet import GcsClient
            from ray.core.generated.gcs_pb2 import GcsNodeInfo
        except ImportError:
            return True
        try:
            if self._client is None:
                self._client = GcsClient(address=self.address)
            infos = self._client.get_all_node_info(
                timeout=timeout, state_filter=GcsNodeInfo.GcsNodeState.ALIVE)
        except Exception:  # GCS not answering yet, or an API change: keep waiting
            return False
        return len(infos) > 0


#: what ``ray start`` prints once its node is up and registered
STARTED_LINE = b"Ray runtime started."


class RayNode:
    """One ``ray start --block`` process and everything it starts; ``started`` is set
    once Ray reports the node up."""

    def __init__(self, args: list[str], temp_dir: str, python: str = sys.executable):
        self.argv = ray_cli(python) + list(args)
        self.temp_dir = temp_dir
        self.proc: subprocess.Popen | None = None
        self.started = threading.Event()

    def start(self, env: dict | None = None) -> None:
        log("starting: " + " ".join(self.argv[2:]))
        self.started = threading.Event()
        # same session as the launcher: a provider that kills the node's session (local)
        # or container (VM) takes the Ray processes with it even if this launcher dies
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._relay, args=(self.proc, self.started), daemon=True).start()

    @staticmethod
    def _relay(proc: subprocess.Popen, started: threading.Event) -> None:
        """Pass Ray's output on to the node's log, noting when Ray says it is up (so the
        launcher needs no polling, which would slow a starting head)."""
        for raw in proc.stdout:
            sys.stderr.buffer.write(raw)
            sys.stderr.flush()
            if STARTED_LINE in raw:
                started.set()

    def poll(self) -> int | None:
        return self.proc.poll() if self.proc else 0

    def processes(self) -> list[psutil.Process]:
        """Every live process of this Ray node."""
        found: dict[int, psutil.Process] = {}
        if self.proc is not None:
            try:
                root = psutil.Process(self.proc.pid)
                found[root.pid] = root
                for child in root.children(recursive=True):
                    found[child.pid] = child
            except psutil.NoSuchProcess:
                pass
        marker = self.temp_dir.rstrip("/") + "/"
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any(marker in a or a.endswith(self.temp_dir) for a in p.info["cmdline"] or ()):
                    found[p.pid] = p
            except psutil.Error:
                continue
        for p in list(found.values()):  # workers and dashboard modules name no temp dir
            try:
                for child in p.children(recursive=True):
                    found[child.pid] = child
            except psutil.Error:
                continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self, grace: float = 5.0) -> None:
        """Stop this node's processes (raylet first, so it leaves the cluster cleanly)
        and remove its temp dir."""
        procs = self.processes()
        stop_processes(sorted(procs, key=lambda p: "raylet" not in _name(p)), grace)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        log(f"stopped ({len(procs)} process(es))")


def sweep_stale_temp_dirs(root: str) -> list[str]:
    """Remove temp dirs of Ray nodes that died without cleaning up (a worker killed
    with SIGKILL, a crashed node): a dir whose port block no live launcher holds."""
    from .ports import PortsBusy, claim_block

    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        base = name[len("cloudhop-ray-"):]
        if not (name.startswith("cloudhop-ray-") and base.isdigit()):
            continue
        try:
            lock = claim_block(int(base))
        except (PortsBusy, OSError):
            continue  # held: a live Ray node's dir
        try:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            shutil.rmtree(os.path.join(root, name + "-jupyter"), ignore_errors=True)
            removed.append(name)
        finally:
            lock.release()
    return removed


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""


class Signals:
    """Turns SIGTERM/SIGINT/SIGHUP into a flag the launcher's loop checks."""

    def __init__(self):
        self.received: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame):
        self.received = signum
