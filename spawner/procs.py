"""Stopping processes the way Cloudhop stops a node: SIGTERM to each, a grace period,
then SIGKILL to those still alive.

One function for both places that stop processes: the local provider ending a node's
session (:meth:`cloudhop.spawner.providers.local.LocalProvider.terminate`) and a Ray
launcher on a node ending exactly its own Ray node
(:meth:`cloudhop.spawner.ray.node.RayNode.stop`). Which processes to stop is theirs to
find; this module only stops them. It needs only the standard library and psutil, as
it runs on nodes too.
"""

from __future__ import annotations

import signal
from typing import Iterable

import psutil

#: seconds to wait for processes to be gone after SIGKILL
KILL_WAIT = 5.0


def stop_processes(procs: Iterable[psutil.Process], grace: float, kill_wait: float = KILL_WAIT) -> None:
    """Send SIGTERM to each of ``procs`` in the order given, wait up to ``grace`` seconds
    for them to exit, SIGKILL those still alive and wait up to ``kill_wait`` seconds for
    those. A process that is gone already, or may not be signalled, is skipped."""
    procs = list(procs)
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=kill_wait)
