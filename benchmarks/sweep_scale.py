"""The reaper and the culler over a hub whose users all run a server.

One ``cloudhop up`` hub (the local provider, as ``benchmarks/hub_scale.py`` runs it) with
N users (default 1,000), each with a RUNNING server started through the REST API. Then,
first with a tenth of them running and again with all N running:

- **reaper**: one sweep of Cloudhop's reaper, built from the settings the hub gave its
  reaper service (its token, its providers: the local provider lists every node), paging
  and backing off as the service does;
- **culler**: one pass of jupyterhub-idle-culler with Cloudhop's :class:`PolicyArbiter`,
  with the flags, settings and token the hub gave its culler service (a one-day idle
  limit: it decides about every server and stops none);
- **stock culler**: the same pass with jupyterhub-idle-culler's own arbiter (the
  baseline: what a plain JupyterHub culler costs the same hub).

Reported per pass: the hub's CPU seconds (raw, and net of what the idle hub spends over
the same time: it polls 1,000 servers and reads the proxy's routes on its own), the
sweeper's own CPU seconds (it runs in this process, as its service would run it), the
pages of users it read, the seconds it waited after slow pages, and the wall time; then
the ratio of N to N/10 (linear: about 10) and of the Cloudhop culler to stock.

1,000 Python servers do not fit in a small machine, so each "server" is ``sleep`` (the
process the local provider starts, watches and stops), and one fleet process (this
script's ``--fleet`` mode) answers on every server's port with
``benchmarks/tinyserver.py``'s reply: the hub sees real, reachable servers.

    python benchmarks/sweep_scale.py [--users 1000] [--concurrency 50]
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from hub_scale import CLOUDHOP_CONFIG, cpu  # noqa: E402
from hubfixture import HubProcess  # noqa: E402 - hub_scale put tests/ on the path

import tinyserver  # noqa: E402

#: reaper and culler services that run once at start and then not again during the run:
#: the benchmark runs their passes itself, with their settings and tokens
SWEEP_CONFIG = CLOUDHOP_CONFIG + """
c.CloudhopReaper.interval = 86400
c.CloudhopCuller.every = 86400
c.JupyterHub.last_activity_interval = 300  # JupyterHub's default (the test fixture's 5 s reads 1,000 routes)
c.Spawner.cmd = ["bash", "-c", 'printf "%s\\\\n" "$JUPYTERHUB_SERVICE_URL" > {fifo}; exec -a {marker} sleep 1000000']
"""
CULL_MINUTES = 1440  # a day: every server is decided about, none is stopped


# -- the fleet: one process answering on every server's port -------------------------------

async def fleet(fifo: str) -> None:
    """Listen on each address written to ``fifo`` (one service URL a line)."""
    loop = asyncio.get_running_loop()
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # read-write: never an end of file
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0))
    servers = []
    while line := await reader.readline():
        parts = urlsplit(line.decode().strip())
        try:
            servers.append(await asyncio.start_server(tinyserver.answer, parts.hostname or "127.0.0.1", parts.port))
        except OSError as err:
            print(f"fleet: cannot listen on {parts.netloc}: {err}", file=sys.stderr, flush=True)


# -- the hub ----------------------------------------------------------------------------------

def service(hub_proc, module: str):
    """The hub's service process running ``module`` (psutil)."""
    for p in hub_proc.children(recursive=True):
        try:
            if module in " ".join(p.cmdline()):
                return p
        except Exception:  # noqa: BLE001 - a process that just went
            pass
    raise RuntimeError(f"no {module} service under the hub")


async def start_servers(hub: HubProcess, names: list[str], concurrency: int, timeout: float = 900) -> list[str]:
    """Start each user's server through the REST API; wait until every one is ready."""
    import aiohttp

    admin = {"Authorization": f"token {hub.token}"}
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:

        async def one(name: str) -> None:
            async with gate:
                for _ in range(60):
                    async with http.post(f"{hub.url}/hub/api/users/{name}/server", headers=admin,
                                         json={"provider": "local", "gpu": "none"}) as r:
                        if r.status in (201, 202):
                            return
                        text = await r.text()
                    if r.status != 503:
                        break
                    # JupyterHub's concurrent_spawn_limit: the start is refused, not failed
                    await asyncio.sleep(2)
                failures.append(f"{name}: {r.status} {text[:200]}")

        await asyncio.gather(*(one(n) for n in names))
        deadline = time.monotonic() + timeout
        while True:
            async with http.get(f"{hub.url}/hub/api/users?state=ready&limit=1", headers={
                    **admin, "Accept": "application/jupyterhub-pagination+json"}) as r:
                ready = (await r.json())["_pagination"]["total"]
            if ready >= len(names) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
    return failures + ([f"only {ready} of {len(names)} ready"] if ready < len(names) else [])


def idle_rate(hub_proc, seconds: float = 5.0) -> float:
    """The idle hub's CPU seconds per second."""
    c0 = cpu(hub_proc)
    time.sleep(seconds)
    return (cpu(hub_proc) - c0) / seconds


def measured(hub_proc, idle: float, run) -> dict:
    """Hub CPU (raw and net of ``idle``), this process's CPU and wall time of ``run()``."""
    h0, s0, t0 = cpu(hub_proc), time.process_time(), time.perf_counter()
    extra = run() or {}
    wall = time.perf_counter() - t0
    raw = cpu(hub_proc) - h0
    return {"hub_cpu": raw, "hub_net": max(0.0, raw - idle * wall), "own_cpu": time.process_time() - s0,
            "wall": wall, **extra}


# -- the passes -------------------------------------------------------------------------------

def reaper_pass(hub: HubProcess, hub_proc) -> dict:
    import json

    from cloudhop.hub.reaper import SETTINGS_ENV, build

    env = service(hub_proc, "cloudhop.hub.reaper").environ()
    reaper, _ = build(json.loads(env[SETTINGS_ENV]), f"{hub.url}/hub/api", env["JUPYTERHUB_API_TOKEN"])
    reaper.report = None
    report = asyncio.run(reaper.sweep())
    if report["hub_error"]:
        raise RuntimeError(f"reaper: {report['hub_error']}")
    listing = report.get("hub") or {}
    local = report["providers"].get("local") or {}
    return {"pages": listing.get("pages"), "paused": listing.get("paused", 0.0),
            "detail": f"{local.get('listed')} nodes listed, {local.get('owned')} owned, "
                      f"{len(local.get('terminated') or [])} terminated"}


def culler_pass(hub: HubProcess, hub_proc, *, policy: bool) -> dict:
    from jupyterhub_idle_culler import IdleCuller, cull_idle, default_cull_arbiter
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest

    from cloudhop.extensions.hubclient import HubClient
    from cloudhop.hub.culling import SETTINGS_ENV, CullSettings
    from cloudhop.hub.culling_service import PolicyArbiter

    proc = service(hub_proc, "cloudhop.hub.culling_service")
    env, argv = proc.environ(), proc.cmdline()[3:]  # python -m cloudhop.hub.culling_service ...
    app = IdleCuller()
    # the stock culler: jupyterhub-idle-culler's own flags but the same idle limit
    app.initialize(argv if policy else [a for a in argv if a.startswith("--timeout=")])
    api = f"{hub.url}/hub/api"
    pages = {"n": 0}
    arbiter = None
    if policy:
        client = HubClient(api, env["JUPYTERHUB_API_TOKEN"])
        client.back_off = True
        arbiter = PolicyArbiter(CullSettings.from_json(env[SETTINGS_ENV]), client)
    decided = {"n": 0, "cull": 0}

    async def count(**kw):
        decided["n"] += 1
        verdict = await arbiter(**kw) if arbiter else default_cull_arbiter(**kw)
        decided["cull"] += bool(verdict)
        return verdict

    async def run() -> None:
        http = AsyncHTTPClient()
        fetch = http.fetch

        async def counting(req, *a, **kw):  # the culler's own pages of users
            url = req.url if isinstance(req, HTTPRequest) else req
            if "/users?" in url or url.endswith("/users"):
                pages["n"] += 1
            return await fetch(req, *a, **kw)

        http.fetch = counting
        try:
            await cull_idle(api, env["JUPYTERHUB_API_TOKEN"], app.timeout, logging.getLogger("sweep.culler"),
                            cull_users=app.cull_users, remove_named_servers=app.remove_named_servers,
                            max_age=app.max_age, concurrency=app.concurrency, api_page_size=app.api_page_size,
                            cull_arbiter=count)
        finally:
            http.fetch = fetch

    asyncio.run(run())
    listing = arbiter.hub.listing if arbiter else {}
    # the arbiter's client is the same (the loop's) AsyncHTTPClient: pages counts both
    return {"pages": pages["n"], "paused": listing.get("paused", 0.0),
            "detail": f"{decided['n']} servers decided, {decided['cull']} to cull"
                      + (f"; the arbiter read {listing.get('pages', 0)} of the pages" if arbiter else "")}


PASSES = {
    "reaper": lambda hub, p: reaper_pass(hub, p),
    "culler (Cloudhop policy)": lambda hub, p: culler_pass(hub, p, policy=True),
    "culler (stock arbiter)": lambda hub, p: culler_pass(hub, p, policy=False),
}


def bench(users: int, concurrency: int, tmp: Path) -> dict:
    import subprocess

    import psutil

    fifo = tmp / "fleet.fifo"
    os.mkfifo(fifo)
    marker = f"cloudhop-sweep-{secrets.token_hex(4)}"
    fleet_proc = subprocess.Popen([sys.executable, __file__, "--fleet", str(fifo)])
    hub = HubProcess(tmp, SWEEP_CONFIG.format(fifo=str(fifo), marker=marker), name="sweep",
                     args=("--cull-idle", str(CULL_MINUTES)))
    results: dict = {}
    try:
        hub.start(timeout=120)
        hub_proc = psutil.Process(hub.proc.pid)
        names = [f"s{i:05d}" for i in range(users)]
        for i in range(0, users, 500):
            r = hub.api("POST", "/users", json={"usernames": names[i:i + 500]}, timeout=300)
            assert r.status_code == 201, r.text
        running = 0
        for n in sorted({max(1, users // 10), users}):
            t0 = time.perf_counter()
            failures = asyncio.run(start_servers(hub, names[running:n], concurrency))
            print(f"{n} servers running ({n - running} started in {time.perf_counter() - t0:.0f}s, "
                  f"{len(failures)} failures{': ' + failures[0] if failures else ''})", flush=True)
            running = n
            time.sleep(10)  # the spawns' aftermath (activity, proxy) settles
            idle = idle_rate(hub_proc)
            results[n] = {"idle": idle, "failures": len(failures)}
            for name, run in PASSES.items():
                results[n][name] = measured(hub_proc, idle, lambda: run(hub, hub_proc))
                print(f"  {name}: {results[n][name]}", flush=True)
    finally:
        try:
            hub.stop()
        finally:
            fleet_proc.terminate()
            for p in psutil.process_iter(["cmdline"]):  # this run's servers, by their unique name
                if (p.info["cmdline"] or [""])[0] == marker:
                    p.kill()
    return results


def report(results: dict, users: int) -> None:
    print(f"\nload average: {open('/proc/loadavg').read().split()[:3]}")
    print(f"{'pass':28} {'running':>7} {'hub CPU s':>9} {'net':>6} {'own CPU s':>9} {'pages':>5} "
          f"{'waited s':>8} {'wall s':>7}")
    for n, row in results.items():
        for name in PASSES:
            m = row[name]
            print(f"{name:28} {n:>7} {m['hub_cpu']:>9.2f} {m['hub_net']:>6.2f} {m['own_cpu']:>9.2f} "
                  f"{m['pages']:>5} {m['paused']:>8.2f} {m['wall']:>7.2f}   {m['detail']}")
        print(f"{'(idle hub, CPU s per s)':28} {n:>7} {row['idle']:>9.3f}")
    small, big = min(results), max(results)
    if small != big:
        for name in PASSES:
            a, b = results[small][name], results[big][name]
            print(f"{name}: hub CPU at {big} / at {small} running: {b['hub_cpu'] / max(a['hub_cpu'], 1e-3):.1f}x "
                  f"(net {b['hub_net'] / max(a['hub_net'], 1e-3):.1f}x; linear: {big / small:.0f}x)")
    m, s = results[big]["culler (Cloudhop policy)"], results[big]["culler (stock arbiter)"]
    print(f"Cloudhop culler / stock culler at {big} running: hub CPU {m['hub_cpu'] / max(s['hub_cpu'], 1e-3):.2f}x, "
          f"wall {m['wall'] / max(s['wall'], 1e-3):.2f}x")
    r = results[big]["reaper"]
    print(f"goal: one reaper pass and one culler pass < 2 s of hub CPU at {users} running servers: "
          f"{r['hub_cpu'] + m['hub_cpu']:.2f} s ({'met' if r['hub_cpu'] + m['hub_cpu'] < 2 else 'NOT met'})")


def main() -> None:
    from _common import bench_parser, run_in_scratch

    if len(sys.argv) == 3 and sys.argv[1] == "--fleet":
        asyncio.run(fleet(sys.argv[2]))
        return
    parser = bench_parser(__doc__)
    parser.add_argument("--users", type=int, default=1000, help="users, each with a running server (default 1000)")
    parser.add_argument("--concurrency", type=int, default=50, help="servers started at a time (default 50)")
    args = parser.parse_args()
    if args.users < 1:
        parser.error("--users must be at least 1")

    def go(a, tmp: Path) -> None:
        report(bench(a.users, a.concurrency, tmp), a.users)

    sys.exit(run_in_scratch(args, "sweep_scale", go))


if __name__ == "__main__":
    main()
