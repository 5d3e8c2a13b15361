"""A server command for hub tests that holds a spawn back: the server's process waits
until the test opens the gate (a file), then runs Jupyter, so a test can look at a spawn
in progress (its progress page, its event stream) for as long as it needs."""

from __future__ import annotations

from pathlib import Path

GATE = """
import os, sys, time
while not os.path.exists(sys.argv[1]):  # the test opens the gate when it has seen enough
    time.sleep(0.1)
os.execv(sys.executable, [sys.executable, "-m", "jupyterhub.singleuser", *sys.argv[2:]])
"""


def gated_config(folder: Path) -> str:
    """Hub config lines making every server wait for ``folder / "open"``. The gate lies
    in the test's private folder, so servers run as the hub's account (isolation none)."""
    (folder / "gate.py").write_text(GATE)
    return (f"import sys\n"
            f"c.Spawner.cmd = [sys.executable, {str(folder / 'gate.py')!r}, {str(folder / 'open')!r}]\n"
            f'c.LocalProvider.isolation = "none"\n')


def open_gate(folder: Path) -> None:
    (folder / "open").touch()
