"""The local provider: servers as processes on this machine (the embedded default).

*Regions* partition one machine's GPUs and disks, so a box with 8 GPUs can be two
sites, and migration between two regions can be tried on one machine::

    c.LocalProvider.regions = {
        "site-a": {"gpus": "0,1,2,3", "root": "/srv/site-a"},
        "site-b": {"gpus": "4,5,6,7", "root": "/srv/site-b"},
    }

Each node is a process (``jupyterhub-singleuser``, or ``ray start`` for a Ray worker)
started in its own session, so it outlives a hub restart; its record is a small JSON
file in :attr:`LocalProvider.state_dir`, which is how a restarted hub finds it again.
A GPU given to one node is not given to another until that node is terminated. The
process sees only its GPUs through ``CUDA_VISIBLE_DEVICES`` and none of the hub's
environment beyond what the spawner passes (no credentials).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
from traitlets import Dict, Float, Unicode, default, validate

from ..gpus import GPU, detect_gpus
from ..offers import NO_GPU, Offer
from ..procs import stop_processes
from ..validate import check_number
from .base import (
    FAILED, RUNNING, TAG_REQUEST, TAG_ROLE, TAG_SERVER, TAG_USER, TERMINATED,
    CapacityError, LaunchSpec, Node, Provider,
)

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_dirname(name: str) -> str:
    """A user or server name as one path component (no separators, no dot-dot)."""
    cleaned = _SAFE.sub(lambda m: f"-{ord(m.group()):x}-", name) or "default"
    return "_" + cleaned if cleaned.startswith(".") else cleaned


@dataclass(frozen=True)
class Region:
    name: str
    #: "all", "none", or a list of NVML indices / UUIDs
    gpus: str | tuple
    root: str


class LocalProvider(Provider):
    name = "local"
    display_name = "Local (this machine)"
    #: the local provider chooses a free port per node itself
    node_port = None

    regions = Dict(
        help="""Regions of this machine: name -> {"gpus": "all" | "none" | "0,1" (NVML
        indices or GPU UUIDs), "root": folder holding that region's workspaces}. The
        default is one region, "local", with all GPUs. A region's root defaults to
        <default_root>/<region>.""",
    ).tag(config=True)

    default_root = Unicode(
        help="Folder under which regions without a root keep their workspaces "
        "(default: ./cloudhop-workspaces). `cloudhop up` sets it inside its data dir.",
    ).tag(config=True)

    state_dir = Unicode(
        help="Folder for node records (one JSON file per running process). "
        "Default: <default_root>/.nodes",
    ).tag(config=True)

    nvml_module = Unicode(
        "pynvml",
        help="Import path of the NVML binding (pynvml's API, from nvidia-ml-py).",
    ).tag(config=True)

    gpu_price_hour = Dict(
        help="Operator-set price per GPU-hour by model (e.g. {'A100': 1.2}) shown in "
        "offers; GPUs not listed are free (0).",
    ).tag(config=True)

    cpu_price_hour = Float(0.0, help="Price per hour of a CPU-only local server (USD).").tag(config=True)

    stop_timeout = Float(10.0, help="Seconds to wait after SIGTERM before SIGKILL on stop.").tag(config=True)

    @validate("cpu_price_hour", "stop_timeout")
    def _valid_number(self, proposal):
        unit = "USD per hour" if proposal["trait"].name == "cpu_price_hour" else "seconds"
        return check_number(proposal, minimum=0, unit=unit)

    @default("default_root")
    def _default_root(self):
        return os.path.abspath("cloudhop-workspaces")

    @default("state_dir")
    def _default_state_dir(self):
        return os.path.join(self.default_root, ".nodes")

    @default("regions")
    def _default_regions(self):
        return {"local": {"gpus": "all"}}

    @validate("regions")
    def _check_regions(self, proposal):
        value = proposal["value"]
        if not isinstance(value, dict) or not value:
            raise ValueError("c.LocalProvider.regions must be a non-empty dict of region name -> settings")
        for name, conf in value.items():
            where = f"c.LocalProvider.regions[{name!r}]"
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", name):
                raise ValueError(f"{where}: region names are letters, digits, '.', '_' and '-'")
            if not isinstance(conf, dict):
                raise ValueError(f"{where} must be a dict like {{'gpus': 'all'}}, not {conf!r}")
            unknown = set(conf) - {"gpus", "root"}
            if unknown:
                raise ValueError(f"{where}: unknown setting(s) {sorted(unknown)}; valid: 'gpus', 'root'")
            gpus = conf.get("gpus", "all")
            if not isinstance(gpus, (str, list, tuple)):
                raise ValueError(f"{where}['gpus'] must be 'all', 'none' or '0,1', not {gpus!r}")
            if "root" in conf and not isinstance(conf["root"], str):
                raise ValueError(f"{where}['root'] must be a folder path string")
        return value

    def __init__(self, **kw):
        super().__init__(**kw)
        self._gpus: list[GPU] | None = None
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = asyncio.Lock()

    # -- what this machine has --------------------------------------------------

    @property
    def gpus(self) -> list[GPU]:
        if self._gpus is None:
            self._gpus = detect_gpus(self.nvml_module)
        return self._gpus

    def region(self, name: str) -> Region:
        conf = self.regions[name]
        gpus = conf.get("gpus", "all")
        if isinstance(gpus, str) and gpus not in ("all", "none"):
            gpus = tuple(g.strip() for g in gpus.split(",") if g.strip())
        elif isinstance(gpus, list):
            gpus = tuple(str(g) for g in gpus)
        root = conf.get("root") or os.path.join(self.default_root, name)
        return Region(name=name, gpus=gpus, root=os.path.abspath(os.path.expanduser(root)))

    def region_gpus(self, name: str) -> list[GPU]:
        sel = self.region(name).gpus
        if sel == "all":
            return list(self.gpus)
        if sel == "none":
            return []
        return [g for g in self.gpus if g.index in sel or g.uuid in sel]

    def offers(self) -> list[Offer]:
        mem = round(psutil.virtual_memory().total / 2**30, 1)
        cpus = os.cpu_count() or 1
        used = self._allocated()
        out = []
        for name in self.regions:
            out.append(Offer(
                provider="local", region=name, instance_type="cpu", gpu=NO_GPU, gpu_count=0,
                vcpus=cpus, memory_gib=mem, price_hour=self.cpu_price_hour,
                spot_price_hour=None, note="this machine", available=1,
            ))
            by_model: dict[str, list[GPU]] = {}
            for g in self.region_gpus(name):
                by_model.setdefault(g.model, []).append(g)
            for model, gpus in sorted(by_model.items()):
                free = sum(1 for g in gpus if g.uuid not in used)
                rate = float(self.gpu_price_hour.get(model, 0.0))
                for k in range(1, len(gpus) + 1):
                    out.append(Offer(
                        provider="local", region=name, instance_type=f"{model}x{k}",
                        gpu=model, gpu_count=k, gpu_memory_gib=gpus[0].memory_gib,
                        vcpus=cpus, memory_gib=mem, price_hour=round(rate * k, 4),
                        spot_price_hour=None, note=f"{free} of {len(gpus)} free",
                        available=free // k,
                    ))
        return out

    # -- node records -----------------------------------------------------------

    def _record_path(self, node_id: str) -> Path:
        return Path(self.state_dir) / f"{node_id}.json"

    def _records(self) -> list[dict]:
        out = []
        folder = Path(self.state_dir)
        if not folder.is_dir():
            return out
        for path in folder.glob("*.json"):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def _alive(self, rec: dict) -> bool:
        proc = self._procs.get(rec["id"])
        if proc is not None and proc.poll() is not None:
            return False
        try:
            p = psutil.Process(rec["pid"])
            return abs(p.create_time() - rec["created"]) < 1.0 and p.status() != psutil.STATUS_ZOMBIE
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def _allocated(self) -> set[str]:
        return {u for rec in self._records() if self._alive(rec) for u in rec.get("gpus", [])}

    def _node(self, rec: dict, state: str | None = None, detail: str = "") -> Node:
        state = state or (RUNNING if self._alive(rec) else TERMINATED)
        if state == TERMINATED and rec.get("id") in self._procs:
            code = self._procs[rec["id"]].poll()
            if code not in (None, 0, -signal.SIGTERM):
                state, detail = FAILED, f"process exited with code {code}; see {rec.get('log')}"
        return Node(
            id=rec["id"], provider="local", region=rec["region"], state=state,
            ip="127.0.0.1", port=rec.get("port"), tags=rec.get("tags", {}),
            info={"pid": rec["pid"], "gpus": rec.get("gpus", []), "workspace": rec.get("workspace"),
                  "role": rec.get("role")},
            detail=detail,
        )

    # -- the contract -----------------------------------------------------------

    async def launch(self, spec: LaunchSpec) -> Node:
        async with self._lock:  # allocation and start are one step per provider
            for rec in self._records():
                if rec.get("tags", {}).get(TAG_REQUEST) == spec.request_id:
                    if self._alive(rec):
                        return self._node(rec)
                    self._record_path(rec["id"]).unlink(missing_ok=True)
            gpus = self._allocate(spec.offer)
            rec = await asyncio.to_thread(self._start, spec, gpus)
        return self._node(rec, detail=f"process {rec['pid']} started")

    def _allocate(self, offer: Offer) -> list[GPU]:
        if offer.region not in self.regions:
            raise CapacityError(f"local region {offer.region!r} is not configured", offer=offer)
        if offer.gpu == NO_GPU or offer.gpu_count == 0:
            return []
        used = self._allocated()
        free = [g for g in self.region_gpus(offer.region) if g.model.casefold() == offer.gpu.casefold() and g.uuid not in used]
        if len(free) < offer.gpu_count:
            raise CapacityError(
                f"only {len(free)} {offer.gpu} GPU(s) free in local region {offer.region!r}, "
                f"{offer.gpu_count} requested", offer=offer,
            )
        return free[: offer.gpu_count]

    def _workspace(self, spec: LaunchSpec) -> Path:
        root = Path(self.region(spec.offer.region).root)
        user = safe_dirname(spec.tags.get(TAG_USER, "user"))
        server = safe_dirname(spec.tags.get(TAG_SERVER) or "default")
        return root / user / server

    def _start(self, spec: LaunchSpec, gpus: list[GPU]) -> dict:
        node_id = f"local-{uuid.uuid4().hex[:12]}"
        workspace = self._workspace(spec)
        workspace.mkdir(parents=True, exist_ok=True)
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        log_path = Path(self.state_dir) / f"{node_id}.log"
        env = {
            # the process gets the spawner's env and nothing else of the hub's
            "HOME": str(workspace),
            "USER": os.environ.get("USER", "cloudhop"),
            "SHELL": os.environ.get("SHELL", "/bin/sh"),
            **{k: str(v) for k, v in spec.env.items()},
            "CUDA_VISIBLE_DEVICES": ",".join(g.uuid for g in gpus),
            "CLOUDHOP_GPUS": json.dumps([g.model for g in gpus]),
        }
        env.setdefault("PATH", os.path.dirname(sys.executable) + os.pathsep + os.defpath)
        cmd = list(spec.cmd)
        if spec.role == "notebook" and os.geteuid() == 0 and "--allow-root" not in cmd:
            cmd.append("--allow-root")
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd, cwd=workspace, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            )
        self._procs[node_id] = proc
        rec = {
            "id": node_id, "region": spec.offer.region, "pid": proc.pid,
            "created": psutil.Process(proc.pid).create_time(), "port": spec.port,
            "gpus": [g.uuid for g in gpus], "role": spec.role,
            "tags": {**spec.tags, TAG_REQUEST: spec.request_id, TAG_ROLE: spec.role},
            "workspace": str(workspace), "log": str(log_path), "started": time.time(),
        }
        tmp = self._record_path(node_id).with_suffix(".tmp")
        tmp.write_text(json.dumps(rec))
        tmp.replace(self._record_path(node_id))
        self.log.info("local: started %s (pid %s) in %s with GPUs %s", node_id, proc.pid,
                      spec.offer.region, [g.index for g in gpus] or "none")
        return rec

    async def status(self, node_id: str) -> Node:
        path = self._record_path(node_id)
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            return Node(id=node_id, provider="local", region="", state=TERMINATED)
        return self._node(rec)

    async def terminate(self, node_id: str) -> None:
        path = self._record_path(node_id)
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        # even when the server itself has died, its kernels may still run in its session
        await asyncio.to_thread(self._kill_tree, rec)
        proc = self._procs.pop(node_id, None)
        if proc is not None:
            proc.poll()
        path.unlink(missing_ok=True)
        self.log.info("local: terminated %s", node_id)

    def _kill_tree(self, rec: dict) -> None:
        """SIGTERM the node's whole session and descendants, then SIGKILL stragglers.

        The session outlives its leader: when the server process is gone, what is left in
        its session (kernels, terminals) still goes, but only processes started after the
        node and living in its workspace, so a recycled pid is never taken for the node's.
        """
        pid = rec["pid"]
        root_alive = self._alive(rec)
        procs: dict[int, psutil.Process] = {}
        if root_alive:
            try:
                root = psutil.Process(pid)
                procs[pid] = root
                for child in root.children(recursive=True):
                    procs[child.pid] = child
            except psutil.NoSuchProcess:
                root_alive = False
        for p in psutil.process_iter():
            try:
                if os.getsid(p.pid) == pid and (root_alive or self._left_behind(p, rec)):
                    procs[p.pid] = p
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        stop_processes(procs.values(), self.stop_timeout)

    @staticmethod
    def _left_behind(p: psutil.Process, rec: dict) -> bool:
        """Whether ``p``, in the session of a node whose server has exited, is the node's."""
        if p.pid == rec["pid"] or p.create_time() < rec["created"] - 1.0:
            return False
        return p.environ().get("HOME") == rec.get("workspace")

    async def list_nodes(self, tags: dict) -> list[Node]:
        out = []
        for rec in self._records():
            rtags = rec.get("tags", {})
            if all(rtags.get(k) == v for k, v in tags.items()) and self._alive(rec):
                out.append(self._node(rec))
        return out
