"""A block of TCP ports per Ray node, so Ray nodes of different servers never clash.

Ray opens about ten fixed ports per node plus one per worker process. Left to its
defaults, two users' heads on one machine fight over 6379, 8265 and 10001, and their
worker-port ranges overlap. Cloudhop gives every Ray node a :class:`PortBlock` instead:
:data:`BLOCK_SIZE` consecutive ports, laid out as :data:`LAYOUT` with the rest for
worker processes, and passes each port to ``ray start`` explicitly.

* On the **local** provider a block is claimed with a lock file (``flock``) in a
  machine-wide folder, held by the Ray node's launcher for its whole life, and checked
  free by binding each port. A crashed launcher's lock goes with its process.
* On a **VM** the node is the only Ray node there, so it uses the fixed block at
  :data:`VM_BASE` and the firewall opens exactly that range between the cluster's nodes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import socket
import tempfile
from dataclasses import dataclass

BLOCK_SIZE = 128
#: offsets of the named ports inside a block; worker processes use WORKER_OFFSET..end
LAYOUT = {
    "port": 0,  # GCS (the head's address); unused on workers
    "node_manager_port": 1,
    "object_manager_port": 2,
    "dashboard_port": 3,
    "ray_client_server_port": 4,
    "dashboard_agent_listen_port": 5,
    "dashboard_agent_grpc_port": 6,
    "metrics_export_port": 7,
    "runtime_env_agent_port": 8,
}
WORKER_OFFSET = 16
#: where local blocks live: below Linux's ephemeral range (32768+), so an outgoing
#: connection never lands in a block between the check and Ray binding it
LOCAL_RANGE = (20000, 32768)
#: the one block a VM uses (starts at Ray's usual GCS port)
VM_BASE = 6379
#: the TCP range a VM firewall must open between the nodes of one Ray cluster (and to
#: nothing else): every port a Cloudhop head or worker on a VM listens on
VM_PORT_RANGE = (VM_BASE, VM_BASE + BLOCK_SIZE - 1)


class PortsBusy(RuntimeError):
    """No free block (or the requested block is held by another Ray node)."""


@dataclass(frozen=True)
class PortBlock:
    base: int

    def __getattr__(self, name):
        if name in LAYOUT:
            return self.base + LAYOUT[name]
        raise AttributeError(name)

    @property
    def min_worker_port(self) -> int:
        return self.base + WORKER_OFFSET

    @property
    def max_worker_port(self) -> int:
        return self.base + BLOCK_SIZE - 1

    @property
    def last(self) -> int:
        return self.base + BLOCK_SIZE - 1

    def ports(self) -> range:
        return range(self.base, self.base + BLOCK_SIZE)

    def ray_args(self, *, head: bool) -> list[str]:
        """The ``ray start`` flags that pin every port of this block."""
        names = [n for n in LAYOUT if head or n not in ("port", "dashboard_port", "ray_client_server_port")]
        args = [f"--{n.replace('_', '-')}={self.base + LAYOUT[n]}" for n in names]
        args += [f"--min-worker-port={self.min_worker_port}", f"--max-worker-port={self.max_worker_port}"]
        return args


def lock_dir() -> str:
    """The machine-wide folder of block locks (shared by every hub and user here)."""
    path = os.path.join(tempfile.gettempdir(), "cloudhop-ray-ports")
    try:
        os.mkdir(path)
        os.chmod(path, 0o1777)  # sticky and world-writable, like /tmp: any user may claim
    except FileExistsError:
        pass
    return path


class PortLock:
    """A held claim on one block; released by :meth:`release` or when the process ends."""

    def __init__(self, block: PortBlock, fd: int, path: str):
        self.block, self._fd, self.path = block, fd, path

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def ports_free(ports, host: str = "") -> bool:
    """True when every port binds now (on all interfaces, as Ray binds them)."""
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def claim_block(base: int, directory: str | None = None) -> PortLock:
    """Claim the block starting at ``base`` for this process, or raise :class:`PortsBusy`
    (another Ray node holds it, or one of its ports is in use)."""
    block = PortBlock(base)
    path = os.path.join(directory or lock_dir(), f"{base}.lock")
    try:
        fd = _open_lock(path)
    except PermissionError:
        raise PortsBusy(f"ports {base}-{block.last} are claimed by another user's Ray node") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        if err.errno in (errno.EAGAIN, errno.EACCES):
            raise PortsBusy(f"ports {base}-{block.last} are claimed by another Ray node") from None
        raise
    if not ports_free(block.ports()):
        os.close(fd)
        raise PortsBusy(f"a port in {base}-{block.last} is in use")
    os.write(fd, f"{os.getpid()}\n".encode())
    return PortLock(block, fd, path)


def _open_lock(path: str) -> int:
    """Open the lock file ``path``, made readable and writable by every user when this
    process makes it (umask aside): the hub picks a head's block as root and the head's
    launcher, running as the server's own account, claims it. An existing file is opened
    without ``O_CREAT``, which ``fs.protected_regular`` refuses for another user's file
    in a sticky folder."""
    try:
        return os.open(path, os.O_RDWR)
    except FileNotFoundError:
        pass
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return os.open(path, os.O_RDWR)
    os.fchmod(fd, 0o666)
    return fd


def candidate_bases(lo: int = LOCAL_RANGE[0], hi: int = LOCAL_RANGE[1]) -> list[int]:
    bases = list(range(lo, hi - BLOCK_SIZE + 1, BLOCK_SIZE))
    # random order: two allocators running at once rarely try the same block first
    random.shuffle(bases)
    return bases


def claim_free_block(directory: str | None = None, bases: list[int] | None = None) -> PortLock:
    """Claim the first free block (random order); raises :class:`PortsBusy` when none is."""
    for base in bases if bases is not None else candidate_bases():
        try:
            return claim_block(base, directory)
        except PortsBusy:
            continue
    raise PortsBusy("no free block of Ray ports on this machine")


def find_free_block(directory: str | None = None, bases: list[int] | None = None) -> PortBlock:
    """A block that is free now, without keeping the claim: the hub picks the head's
    block this way (it must know the head's address before the node runs) and the
    head's launcher claims it for good; the launcher refuses a block taken meanwhile."""
    lock = claim_free_block(directory, bases)
    lock.release()
    return lock.block
