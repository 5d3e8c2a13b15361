"""spawner/procs.py: the one stop-then-kill sweep the local provider and the Ray
launchers on a node use."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from cloudhop.spawner.procs import stop_processes

#: a process that leaves on SIGTERM, noting it in the file named by argv[1]
POLITE = ("import pathlib, signal, sys, time\n"
          "def bye(*_):\n"
          "    pathlib.Path(sys.argv[1]).write_text('sigterm'); sys.exit(0)\n"
          "signal.signal(signal.SIGTERM, bye); print('ready', flush=True); time.sleep(60)")
#: a process that ignores SIGTERM: only SIGKILL ends it
STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")


def start(code: str, *args) -> psutil.Process:
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    return psutil.Process(proc.pid)


def test_sigterm_ends_a_polite_process_without_waiting_the_grace(tmp_path):
    polite = start(POLITE, tmp_path / "polite")
    began = time.monotonic()
    stop_processes([polite], grace=30)
    assert time.monotonic() - began < 10
    assert not polite.is_running()
    assert (tmp_path / "polite").read_text() == "sigterm"


def test_what_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    stubborn, polite = start(STUBBORN), start(POLITE, tmp_path / "polite")
    began = time.monotonic()
    stop_processes([stubborn, polite], grace=1.0)
    assert time.monotonic() - began >= 1.0  # the stubborn one had its grace
    assert not stubborn.is_running() and not polite.is_running()
    assert (tmp_path / "polite").read_text() == "sigterm"


def test_a_process_gone_already_is_skipped():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    handle = psutil.Process(proc.pid)
    proc.wait(timeout=10)  # reaped: the pid no longer exists
    stop_processes([handle], grace=0.1)  # no error
    assert not handle.is_running()
