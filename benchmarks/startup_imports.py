"""What the deferred ``rfc3987_syntax`` import (cloudhop/lazy_iri.py) saves each process
that starts: a Jupyter server (a Cloudhop notebook server's start-up), a fresh
interpreter importing ``jsonschema`` (the hub, Ray's dashboard and agents), and with
``--ray`` a whole ``ray start --head`` on loopback.

Each round runs every measurement twice, with the hook (as installed) and with
``CLOUDHOP_EAGER_IRI=1`` (the import as jsonschema makes it), in alternating order, and
the report gives medians and the ratio hooked / eager. CPU is the process's own (user +
system); for ``ray start``, whose processes outlive the command, the machine's busy
CPU-seconds from the command's start until its node is up, so run it on a quiet machine.

    python benchmarks/startup_imports.py [--rounds 3] [--ray]
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from _common import bench_parser, run_in_scratch

OFF_ENV = "CLOUDHOP_EAGER_IRI"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(eager: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != OFF_ENV}
    if eager:
        env[OFF_ENV] = "1"
    return env


def server_start(eager: bool, tmp: Path) -> tuple[float, float]:
    """CPU and wall seconds from ``python -m jupyterlab`` to its port answering."""
    port, root = free_port(), Path(tempfile.mkdtemp(dir=tmp))
    cmd = [sys.executable, "-m", "jupyterlab", f"--port={port}", "--no-browser", "--allow-root",
           f"--ServerApp.root_dir={root}", "--IdentityProvider.token=benchmark"]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=root, env=env_for(eager), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                if p.poll() is not None:
                    raise RuntimeError(f"the Jupyter server exited with {p.returncode}") from None
                if time.perf_counter() - t0 > 120:
                    raise TimeoutError("the Jupyter server did not answer in 120 s") from None
                time.sleep(0.02)
        wall = time.perf_counter() - t0
        t = psutil.Process(p.pid).cpu_times()
        return t.user + t.system, wall
    finally:
        p.terminate()
        p.wait(timeout=30)


def import_jsonschema(eager: bool, _tmp: Path) -> tuple[float, float]:
    """CPU and wall seconds of ``import jsonschema`` in a fresh interpreter."""
    code = ("import time; c, w = time.process_time(), time.perf_counter(); import jsonschema; "
            "print(time.process_time() - c, time.perf_counter() - w)")
    out = subprocess.run([sys.executable, "-c", code], env=env_for(eager), capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    return float(out[0]), float(out[1])


def busy() -> float:
    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0)


def ray_head(eager: bool, tmp: Path) -> tuple[float, float]:
    """Machine CPU and wall seconds of ``ray start --head`` (loopback, its own temp
    folder and ports) until the command says the node is up; then the node is stopped."""
    ray = shutil.which("ray", path=os.path.dirname(sys.executable))
    if ray is None:
        raise RuntimeError("ray is not installed beside this Python")
    temp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # Ray's socket paths must stay short
    cmd = [ray, "start", "--head", f"--temp-dir={temp}", f"--port={free_port()}", "--node-ip-address=127.0.0.1",
           f"--dashboard-port={free_port()}", "--num-cpus=1", "--disable-usage-stats"]
    c0, t0 = busy(), time.perf_counter()
    try:
        subprocess.run(cmd, env=env_for(eager), capture_output=True, check=True, timeout=180)
        return busy() - c0, time.perf_counter() - t0
    finally:
        # only this head: its processes are the ones holding its temp folder's session
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any(str(temp) in a for a in p.info["cmdline"] or []):
                    p.kill()
            except psutil.Error:
                pass
        shutil.rmtree(temp, ignore_errors=True)


def bench(args, tmp: Path) -> None:
    cases = [("Jupyter server start", server_start), ("import jsonschema", import_jsonschema)]
    if args.ray:
        cases.append(("ray start --head", ray_head))
    results = {(name, eager): [] for name, _ in cases for eager in (False, True)}
    for r in range(args.rounds):
        for name, fn in cases:
            for eager in ((True, False) if r % 2 else (False, True)):
                results[(name, eager)].append(fn(eager, tmp))
    print(f"rounds: {args.rounds}, load average now: {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"cores: {psutil.cpu_count()}")
    print(f"{'':24}{'eager CPU s':>12}{'hooked CPU s':>13}{'ratio':>7}{'eager wall s':>14}{'hooked wall s':>14}{'ratio':>7}")
    for name, _ in cases:
        e, h = results[(name, True)], results[(name, False)]
        ec, hc = statistics.median(x[0] for x in e), statistics.median(x[0] for x in h)
        ew, hw = statistics.median(x[1] for x in e), statistics.median(x[1] for x in h)
        print(f"{name:24}{ec:12.2f}{hc:13.2f}{hc / ec:6.2f}x{ew:14.2f}{hw:14.2f}{hw / ew:6.2f}x")


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ray", action="store_true", help="also time `ray start --head` (about 20 s a start)")
    return run_in_scratch(parser.parse_args(), "startup-imports", bench)


if __name__ == "__main__":
    sys.exit(main())
