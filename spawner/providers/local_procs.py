"""The machine's processes in one pass, for the local provider's stop
(:meth:`.local.LocalProvider._node_processes`): each one's pid, parent, session and start
time.

On Linux each process's ``/proc/<pid>/stat`` is read once and parsed here: a stop scans
every process of the machine, and psutil's per-process objects cost about three times as
much for the same four numbers. Elsewhere psutil gives them. Start times are psutil's
(``create_time``: seconds since the epoch), so they compare with the ``created`` a node
record keeps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    #: the session id (``getsid``)
    sid: int
    #: seconds since the epoch, as psutil's ``create_time``
    started: float


def scan() -> list[Proc]:
    """Every process now running (one that ends while it is read is left out)."""
    if os.path.isfile("/proc/self/stat"):
        return _scan_proc()
    out = []
    for p in psutil.process_iter(["ppid", "create_time"]):
        try:
            out.append(Proc(p.pid, p.info["ppid"] or 0, os.getsid(p.pid), p.info["create_time"] or 0.0))
        except (OSError, psutil.Error):
            continue
    return out


def _scan_proc() -> list[Proc]:
    ticks = os.sysconf("SC_CLK_TCK")
    boot = psutil.boot_time()
    out = []
    with os.scandir("/proc") as listing:
        pids = [int(e.name) for e in listing if e.name.isdigit()]
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:  # gone, or not ours to read
            continue
        # "pid (comm) state ppid pgrp session ... starttime(22nd)": comm may hold spaces
        # and parentheses, so the fields are counted from its last ")"
        fields = data[data.rfind(b")") + 2:].split()
        try:
            out.append(Proc(pid, int(fields[1]), int(fields[3]), boot + int(fields[19]) / ticks))
        except (IndexError, ValueError):
            continue
    return out
