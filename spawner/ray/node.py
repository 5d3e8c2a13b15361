"""Running one Ray node on a node: start ``ray start --block``, stop exactly it.

Shared by the head launcher (:mod:`.head`) and the worker launcher (:mod:`.worker`).
``ray stop`` is never used: it stops every Ray process of the machine, other users'
included. A node is stopped by signalling the processes that belong to it - the
``ray start`` process's descendants and anything whose command line names its own
``--temp-dir`` - SIGTERM first (the raylet then leaves the cluster cleanly), SIGKILL
after a grace period.

Every file of a node (Ray's temp dir, the notebook's Jupyter config, the cluster's
token) lives in :func:`private_root`, a 0700 folder of the node's account, never under
a name another account could make first in the shared temp folder.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from ..procs import stop_processes
from .commands import ray_cli


class PrivateRootError(RuntimeError):
    """The account's private folder exists but is not the account's own folder."""


def private_root(base: str | None = None) -> str:
    """``<temp folder>/cloudhop-u<uid>``, this account's folder for its Ray nodes: made
    with mode 0700 or, if it exists, checked to be a real folder (not a link) this
    account owns, its mode set back to 0700. Raises :class:`PrivateRootError` for a
    folder another account made, naming it (a squatter cannot get files put there)."""
    uid = os.getuid()
    path = os.path.join(base or tempfile.gettempdir(), f"cloudhop-u{uid}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
        raise PrivateRootError(
            f"{path} is not a folder of this account (uid {uid}); Ray will not use it. "
            "Remove it, or set TMPDIR to another folder")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def log(msg: str) -> None:
    print(f"[cloudhop-ray {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


#: a phase line in a node's log (:func:`phase`): ``phase <name> at <Unix time>``
PHASE_LINE = re.compile(r"\bphase ([a-z_]+) at (\d+\.\d+)")


def phase(name: str) -> None:
    """Log that this node reached phase ``name`` of its start, with the wall-clock time
    to the millisecond (:data:`PHASE_LINE`): ``launcher`` (the launcher runs),
    ``ray_start`` (``ray start`` begun), ``head_seen`` (a worker saw its head
    registered, :mod:`.join`), ``ray_up`` (``ray start`` says the node is up),
    ``server_process`` (the head launcher started the notebook server). The node's log
    is the record: benchmarks/ray_attach.py reads these lines for its per-phase
    timeline (docs/ray.md, "Speed"). One line each, no polling: it costs nothing."""
    log(f"phase {name} at {time.time():.3f}")


def read_phases(text: str) -> dict[str, list[float]]:
    """The :func:`phase` lines of a node's log: phase -> its times, in order (a
    restarted ``ray start`` logs ``ray_start`` again)."""
    out: dict[str, list[float]] = {}
    for m in PHASE_LINE.finditer(text):
        out.setdefault(m.group(1), []).append(float(m.group(2)))
    return out


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
            # with a new client next time: a head whose first `ray start` gave up (Ray's
            # startup timeout on a busy machine) is started again with a new GCS on the
            # same port, which a client of the old one never reaches
            self._client = None
            return False
        return len(infos) > 0


#: what ``ray start`` prints once its node is up and registered
STARTED_LINE = b"Ray runtime started."


class RayNode:
    """One ``ray start --block`` process and everything it starts; ``started`` is set
    once Ray reports the node up. With ``after_head`` (a worker), the process first
    waits for that head to register (:mod:`.join`)."""

    def __init__(self, args: list[str], temp_dir: str, python: str = sys.executable, *,
                 loopback: bool = False, after_head: str | None = None, head_timeout: float = 600.0):
        self.args = list(args)
        self.argv = ray_cli(python, loopback=loopback, after_head=after_head, head_timeout=head_timeout) + self.args
        self.temp_dir = temp_dir
        self.proc: subprocess.Popen | None = None
        self.started = threading.Event()

    def start(self, env: dict | None = None) -> None:
        log("starting: ray " + " ".join(self.args))
        phase("ray_start")
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
            if STARTED_LINE in raw and not started.is_set():
                phase("ray_up")
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
    """Remove, from the private folder ``root``, what Ray nodes left when they died
    without cleaning up (a worker killed with SIGKILL, a crashed node): the temp dir,
    Jupyter config and token of each block no live launcher holds. Returns the temp
    dirs' names (``ray-<base>``)."""
    from .commands import token_path_for
    from .ports import PortsBusy, claim_block

    try:
        names = os.listdir(root)
    except OSError:
        return []
    bases = sorted({int(m.group(1)) for m in map(_LEFT_BEHIND.fullmatch, names) if m})
    removed = []
    for base in bases:
        try:
            lock = claim_block(base)
        except (PortsBusy, OSError):
            continue  # held: a live Ray node's files
        try:
            path = os.path.join(root, f"ray-{base}")
            shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(path + "-jupyter", ignore_errors=True)
            remove_file(token_path_for(path))
            removed.append(f"ray-{base}")
        finally:
            lock.release()
    return removed


#: what a Ray node on block N leaves in the private folder
_LEFT_BEHIND = re.compile(r"ray-(\d+)(?:-jupyter|\.token)?")


def remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


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
