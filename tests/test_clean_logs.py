"""A normal session of a real ``cloudhop up`` leaves a clean log and a clean exit: a
server spawned, visited by a member of a group it is shared with, and stopped, the
services' health checks, then SIGTERM. No warning, error or 404 beyond the short list
below, and the hub, its proxy and every service it started are gone within 10 s of the
signal."""

from __future__ import annotations

import os
import re
import signal
import time

import psutil
import pytest
from isolation import TEST_ISOLATION

#: seconds the hub and its services get to end after SIGTERM
SHUTDOWN_BOUND = 10

#: what a clean log may still hold at WARNING or above, each with why it is expected
EXPECTED = [
    # JupyterHub at every start without TLS certificates of its own
    r"Running JupyterHub without SSL",
    # JupyterHub filling a new proxy's route table with the services' routes at start
    r"Adding missing route for (cloudhop-store|cloudhop-instructor|stubborn) ",
    # JupyterHub's line for the signal this test sends
    r"Received signal SIGTERM, initiating shutdown",
    # JupyterHub when a spawn outlasts its 10 s slow_spawn_timeout (a busy test machine)
    r"User alice is slow to (start|become responsive|be added to the proxy)",
    # the idle culler at its start; pycurl is left out on purpose: installed, it would
    # replace the HTTP client of the whole hub process too
    r"IdleCuller .*Could not load pycurl",
]
if TEST_ISOLATION == "none":
    # the local provider's notice that users share the hub's account (docs/security.md)
    EXPECTED.append(r'c\.LocalProvider\.isolation is "none"')

#: a log line at WARNING level or above: JupyterHub's and tornado's "[W ...", logging's "[WARNING ..."
SEVERE = re.compile(r"^\[(W|E|C|WARNING|ERROR|CRITICAL)[ \]]")


def severe_lines(log: str) -> list[str]:
    """Lines at WARNING or above, tracebacks and 404s that the expected list does not cover."""
    out = []
    for line in log.splitlines():
        bad = SEVERE.match(line) or "Traceback" in line or re.search(r"\s404\s", line)
        if bad and not any(re.search(p, line) for p in EXPECTED):
            out.append(line)
    return out


#: a service of the operator's that ignores SIGINT and SIGTERM (JupyterHub alone gives
#: such a one 20 s, and checks its health meanwhile)
STUBBORN = """
import http.server, os, signal, urllib.parse
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

url = urllib.parse.urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
http.server.HTTPServer((url.hostname, url.port), Handler).serve_forever()
"""


@pytest.mark.e2e
def test_a_spawn_and_a_shutdown_leave_a_clean_log(hub_factory, tmp_path):
    from hubfixture import free_port

    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    hub = hub_factory(extra_config=f"""
        import sys
        from cloudhop.hub.services import add_idle_culler
        add_idle_culler(c, timeout=3600, every=60)   # the service `--cull-idle` adds
        c.JupyterHub.services.append({{"name": "stubborn", "url": "http://127.0.0.1:{free_port()}",
                                       "command": [sys.executable, {str(script)!r}]}})
        c.JupyterHub.service_check_interval = 1      # JupyterHub's service health check, often
    """)
    r = hub.api("POST", "/users/alice")
    assert r.status_code == 201, r.text
    model = hub.spawn("alice", {"provider": "local", "gpu": "none"})
    assert model["ready"]
    _a_group_member_visits(hub, "alice")
    hub.stop_server("alice")
    time.sleep(5)  # a few health checks of the services

    hub_proc = psutil.Process(hub.proc.pid)
    family = [hub_proc, *hub_proc.children(recursive=True)]
    names = " ".join(" ".join(p.cmdline()) for p in family)
    for part in ("cloudhop.hub.snapshot_store", "cloudhop.hub.reaper", "cloudhop.hub.culling_service", "stubborn.py"):
        assert part in names, f"{part} is not running under the hub: {names}"

    os.kill(hub.proc.pid, signal.SIGTERM)  # as `kill` or systemd stop it: the hub alone
    _, alive = psutil.wait_procs(family, timeout=SHUTDOWN_BOUND)
    try:
        assert not alive, f"still running {SHUTDOWN_BOUND}s after SIGTERM: {[p.cmdline() for p in alive]}"
    finally:
        for p in alive:
            p.kill()
    hub.proc.wait(5)

    log = hub.log_path.read_text(errors="replace")
    assert "unhandled user_options" not in log
    assert "deprecated" not in log.lower()
    assert severe_lines(log) == [], "\n".join(severe_lines(log))


def _a_group_member_visits(hub, owner: str) -> None:
    """``owner``'s server shared with a group, and a member (bob) using it with a token of
    his for it: JupyterHub resolves that token's scopes on each visit, where it used to
    warn "discarding scopes" for the access Cloudhop's group shares give back."""
    import requests

    assert hub.api("POST", "/users/bob").status_code == 201  # (no look-up first: its 404 would be logged)
    assert hub.api("POST", "/groups/helpers", json={"users": ["bob"]}).status_code == 201
    r = hub.api("POST", f"/users/{owner}/tokens", json={"note": "sharing"})
    assert r.status_code == 201, r.text
    r = hub.api("POST", f"/shares/{owner}/", token=r.json()["token"], json={"group": "helpers"})  # as the owner
    assert r.status_code == 200, r.text
    r = hub.api("POST", "/users/bob/tokens", json={"scopes": [f"access:servers!server={owner}/"]})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    for _ in range(2):  # the server asks the hub once, then caches; the hub asked again below
        r = requests.get(f"{hub.url}/user/{owner}/api/status", headers={"Authorization": f"token {token}"},
                         timeout=30)
        assert r.status_code == 200, (r.status_code, r.text[:300])
    assert hub.api("GET", "/user", token=token).json()["name"] == "bob"


# -- the parts, without a hub -----------------------------------------------------------


def test_the_app_registers_cloudhops_routes_before_the_api_404_beside_the_operators():
    from jupyterhub.auth import Authenticator
    from traitlets.config import Config

    from cloudhop.hub.app import CloudhopHub, cloudhop_routes

    class Mine:
        pass

    c = Config()
    c.JupyterHub.extra_handlers = [("/mine", Mine)]
    app = CloudhopHub(config=c, authenticator=Authenticator())
    app.init_handlers()
    paths = [h[0] for h in app.handlers]
    api404 = paths.index("/hub/api/(.*)")
    for route, handler, *_ in cloudhop_routes():
        assert paths.count("/hub" + route) == 1 and paths.index("/hub" + route) < api404, route
    assert "/hub/mine" in paths


def test_cloudhop_up_leaves_the_deprecated_handlers_setting_to_the_operator(tmp_path, monkeypatch):
    """JupyterHub warns "extra_handlers is deprecated" whenever that setting is not empty:
    Cloudhop's defaults leave it empty."""
    from traitlets.config.loader import PyFileConfigLoader

    from cloudhop.hub.up import EMBEDDED_CONFIG

    monkeypatch.setenv("CLOUDHOP_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CLOUDHOP_EXTRA_CONFIG", raising=False)
    monkeypatch.delenv("CLOUDHOP_CULL_IDLE", raising=False)
    c = PyFileConfigLoader(EMBEDDED_CONFIG.name, path=str(EMBEDDED_CONFIG.parent)).load_config()
    assert not c.JupyterHub.get("extra_handlers")


def test_the_spawner_takes_user_options_itself():
    """JupyterHub warns "unhandled user_options" on every spawn without an
    apply_user_options hook; the spawner has one (start() applies them)."""
    from cloudhop.spawner import CloudhopSpawner

    spawner = CloudhopSpawner()
    assert callable(spawner.apply_user_options)
    assert spawner.apply_user_options(spawner, {"provider": "local"}) is None
