"""Many users on one hub: Cloudhop against stock JupyterHub, side by side in one run.

Each side is a real hub on this machine, started in turn (the other is not running while
one is measured):

- stock: ``python -m jupyterhub`` with JupyterHub's SimpleLocalProcessSpawner and a
  static options form;
- cloudhop: ``cloudhop up`` with the local provider (``{"provider": "local", "gpu":
  "none"}``; isolation "none", like stock's spawner, and no snapshot on stop, so the
  hub's own path is measured, not the store's). Its SQLite database runs in
  write-ahead-log mode (``hub/hub_db.py``), stock's in JupyterHub's default journal mode:
  each side as it ships.

Both run the same single-user server, ``benchmarks/tinyserver.py`` (``c.Spawner.cmd``),
which answers JupyterHub's readiness check and nothing else, so the hub is measured, not
JupyterLab. Load: N users, at most C at a time; each is created and logs in through the
REST API (a token of its own), renders the spawn form (``GET /hub/spawn/<user>`` with
that token), starts its server through the REST API, polls until it is ready, stops it
and polls until it is gone. One warm-up user per side is not counted.

Reported per side, and Cloudhop's ratio against stock: hub CPU seconds per spawn (the
hub process; its services, which stock does not run, on their own line), p50/p95/p99
latency of the REST calls (all but the start and stop calls, which JupyterHub holds until
the spawn ends or slow_spawn_timeout passes: their time shows as start -> ready), the
log-in and form render times, failed spawns, the peak RSS of the hub and of its proxy,
and how often JupyterHub rolled its shared database session back because a request
ended while a row was left uncommitted ("Rolling back dirty objects": each expires every
loaded row, and the reloads were most of the extra CPU Cloudhop once cost per spawn).
Then, on the Cloudhop hub, one reaper sweep over ``--sweep-users`` users (goal: < 2 s of
hub CPU for 1,000). Goals: CPU per spawn <= 1.1x stock, p95 <= stock, zero
failures.

    python benchmarks/hub_scale.py [--users 1000] [--concurrency 50] [--sides stock,cloudhop]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from hubfixture import HubProcess  # noqa: E402

TINY = HERE / "tinyserver.py"
PASSWORD = "hub-scale-password"
#: both sides: the same server command and the same log-in (JupyterHub's shared password)
COMMON = f"""
c.Spawner.cmd = [__import__('sys').executable, {str(TINY)!r}]
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = {PASSWORD!r}
c.Authenticator.allow_all = True
"""

CLOUDHOP_CONFIG = COMMON + """
c.LocalProvider.isolation = "none"
c.CloudhopSpawner.hibernate = False
"""

STOCK_CONFIG = COMMON + """
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {home!r}
c.Spawner.options_form = '<label>Size <select name="size"><option>small</option></select></label>'
c.JupyterHub.db_url = "sqlite:///{data}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{data}/jupyterhub_cookie_secret"
c.ConfigurableHTTPProxy.pid_file = "{data}/jupyterhub-proxy.pid"
"""

OPTIONS = {"cloudhop": {"provider": "local", "gpu": "none"}, "stock": {}}
READY_TIMEOUT = 180.0
POLL = 0.25


class StockHub(HubProcess):
    """Plain JupyterHub (no Cloudhop), with the fixture's ports, token and log."""

    def command(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [self.python, "-m", "jupyterhub", "-f", str(self.config_path), "--port", str(self.port)]


@dataclass
class Side:
    name: str
    rest: list[float] = field(default_factory=list)
    login: list[float] = field(default_factory=list)
    spawn: list[float] = field(default_factory=list)
    form: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    spawns: int = 0
    hub_cpu: float = 0.0
    services_cpu: float = 0.0
    hub_rss: int = 0
    proxy_rss: int = 0
    wall: float = 0.0
    #: JupyterHub's "Rolling back dirty objects" warnings: a request ended while a row
    #: another coroutine had set was not committed, and the whole session was rolled back
    rollbacks: int = 0
    #: one reaper sweep over ``sweep_users`` users: hub CPU seconds, pages, wall seconds
    sweep: dict = field(default_factory=dict)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


# -- the hub's processes --------------------------------------------------------------

def is_proxy(p: psutil.Process) -> bool:
    cmd = " ".join(p.cmdline())
    return "configurable-http-proxy" in cmd or "cloudhop.hub.proxy" in cmd


def is_server(p: psutil.Process) -> bool:
    return str(TINY) in " ".join(p.cmdline())


def services(hub: psutil.Process) -> list[psutil.Process]:
    out = []
    for p in hub.children(recursive=True):
        try:
            if not is_proxy(p) and not is_server(p):
                out.append(p)
        except psutil.Error:
            pass
    return out


def cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


class Sampler(threading.Thread):
    """Peak RSS of the hub process and of its proxy, sampled every half second."""

    def __init__(self, hub: psutil.Process):
        super().__init__(daemon=True)
        self.hub, self.hub_rss, self.proxy_rss = hub, 0, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            try:
                self.hub_rss = max(self.hub_rss, self.hub.memory_info().rss)
                for p in self.hub.children(recursive=True):
                    if is_proxy(p):
                        self.proxy_rss = max(self.proxy_rss, p.memory_info().rss)
            except psutil.Error:
                pass


# -- the load ---------------------------------------------------------------------------

class Load:
    def __init__(self, hub: HubProcess, side: Side, options: dict):
        self.hub, self.side, self.options = hub, side, options
        self.admin = {"Authorization": f"token {hub.token}"}

    async def call(self, http: aiohttp.ClientSession, method: str, path: str, headers: dict,
                   record: list | None = None, **kw) -> tuple[int, object]:
        url = f"{self.hub.url}{path}"
        t0 = time.perf_counter()
        async with http.request(method, url, headers=headers, allow_redirects=False, **kw) as r:
            body = await (r.json(content_type=None) if path.startswith("/hub/api") else r.read())
            status = r.status
        (self.side.rest if record is None else record).append(time.perf_counter() - t0)
        return status, body

    async def log_in(self, http: aiohttp.ClientSession, name: str) -> None:
        """The browser's log-in: the login page, then its form with the shared password."""
        status, page = await self.call(http, "GET", "/hub/login", {}, record=self.side.login)
        xsrf = re.search(rb'name="_xsrf" value="([^"]+)"', page)
        if status != 200 or not xsrf:
            raise RuntimeError(f"login page for {name}: {status}")
        status, _ = await self.call(http, "POST", "/hub/login", {}, record=self.side.login,
                                    data={"username": name, "password": PASSWORD, "_xsrf": xsrf.group(1).decode()})
        if status != 302:
            raise RuntimeError(f"login of {name}: {status}")

    async def user(self, http: aiohttp.ClientSession, name: str, counted: bool = True) -> None:
        api = "/hub/api"
        await self.log_in(http, name)
        status, body = await self.call(http, "POST", f"{api}/users/{name}/tokens", self.admin,
                                       json={"note": "hub_scale", "expires_in": 3600})
        if status != 201:
            raise RuntimeError(f"token of {name}: {status} {body}")
        mine = {"Authorization": f"token {body['token']}"}
        status, page = await self.call(http, "GET", f"/hub/spawn/{name}", {}, record=self.side.form)
        if status != 200 or b"<form" not in page:
            raise RuntimeError(f"form of {name}: {status}")
        started = time.perf_counter()
        # not among the REST latencies: JupyterHub answers it once the spawn ends or
        # slow_spawn_timeout passes; its time to ready is the spawn time below
        status, body = await self.call(http, "POST", f"{api}/users/{name}/server", mine, record=[],
                                       json=self.options)
        if status not in (201, 202):
            raise RuntimeError(f"start of {name}: {status} {body}")
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            status, body = await self.call(http, "GET", f"{api}/users/{name}", mine)
            server = (body.get("servers") or {}).get("") if status == 200 else None
            if server and server.get("ready"):
                self.side.spawn.append(time.perf_counter() - started)
                break
            if status == 200 and server is None:
                raise RuntimeError(f"server of {name} went away while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server of {name} not ready in {READY_TIMEOUT:.0f}s")
            await asyncio.sleep(POLL)
        if counted:
            self.side.spawns += 1
        status, body = await self.call(http, "DELETE", f"{api}/users/{name}/server", mine, record=[])
        if status not in (202, 204):
            raise RuntimeError(f"stop of {name}: {status} {body}")
        while True:
            status, body = await self.call(http, "GET", f"{api}/users/{name}", mine)
            if status == 200 and not (body.get("servers") or {}).get(""):
                return
            if time.monotonic() > deadline + 60:
                raise RuntimeError(f"server of {name} did not stop")
            await asyncio.sleep(POLL)

    async def run(self, users: int, concurrency: int) -> None:
        gate = asyncio.Semaphore(concurrency)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.TCPConnector(limit=concurrency * 2) as connector:

            async def one(name: str, counted: bool = True) -> None:
                # a browser of its own: the user's cookies
                async with gate, aiohttp.ClientSession(
                        connector=connector, connector_owner=False, timeout=timeout,
                        cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                    try:
                        await self.user(http, name, counted)
                    except Exception as err:  # a failure is counted, the run goes on
                        self.side.failures.append(f"{name}: {type(err).__name__}: {err}")

            await one("warmup", counted=False)
            if self.side.failures:
                raise RuntimeError(f"the warm-up user failed: {self.side.failures}\n{self.hub.log()}")
            for kept in (self.side.rest, self.side.login, self.side.form, self.side.spawn):
                kept.clear()
            await asyncio.gather(*(one(f"u{i:05d}") for i in range(users)))


def reaper_sweep(hub: HubProcess, proc: psutil.Process, users: int) -> dict:
    """Hub CPU of one reaper sweep (Cloudhop's reaper, paging and backing off as the
    service does, no provider) once the hub has ``users`` users: the load's, and more
    made in one call. Their servers are stopped by then: a running server's model is
    larger, so this is a floor for a hub whose users all run one."""
    from cloudhop.extensions.hubclient import HubClient
    from cloudhop.hub.reaper import Reaper

    client = HubClient(f"{hub.url}/hub/api", hub.token)
    have = {u["name"] for u in asyncio.run(client.users())}  # page by page: the hub caps a page
    more = [f"idle{i:05d}" for i in range(users) if f"idle{i:05d}" not in have][: max(0, users - len(have))]
    if more:
        r = hub.api("POST", "/users", json={"usernames": more}, timeout=300)
        assert r.status_code == 201, r.text
    client.back_off = True
    cpu0, t0 = cpu(proc), time.perf_counter()
    report = asyncio.run(Reaper({}, client, "hub-scale").sweep())
    return {"users": len(have) + len(more), "hub_cpu": cpu(proc) - cpu0, "wall": time.perf_counter() - t0,
            "pages": report.get("hub", {}).get("pages"), "paused": report.get("hub", {}).get("paused"),
            "error": report.get("hub_error")}


def profiler(pid: int, out: Path) -> subprocess.Popen | None:
    """py-spy sampling the hub ``pid`` (whichever of its threads holds the GIL: where its CPU goes) into
    ``out`` as collapsed stacks, or None where py-spy is not installed."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
    if spy is None:
        print("--profile: py-spy is not installed (pip install py-spy); not profiling", flush=True)
        return None
    return subprocess.Popen([spy, "record", "-p", str(pid), "--gil", "-f", "raw", "-r", "100", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(name: str, tmp: Path, users: int, concurrency: int, sweep_users: int = 0,
            profile: Path | None = None) -> Side:
    side = Side(name)
    if name == "stock":
        data = tmp / "stock-data"
        # JupyterHub starts configurable-http-proxy from PATH: the one installed beside this Python
        path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", os.defpath)])
        hub = StockHub(tmp, STOCK_CONFIG.format(home=str(tmp / "homes" / "{username}"), data=data),
                       name="stock", data_dir=data, env={"PATH": path})
    else:
        hub = HubProcess(tmp, CLOUDHOP_CONFIG, name="cloudhop")
    hub.start(timeout=120)
    try:
        proc = psutil.Process(hub.proc.pid)
        spy = profiler(proc.pid, profile / f"{name}.txt") if profile else None
        sampler = Sampler(proc)
        sampler.start()
        load = Load(hub, side, OPTIONS[name])
        cpu0, svc0 = cpu(proc), {p.pid: cpu(p) for p in services(proc)}
        t0 = time.perf_counter()
        asyncio.run(load.run(users, concurrency))
        side.wall = time.perf_counter() - t0
        side.hub_cpu = cpu(proc) - cpu0
        side.services_cpu = sum(cpu(p) - svc0.get(p.pid, 0.0) for p in services(proc))
        sampler.done.set()
        sampler.join()
        side.hub_rss, side.proxy_rss = sampler.hub_rss, sampler.proxy_rss
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        if sweep_users:
            side.sweep = reaper_sweep(hub, proc, sweep_users)
    finally:
        hub.stop()
        side.rollbacks = hub.log_path.read_text(errors="replace").count("Rolling back dirty objects")
    return side


def report(sides: dict[str, Side], users: int, concurrency: int) -> None:
    print(f"users: {users}, concurrency: {concurrency}, load average now: "
          f"{' '.join(f'{x:.2f}' for x in psutil.getloadavg())}, cores: {psutil.cpu_count()}")
    rows = [
        ("hub CPU s per spawn", lambda s: s.hub_cpu / max(s.spawns, 1), "{:.4f}"),
        ("services CPU s per spawn", lambda s: s.services_cpu / max(s.spawns, 1), "{:.4f}"),
        ("REST p50 ms", lambda s: 1000 * pct(s.rest, 50), "{:.1f}"),
        ("REST p95 ms", lambda s: 1000 * pct(s.rest, 95), "{:.1f}"),
        ("REST p99 ms", lambda s: 1000 * pct(s.rest, 99), "{:.1f}"),
        ("login p95 ms", lambda s: 1000 * pct(s.login, 95), "{:.1f}"),
        ("form render p50 ms", lambda s: 1000 * pct(s.form, 50), "{:.1f}"),
        ("form render p95 ms", lambda s: 1000 * pct(s.form, 95), "{:.1f}"),
        ("start -> ready p50 s", lambda s: pct(s.spawn, 50), "{:.2f}"),
        ("start -> ready p95 s", lambda s: pct(s.spawn, 95), "{:.2f}"),
        ("spawns ready", lambda s: s.spawns, "{}"),
        ("failures", lambda s: len(s.failures), "{}"),
        ("dirty-session rollbacks", lambda s: s.rollbacks, "{}"),
        ("hub peak RSS MiB", lambda s: s.hub_rss / 2**20, "{:.0f}"),
        ("proxy peak RSS MiB", lambda s: s.proxy_rss / 2**20, "{:.0f}"),
        ("wall s", lambda s: s.wall, "{:.1f}"),
    ]
    names = list(sides)
    print(f"{'':28}" + "".join(f"{n:>12}" for n in names) + ("   cloudhop/stock" if len(names) == 2 else ""))
    for label, get, fmt in rows:
        values = [get(sides[n]) for n in names]
        line = f"{label:28}" + "".join(f"{fmt.format(v):>12}" for v in values)
        if set(names) == {"cloudhop", "stock"} and values[names.index("stock")]:
            line += f"   {values[names.index('cloudhop')] / values[names.index('stock')]:.2f}x"
        print(line)
    for s in sides.values():
        if s.sweep:
            w = s.sweep
            print(f"{s.name} reaper sweep over {w['users']} users: hub CPU {w['hub_cpu']:.2f}s, "
                  f"{w['pages']} pages, {w['wall']:.2f}s wall, {w['paused']:.2f}s backing off, error {w['error']}")
        for f in s.failures[:10]:
            print(f"  {s.name} failure: {f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--sides", default="stock,cloudhop", help="which hubs, in order (stock,cloudhop)")
    ap.add_argument("--sweep-users", type=int, default=1000,
                    help="after the load, one reaper sweep on the Cloudhop hub with this many users (0: none)")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="sample each hub under the load with py-spy into DIR/<side>.txt (collapsed stacks)")
    args = ap.parse_args()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    sides: dict[str, Side] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sides.split(","):
            sides[name] = measure(name, Path(tmp), args.users, args.concurrency,
                                  sweep_users=args.sweep_users if name == "cloudhop" else 0,
                                  profile=args.profile)
            print(f"{name}: {sides[name].spawns} spawns in {sides[name].wall:.1f}s", flush=True)
    report(sides, args.users, args.concurrency)


if __name__ == "__main__":
    main()
