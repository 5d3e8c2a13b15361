"""The local provider: servers as processes on this machine (the embedded default).

*Regions* partition one machine's GPUs and disks, so a box with 8 GPUs can be two
sites, and migration between two regions can be tried on one machine::

    c.LocalProvider.regions = {
        "site-a": {"gpus": "0,1,2,3", "root": "/srv/site-a"},
        "site-b": {"gpus": "4,5,6,7", "root": "/srv/site-b"},
    }

A region with ``"ephemeral": True`` deletes a server's workspace when its notebook node
is terminated, as a cloud VM's boot disk goes with the VM: a hibernating stop and the
next start's restore (:mod:`..durable`) can then be tried on one machine.

*GPU slices*: a GPU in MIG mode is offered as its MIG devices, one per server
(``A100-MIG-1g.10gb``, :mod:`..gpus`). A region with ``"share_gpus": 4`` time-shares
each of its whole GPUs between up to 4 servers: its GPUs are offered as
``<model>-shared`` ("A100 (shared by up to 4)"), one per server, each server placed on
the least-used GPU and told its share in ``CLOUDHOP_GPU_SHARED_BY``. Time-sharing
splits compute time, not memory: servers on one GPU see each other's memory use.

Each node is a process (``jupyterhub-singleuser``, or ``ray start`` for a Ray worker)
started in its own session, so it outlives a hub restart; its record is a small JSON
file in :attr:`LocalProvider.state_dir`, which is how a restarted hub finds it again.
A GPU given to one node is not given to another until that node is terminated. The
process sees only its GPUs through ``CUDA_VISIBLE_DEVICES`` and none of the hub's
environment beyond what the spawner passes (no credentials).

*Isolation* (:attr:`LocalProvider.isolation`): when the hub runs as root, each hub
user's nodes run as that user's own system account (:mod:`.accounts`, made on the first
spawn), in a workspace only that account may enter (:mod:`.workspaces`); the hub, its
proxy and services stay root, so a user's code can read neither another user's files
nor another process's environment. A hub that is not root has one OS user for
everything, so it serves one hub user (the first to spawn) unless the operator sets
``isolation = "none"`` and users share everything knowingly.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import psutil
from traitlets import Dict, Enum, Float, Unicode, default, validate

from ..gpus import GPU, probe_gpus
from ..hubid import kept_secret
from ..offers import NO_GPU, SHARED_SUFFIX, Offer
from ..procs import stop_processes
from ..validate import check_number, require_number
from . import local_procs, workspaces
from .accounts import Account, check_template, ensure_account, system_username
from .base import (
    FAILED, RUNNING, TAG_REQUEST, TAG_ROLE, TAG_SERVER, TAG_USER, TERMINATED,
    CapacityError, LaunchSpec, Node, Provider, ProviderError,
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
    #: servers that may time-share each whole GPU (1: a GPU is one server's)
    share_gpus: int = 1


#: the most servers a region may put on one time-shared GPU
MAX_SHARE = 64


class IsolationError(ProviderError):
    """A hub that is not root refuses a second hub user (``isolation = "users"``)."""

    reason = "isolation"
    status_code = 403
    failover = True


#: the file in the state folder naming the one hub user a hub that is not root serves
ONLY_USER_FILE = "only-user"  # not *.json: those are node records
#: the environment variable holding the node's id in every process it starts (kernels too)
NODE_ENV = "CLOUDHOP_NODE_ID"
#: how long (ns) after its last change a record file's parse is kept (:meth:`LocalProvider._records`):
#: well above a file system's timestamp tick
SETTLED_NS = 100_000_000


class LocalProvider(Provider):
    name = "local"
    display_name = "Local (this machine)"
    #: the local provider chooses a free port per node itself
    node_port = None

    regions = Dict(
        help="""Regions of this machine: name -> {"gpus": "all" | "none" | "0,1" (NVML
        indices or GPU UUIDs), "root": folder holding that region's workspaces,
        "share_gpus": N (each whole GPU time-shared by up to N servers), "price_hour":
        USD per hour of a server there (replaces cpu_price_hour; GPUs' prices add to it)}. The
        default is one region, "local", with all GPUs. A region's root defaults to
        <default_root>/<region>.""",
    ).tag(config=True)

    default_root = Unicode(
        help="Folder under which regions without a root keep their workspaces "
        "(default: ./cloudhop-workspaces). `cloudhop up` sets it inside its data dir, or "
        "to /var/lib/cloudhop/workspaces/<hub id> when it runs as root. With isolation, "
        "every folder above it must be searchable by other users (mode o+x).",
    ).tag(config=True)

    former_root = Unicode(
        "",
        help="Folder regions without a root kept their workspaces in before (set by "
        "`cloudhop up` for a root hub: its data folder's workspaces). A workspace found "
        "there and not under default_root is moved on its next spawn.",
    ).tag(config=True)

    isolation = Enum(
        ["users", "none"], "users",
        help="""How users' servers are kept apart. "users" (the default): with the hub
        running as root, each hub user's servers run as their own system account
        (system_user_template) in a workspace only that account can enter; a hub that
        is not root then serves one hub user only (the first to spawn) and refuses
        others. "none": every server runs as the hub's system account, so all users can
        read and change each other's files and servers (one person or a trusted group).""",
    ).tag(config=True)

    system_user_template = Unicode(
        "jupyter-{username}",
        help="""Name of the system account a hub user's servers run as (isolation
        "users", hub running as root), made with useradd on the first spawn. A name that
        useradd would not take, or a hub name with other characters than lowercase
        letters, digits and '-', is lowercased, cleaned and given a short hash suffix,
        so two hub users never share an account.""",
    ).tag(config=True)

    @validate("system_user_template")
    def _valid_template(self, proposal):
        return check_template(proposal["value"])

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
            unknown = set(conf) - {"gpus", "root", "share_gpus", "ephemeral", "price_hour"}
            if unknown:
                raise ValueError(f"{where}: unknown setting(s) {sorted(unknown)}; valid: 'gpus', 'root', "
                                 "'share_gpus', 'ephemeral', 'price_hour'")
            if "price_hour" in conf:
                require_number(conf["price_hour"], f"{where}['price_hour']", minimum=0, what="a number of USD per hour")
            if not isinstance(conf.get("ephemeral", False), bool):
                raise ValueError(f"{where}['ephemeral'] must be True or False, not {conf['ephemeral']!r}")
            share = conf.get("share_gpus", 1)
            if isinstance(share, bool) or not isinstance(share, int) or not 1 <= share <= MAX_SHARE:
                raise ValueError(f"{where}['share_gpus'] must be a whole number of servers per GPU "
                                 f"from 1 to {MAX_SHARE}, not {share!r}")
            gpus = conf.get("gpus", "all")
            if not isinstance(gpus, (str, list, tuple)):
                raise ValueError(f"{where}['gpus'] must be 'all', 'none' or '0,1', not {gpus!r}")
            if "root" in conf and not isinstance(conf["root"], str):
                raise ValueError(f"{where}['root'] must be a folder path string")
        return value

    def __init__(self, **kw):
        super().__init__(**kw)
        self._gpus: list[GPU] | None = None
        self._no_gpus_why: str | None = None
        self._procs: dict[str, subprocess.Popen] = {}
        #: record file name -> (its inode, size, times; the record read from it) (:meth:`_records`)
        self._parsed: dict[str, tuple[tuple, dict]] = {}
        #: held from a GPU allocation until its node's record is written (:meth:`launch`)
        self._lock = asyncio.Lock()
        #: request id -> [the lock its launches take one after the other, how many hold or await it]
        self._request_locks: dict[str, list] = {}
        if self.isolation == "none":
            self.log.warning(
                "local: c.LocalProvider.isolation is \"none\": every user's server runs as the hub's "
                "system account (uid %s), so users can read and change each other's files and "
                "servers", os.geteuid())

    # -- isolation ----------------------------------------------------------------

    @property
    def isolating(self) -> bool:
        """Whether each hub user's nodes run as their own system account."""
        return self.isolation == "users" and os.geteuid() == 0

    @property
    def form_notice(self) -> str | None:
        """A line the spawn form shows for this provider, None when there is nothing to say."""
        if self.isolation == "none":
            return (f"{self.display_name}: servers are not isolated from each other, so other "
                    "users of this hub can see and change your files.")
        return None

    def _account(self, hub_user: str) -> Account | None:
        """The account ``hub_user``'s nodes run as, made if needed; None for the hub's own
        user (refusing a second hub user when the hub is not root). Blocks."""
        if self.isolating:
            return ensure_account(system_username(self.system_user_template, hub_user), hub_user, self.log)
        if self.isolation == "users":
            self._check_only_user(hub_user)
        return None

    def _check_only_user(self, hub_user: str) -> None:
        """Let the one hub user this hub serves pass; the first to spawn becomes it (kept
        in :data:`ONLY_USER_FILE`, mode 0600), unless another user's nodes still run."""
        path = Path(self.state_dir) / ONLY_USER_FILE
        first = not path.exists()
        if first and {r.get("tags", {}).get(TAG_USER) for r in self._records() if self._alive(r)} - {hub_user}:
            only = None
        else:
            try:
                only = json.loads(kept_secret(path, lambda: json.dumps({"user": hub_user})))["user"]
            except (OSError, ValueError, KeyError, TypeError):
                only = None
        if only != hub_user:
            raise IsolationError(
                "the local provider already serves another user of this hub: the hub does not run "
                "as root, so every server would run as the same system account and users could "
                "read each other's files. The operator can run the hub as root (each user then "
                "gets a system account), or set c.LocalProvider.isolation = \"none\" to let "
                "users share one account knowingly.")
        if first:
            self.log.info("local: the hub is not root, so the local provider serves hub user %r "
                          "only (c.LocalProvider.isolation)", hub_user)

    # -- what this machine has --------------------------------------------------

    @property
    def gpus(self) -> list[GPU]:
        if self._gpus is None:
            self._gpus, self._no_gpus_why = probe_gpus(self.nvml_module)
        return self._gpus

    def no_gpu_reason(self, region: str) -> str | None:
        """Why local region ``region`` offers no GPU (the spawn form shows it beside "No
        GPU"), None when it has some."""
        if self.region_gpus(region):
            return None
        if not self.gpus:
            return self._no_gpus_why
        if self.region(region).gpus == "none":
            return f"region {region!r} is set up without GPUs (c.LocalProvider.regions)"
        return (f"none of the GPUs region {region!r} names is on this machine "
                "(c.LocalProvider.regions)")

    def region(self, name: str) -> Region:
        conf = self.regions[name]
        gpus = conf.get("gpus", "all")
        if isinstance(gpus, str) and gpus not in ("all", "none"):
            gpus = tuple(g.strip() for g in gpus.split(",") if g.strip())
        elif isinstance(gpus, list):
            gpus = tuple(str(g) for g in gpus)
        root = conf.get("root") or os.path.join(self.default_root, name)
        return Region(name=name, gpus=gpus, root=os.path.abspath(os.path.expanduser(root)),
                      share_gpus=int(conf.get("share_gpus", 1)))

    def region_gpus(self, name: str) -> list[GPU]:
        sel = self.region(name).gpus
        if sel == "all":
            return list(self.gpus)
        if sel == "none":
            return []
        # a MIG device is in a region that names it or its GPU ("0" holds "0/0".."0/6")
        return [g for g in self.gpus if g.index in sel or g.uuid in sel or g.index.split("/")[0] in sel]

    def offers(self) -> list[Offer]:
        mem = round(psutil.virtual_memory().total / 2**30, 1)
        cpus = os.cpu_count() or 1
        # what the running nodes hold counts only where there are GPUs to offer
        used = self._allocated() if any(self.region_gpus(name) for name in self.regions) else Counter()
        out = []
        for name in self.regions:
            share = self.region(name).share_gpus
            # a region's own price (the machine's, per server) replaces cpu_price_hour and
            # is added to each GPU's
            base = float(self.regions[name].get("price_hour", 0.0))
            out.append(Offer(
                provider="local", region=name, instance_type="cpu", gpu=NO_GPU, gpu_count=0,
                vcpus=cpus, memory_gib=mem, price_hour=float(self.regions[name].get("price_hour", self.cpu_price_hour)),
                spot_price_hour=None, note="this machine", available=1,
            ))
            by_model: dict[str, list[GPU]] = {}
            for g in self.region_gpus(name):
                by_model.setdefault(g.model, []).append(g)
            for model, gpus in sorted(by_model.items()):
                rate = float(self.gpu_price_hour.get(model, 0.0))
                if share > 1 and not gpus[0].is_mig:
                    seats = sum(max(share - used[g.uuid], 0) for g in gpus)
                    out.append(Offer(
                        provider="local", region=name, instance_type=f"{model}{SHARED_SUFFIX}",
                        gpu=model + SHARED_SUFFIX, gpu_count=1, gpu_memory_gib=gpus[0].memory_gib,
                        vcpus=cpus, memory_gib=mem, price_hour=round(base + rate / share, 4),
                        spot_price_hour=None, gpu_shared_by=share, available=seats,
                        note=f"{seats} of {share * len(gpus)} shares free; each GPU shared by up to {share}",
                    ))
                    continue
                free = sum(1 for g in gpus if not used[g.uuid])
                # CUDA uses one MIG device per process: a MIG slice is one server's only GPU
                for k in range(1, 2 if gpus[0].is_mig else len(gpus) + 1):
                    out.append(Offer(
                        provider="local", region=name, instance_type=f"{model}x{k}",
                        gpu=model, gpu_count=k, gpu_memory_gib=gpus[0].memory_gib,
                        vcpus=cpus, memory_gib=mem, price_hour=round(base + rate * k, 4),
                        spot_price_hour=None, note=f"{free} of {len(gpus)} free",
                        available=free // k,
                    ))
        return out

    # -- node records -----------------------------------------------------------

    def _record_path(self, node_id: str) -> Path:
        return Path(self.state_dir) / f"{node_id}.json"

    def _records(self) -> list[dict]:
        """Every node record in :attr:`state_dir`, as the folder holds them now.

        The folder is listed on every call, so a record another process added or removed
        (the reaper, a restarted hub) counts at once; only the parsing is kept. A record
        is written once, to a new file renamed into place (:meth:`_start`), and never
        changed, so a file whose name, inode, size and change time are those of the last
        read holds the same record (the change time, which no one can set back, covers a
        write in place too). A file changed less than :data:`SETTLED_NS` before the read is
        read again next time: a change within the file system's clock tick would leave its
        times as they were. Each caller gets its own copy."""
        folder = self.state_dir
        settled = time.time_ns() - SETTLED_NS
        try:
            with os.scandir(folder) as listing:
                entries = [e for e in listing if e.name.endswith(".json")]
        except (FileNotFoundError, NotADirectoryError):
            self._parsed = {}
            return []
        parsed: dict[str, tuple[tuple, dict]] = {}
        out = []
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
                key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                known = self._parsed.get(entry.name)
                if known is not None and known[0] == key:
                    rec = known[1]
                else:
                    with open(entry.path, encoding="utf-8") as f:
                        rec = json.load(f)
                    if not isinstance(rec, dict):
                        continue
            except (OSError, ValueError):
                continue
            if st.st_ctime_ns < settled and st.st_mtime_ns < settled:
                parsed[entry.name] = (key, rec)
            out.append(copy.deepcopy(rec))
        self._parsed = parsed  # only what the folder holds now: a removed record is forgotten
        return out

    def _alive(self, rec: dict) -> bool:
        proc = self._procs.get(rec["id"])
        if proc is not None and proc.poll() is not None:
            return False
        try:
            p = psutil.Process(rec["pid"])
            with p.oneshot():  # one read of the process's stat for both
                return abs(p.create_time() - rec["created"]) < 1.0 and p.status() != psutil.STATUS_ZOMBIE
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def _allocated(self) -> Counter:
        """How many running nodes hold each GPU UUID (more than one only when shared)."""
        return Counter(u for rec in self._records() if rec.get("gpus") and self._alive(rec) for u in rec["gpus"])

    def _node(self, rec: dict, state: str | None = None, detail: str = "") -> Node:
        state = state or (RUNNING if self._alive(rec) else TERMINATED)
        if state == TERMINATED and rec.get("id") in self._procs:
            code = self._procs[rec["id"]].poll()
            if code not in (None, 0, -signal.SIGTERM):
                state, detail = FAILED, f"process exited with code {code}; see {rec.get('log')}"
        return Node(
            id=rec["id"], provider="local", region=rec["region"], state=state,
            ip="127.0.0.1", port=rec.get("port"), tags=rec.get("tags", {}),
            info={"pid": rec["pid"], "gpus": rec.get("gpus", []), "shared_by": rec.get("shared_by", 1),
                  "workspace": rec.get("workspace"),
                  "role": rec.get("role")},
            detail=detail,
        )

    # -- the contract -----------------------------------------------------------

    async def launch(self, spec: LaunchSpec) -> Node:
        # one launch of a request at a time: a retry finds the node the first one made
        held = self._request_locks.setdefault(spec.request_id, [asyncio.Lock(), 0])
        held[1] += 1  # launches holding or awaiting it: the lock is dropped after the last
        try:
            async with held[0]:
                for rec in self._records():
                    if rec.get("tags", {}).get(TAG_REQUEST) == spec.request_id:
                        if self._alive(rec):
                            return self._node(rec)
                        self._record_path(rec["id"]).unlink(missing_ok=True)
                if self._allocates(spec.offer):
                    async with self._lock:  # GPUs: allocation and start are one step per provider
                        gpus = self._allocate(spec.offer)
                        rec = await asyncio.to_thread(self._start, spec, gpus)
                else:  # holds nothing another launch could be given: starts beside the others
                    self._allocate(spec.offer)  # an unknown region is still refused
                    rec = await asyncio.to_thread(self._start, spec, [])
        finally:
            held[1] -= 1
            if not held[1]:
                del self._request_locks[spec.request_id]
        return self._node(rec, detail=f"process {rec['pid']} started")

    @staticmethod
    def _allocates(offer: Offer) -> bool:
        """Whether a launch of ``offer`` is given GPUs (:meth:`_allocate`), which the
        provider's lock hands out one launch at a time."""
        return not (offer.gpu == NO_GPU or offer.gpu_count == 0)

    def _allocate(self, offer: Offer) -> list[GPU]:
        if offer.region not in self.regions:
            raise CapacityError(f"local region {offer.region!r} is not configured", offer=offer)
        if offer.gpu == NO_GPU or offer.gpu_count == 0:
            return []
        used = self._allocated()
        share = self.region(offer.region).share_gpus
        if share > 1 and offer.gpu.casefold().endswith(SHARED_SUFFIX):
            model = offer.gpu[: -len(SHARED_SUFFIX)].casefold()
            gpus = [g for g in self.region_gpus(offer.region) if g.model.casefold() == model and not g.is_mig]
            open_ = sorted((g for g in gpus if used[g.uuid] < share), key=lambda g: used[g.uuid])
            if not open_:
                raise CapacityError(f"all {len(gpus)} shared {offer.gpu[: -len(SHARED_SUFFIX)]} GPU(s) in local region "
                                    f"{offer.region!r} have {share} servers each", offer=offer)
            return open_[:1]
        free = [g for g in self.region_gpus(offer.region)
                if g.model.casefold() == offer.gpu.casefold() and not used[g.uuid]
                and not (share > 1 and not g.is_mig)]
        if len(free) < offer.gpu_count:
            raise CapacityError(
                f"only {len(free)} {offer.gpu} GPU(s) free in local region {offer.region!r}, "
                f"{offer.gpu_count} requested", offer=offer,
            )
        return free[: offer.gpu_count]

    def _shared_by(self, offer: Offer) -> int:
        """How many servers may share the GPU of a launch of ``offer`` (1: not shared)."""
        if offer.gpu_count and offer.gpu.casefold().endswith(SHARED_SUFFIX):
            return self.region(offer.region).share_gpus
        return 1

    def _workspace(self, spec: LaunchSpec, root: str | None = None) -> Path:
        root = Path(root or self.region(spec.offer.region).root)
        user = safe_dirname(spec.tags.get(TAG_USER, "user"))
        server = safe_dirname(spec.tags.get(TAG_SERVER) or "default")
        return root / user / server

    def _prepare_workspace(self, spec: LaunchSpec, account: Account | None) -> Path:
        """The node's workspace, made (or moved from :attr:`former_root`) and, with an
        account, private to it (:func:`.workspaces.prepare`). Blocks."""
        workspace = self._workspace(spec)
        own_root = not self.regions[spec.offer.region].get("root")
        former = None
        if own_root and self.former_root:
            former = self._workspace(spec, os.path.join(self.former_root, spec.offer.region))
        pass_through = [Path(self.default_root)] if own_root else []
        workspaces.prepare(workspace, account, pass_through=pass_through, former=former, log=self.log)
        return workspace

    def _start(self, spec: LaunchSpec, gpus: list[GPU]) -> dict:
        node_id = f"local-{uuid.uuid4().hex[:12]}"
        state_dir = Path(self.state_dir)
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # node records and logs: the hub's
        account = self._account(spec.tags.get(TAG_USER, "user"))
        workspace = self._prepare_workspace(spec, account)
        log_path = state_dir / f"{node_id}.log"
        shared_by = self._shared_by(spec.offer)
        env = {
            # the process gets the spawner's env and nothing else of the hub's
            "HOME": str(workspace),
            "USER": os.environ.get("USER", "cloudhop"),
            "SHELL": os.environ.get("SHELL", "/bin/sh"),
            **{k: str(v) for k, v in spec.env.items()},
            "CUDA_VISIBLE_DEVICES": ",".join(g.uuid for g in gpus),
            "CLOUDHOP_GPUS": json.dumps([g.model for g in gpus]),
            # inherited by the server's kernels, which run in sessions of their own
            # (jupyter_client starts each in a new one): terminate finds them by it
            NODE_ENV: node_id,
        }
        if shared_by > 1:
            env["CLOUDHOP_GPU_SHARED_BY"] = str(shared_by)
        env.setdefault("PATH", os.path.dirname(sys.executable) + os.pathsep + os.defpath)
        if account is not None:
            env.update(account.env(str(workspace)))  # who it runs as is not the spawner's to say
        cmd = list(spec.cmd)
        if spec.role == "notebook" and os.geteuid() == 0 and account is None and "--allow-root" not in cmd:
            cmd.append("--allow-root")
        with open(log_path, "ab") as log:
            if account is not None:
                self._warn_unreachable(workspace, account, log)
            try:
                proc = subprocess.Popen(
                    cmd, cwd=workspace, env=env, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                    **(account.popen_kwargs() if account is not None else {}),
                )
            except PermissionError as err:
                if account is None:
                    raise
                raise _cannot_run(cmd[0], account, err) from None
        self._procs[node_id] = proc
        rec = {
            "id": node_id, "region": spec.offer.region, "pid": proc.pid,
            "created": psutil.Process(proc.pid).create_time(), "port": spec.port,
            "gpus": [g.uuid for g in gpus], "role": spec.role, "shared_by": shared_by,
            "tags": {**spec.tags, TAG_REQUEST: spec.request_id, TAG_ROLE: spec.role},
            "workspace": str(workspace), "log": str(log_path), "started": time.time(),
        }
        tmp = self._record_path(node_id).with_suffix(".tmp")
        tmp.write_text(json.dumps(rec))
        tmp.replace(self._record_path(node_id))
        self.log.info("local: started %s (pid %s) in %s as %s with GPUs %s", node_id, proc.pid,
                      spec.offer.region, account.name if account else "the hub's user",
                      [g.index for g in gpus] or "none")
        return rec

    def _warn_unreachable(self, workspace: Path, account: Account, log) -> None:
        """Say, in the hub's log and the node's, when the account cannot reach its
        workspace (a folder above the workspaces root others may not search): the server
        would then fail on its first file access."""
        why = workspaces.unreachable(workspace, account)
        if why is None:
            return
        line = (f"local: {account.name} cannot reach its workspace {workspace}: {why}; set "
                "c.LocalProvider.default_root (or the region's root) to a folder every user may "
                "pass through")
        self.log.warning(line)
        log.write((line + "\n").encode())
        log.flush()

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
        if rec.get("role", "notebook") == "notebook" and self._ephemeral(rec.get("region")):
            await asyncio.to_thread(self._delete_workspace, rec)
        path.unlink(missing_ok=True)
        self.log.info("local: terminated %s", node_id)

    def _ephemeral(self, region) -> bool:
        """Whether ``region`` deletes a server's workspace when its node stops, as a cloud
        VM's boot disk goes with the VM (``"ephemeral": True`` in its settings)."""
        return bool((self.regions.get(region) or {}).get("ephemeral"))

    def _delete_workspace(self, rec: dict) -> None:
        """Delete the workspace of the terminated notebook node ``rec`` (blocks). The
        folder belongs to the user: ``shutil.rmtree`` works on descriptors and never
        follows a link the user put there."""
        workspace = rec.get("workspace")
        if not workspace or not os.path.isabs(workspace):
            return
        shutil.rmtree(workspace, ignore_errors=True)
        self.log.info("local: deleted the workspace of %s (region %s is ephemeral)", rec.get("id"), rec.get("region"))

    def _kill_tree(self, rec: dict) -> None:
        """SIGTERM the node's whole session and descendants, then SIGKILL stragglers
        (:meth:`_node_processes` says which)."""
        stop_processes(self._node_processes(rec), self.stop_timeout)

    def _node_processes(self, rec: dict) -> list[psutil.Process]:
        """The node's processes: its server and the server's descendants, what runs in its
        session, and the kernels it started in sessions of their own.

        The session outlives its leader: when the server process is gone, what is left in
        its session (kernels, terminals) still goes, but only processes started after the
        node and living in its workspace, so a recycled pid is never taken for the node's.

        One pass over the machine's processes (:func:`.local_procs.scan`: parent, session
        and start time of each): descendants come from its parent links, and only a
        process started after the node (less a second) that is neither has its
        environment read. Each stop costs one scan, whatever the number of nodes the hub
        has run.
        """
        pid, created = rec["pid"], rec["created"]
        root_alive = self._alive(rec)
        table = local_procs.scan()
        children: dict[int, list[local_procs.Proc]] = {}
        for p in table:
            children.setdefault(p.ppid, []).append(p)
        chosen: dict[int, local_procs.Proc | None] = {}
        if root_alive:
            chosen[pid] = None  # checked by _alive
            todo = [pid]
            while todo:
                for child in children.get(todo.pop(), ()):
                    if child.pid not in chosen:
                        chosen[child.pid] = child
                        todo.append(child.pid)
        for p in table:
            if p.pid in chosen or p.pid == pid or p.started < created - 1.0:
                continue
            if p.sid == pid and root_alive:
                chosen[p.pid] = p
                continue
            try:
                env = psutil.Process(p.pid).environ()
            except (psutil.Error, OSError):
                continue
            # a kernel in a session of its own carries the node's id; what is left in the
            # session of a server that exited lives in the node's workspace
            if env.get(NODE_ENV) == rec["id"] or (p.sid == pid and env.get("HOME") == rec.get("workspace")):
                chosen[p.pid] = p
        out = []
        for found, p in chosen.items():
            try:
                proc = psutil.Process(found)
                # the process the scan saw, not one that took its pid since
                if p is None or abs(proc.create_time() - p.started) < 0.1:
                    out.append(proc)
            except psutil.Error:
                continue
        return out

    async def list_nodes(self, tags: dict) -> list[Node]:
        out = []
        for rec in self._records():
            rtags = rec.get("tags", {})
            if all(rtags.get(k) == v for k, v in tags.items()) and self._alive(rec):
                out.append(self._node(rec))
        return out


def _cannot_run(program: str, account: Account, err: OSError) -> ProviderError:
    """The error of a server the account may not start: its program (the hub's Python)
    lies where the account cannot read it."""
    real = os.path.realpath(program)
    why = workspaces.unreachable(Path(real), account) or f"{real}: {err.strerror}"
    return ProviderError(
        f"the system account {account.name} cannot run {program}: {why}. Servers run as each "
        "user's own account (c.LocalProvider.isolation = \"users\"), so the hub's Python and its "
        "packages must be readable by every user: install them outside a private folder (e.g. "
        "in /opt)")
