"""A real ``cloudhop up`` hub in a subprocess, for end-to-end tests.

``HubProcess(tmp_path, extra_config="...")`` starts ``python -m cloudhop.hub.cli up`` on
free ports with its own data dir, an extra config file (the test's snippet plus a test
service whose token can manage users and reach their servers), and waits until the hub
answers. ``hub.api(...)`` calls the REST API with that token; ``hub.spawn(...)`` starts a
server and waits until it is ready; ``hub.kernel(...)`` runs code in a kernel of a
user's server through the proxy (kernel websocket).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import requests
import websocket
from isolation import TEST_ISOLATION

TEST_SCOPES = [
    "admin:users", "admin:servers", "access:servers", "admin:server_state", "list:users",
    "read:users", "tokens", "read:hub", "admin:groups", "list:services", "read:services",
    "access:services",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HubProcess:
    def __init__(self, tmp_path: Path, extra_config: str = "", env: dict | None = None,
                 data_dir: Path | None = None, name: str = "hub", python: str | None = None,
                 args: tuple = ()):
        self.tmp_path = Path(tmp_path)
        self.data_dir = Path(data_dir or self.tmp_path / f"{name}-data")
        self.port = free_port()
        self.hub_port = free_port()
        self.proxy_api_port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.tmp_path / f"{name}.log"
        self.config_path = self.tmp_path / f"{name}_config.py"
        self.extra_config = extra_config
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        #: the Python that runs ``cloudhop up`` (another virtual environment's, say)
        self.python = python or sys.executable
        #: more ``cloudhop up`` arguments (``--workshop ...``)
        self.args = list(args)

    # -- process ---------------------------------------------------------------

    def write_config(self) -> None:
        self.config_path.write_text(textwrap.dedent(f"""
            c.JupyterHub.hub_port = {self.hub_port}
            c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
            c.JupyterHub.services = [{{"name": "cloudhop-test", "api_token": {self.token!r}}}]
            c.JupyterHub.load_roles = [{{"name": "cloudhop-test", "scopes": {TEST_SCOPES!r},
                                         "services": ["cloudhop-test"]}}]
            c.JupyterHub.last_activity_interval = 5
            c.Spawner.http_timeout = 60
            c.LocalProvider.isolation = {TEST_ISOLATION!r}
        """) + textwrap.dedent(self.extra_config))

    def start(self, timeout: float = 60) -> "HubProcess":
        self.write_config()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "CLOUDHOP_"))}
        env.update(self.env)
        log = open(self.log_path, "ab")
        started_at = log.tell()
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.log()}")
            if not self._says_running(started_at):  # no request before its routes are in place
                time.sleep(0.3)
                continue
            try:
                if requests.get(f"{self.url}/hub/api/", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"hub did not answer in {timeout}s:\n{self.log()}")

    def command(self) -> list[str]:
        """The hub's command line: ``cloudhop up`` (a subclass may start another hub)."""
        return [self.python, "-m", "cloudhop.hub.cli", "up", "--port", str(self.port),
                "--data-dir", str(self.data_dir), "--config", str(self.config_path), *self.args]

    def _says_running(self, offset: int) -> bool:
        """Whether the hub has logged, after ``offset``, that it is running."""
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return b"JupyterHub is now running at" in f.read()

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> None:
        """Stop the hub (and the proxy it started); user servers keep running."""
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def kill(self, timeout: float = 30) -> None:
        """SIGKILL the hub process alone, as a crash or the OOM killer would: its proxy
        and users' servers are not signalled. Returns once it is gone and the services it
        started have seen that and exited, so :meth:`start` (the same data folder and
        ports) starts the next hub on their ports."""
        import psutil

        from cloudhop.hub.services import HUB_PID_ENV

        def started_here(p) -> bool:
            try:
                return HUB_PID_ENV in p.environ()
            except psutil.Error:
                return False

        services = [p for p in psutil.Process(self.proc.pid).children(recursive=True) if started_here(p)]
        self.proc.kill()
        self.proc.wait(timeout)
        _gone, alive = psutil.wait_procs(services, timeout=timeout)
        assert not alive, f"services outlived their hub: {[p.cmdline() for p in alive]}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    # -- REST API ----------------------------------------------------------------

    def api(self, method: str, path: str, token: str | None = None, **kw) -> requests.Response:
        headers = kw.pop("headers", {})
        headers["Authorization"] = f"token {token or self.token}"
        return requests.request(method, f"{self.url}/hub/api{path}", headers=headers, timeout=kw.pop("timeout", 30), **kw)

    def ensure_user(self, name: str, admin: bool = False) -> None:
        r = self.api("GET", f"/users/{name}")
        if r.status_code == 404:
            r = self.api("POST", f"/users/{name}", json={"admin": admin})
            assert r.status_code == 201, r.text

    def server_model(self, user: str, server: str = "") -> dict | None:
        r = self.api("GET", f"/users/{user}")
        r.raise_for_status()
        return r.json().get("servers", {}).get(server)

    def spawn(self, user: str, options: dict, server: str = "", timeout: float = 120) -> dict:
        """Start a server with ``options`` and wait until it is ready; returns its model."""
        self.ensure_user(user)
        r = self.api("POST", f"/users/{user}/servers/{server}", json=options)
        assert r.status_code in (201, 202), f"{r.status_code}: {r.text}\n{self.log()}"
        return self.wait_ready(user, server, timeout)

    def wait_ready(self, user: str, server: str = "", timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.server_model(user, server)
            if model and model.get("ready"):
                return model
            if model is None:
                raise RuntimeError(f"server {user}/{server} went away while starting:\n{self.log()}")
            time.sleep(0.5)
        raise TimeoutError(f"server {user}/{server} not ready in {timeout}s:\n{self.log()}")

    def stop_server(self, user: str, server: str = "", timeout: float = 60) -> None:
        path = f"/users/{user}/servers/{server}"
        r = self.api("DELETE", path)
        assert r.status_code in (202, 204), r.text
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server_model(user, server) is None:
                return
            time.sleep(0.3)
        raise TimeoutError(f"server {user}/{server} did not stop:\n{self.log()}")

    # -- talking to a user's server through the proxy --------------------------------

    def server_api(self, method: str, user: str, path: str, server: str = "", **kw) -> requests.Response:
        prefix = f"/user/{user}/{server + '/' if server else ''}"
        headers = kw.pop("headers", {})
        headers["Authorization"] = f"token {self.token}"
        return requests.request(method, f"{self.url}{prefix}{path.lstrip('/')}", headers=headers, timeout=kw.pop("timeout", 30), **kw)

    def kernel(self, user: str, server: str = "", kernel_id: str | None = None) -> "KernelClient":
        if kernel_id is None:
            r = self.server_api("POST", user, "api/kernels", server, json={"name": "python3"})
            assert r.status_code == 201, r.text
            kernel_id = r.json()["id"]
        prefix = f"/user/{user}/{server + '/' if server else ''}"
        ws_url = f"ws://127.0.0.1:{self.port}{prefix}api/kernels/{kernel_id}/channels"
        return KernelClient(ws_url, self.token, kernel_id)


class KernelClient:
    """Runs code in a kernel over its websocket (Jupyter messaging v5, JSON frames)."""

    def __init__(self, url: str, token: str, kernel_id: str):
        self.kernel_id = kernel_id
        self.ws = websocket.create_connection(url, header=[f"Authorization: token {token}"], timeout=60)
        self.session = uuid.uuid4().hex

    def execute(self, code: str, timeout: float = 60) -> str:
        """Run ``code``; return its stdout plus the text of its result. Raises on error."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": self.session,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": True,
                        "user_expressions": {}, "allow_stdin": False},
        }))
        out: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                out.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                raise RuntimeError(f"{content['ename']}: {content['evalue']}")
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(out)
        raise TimeoutError(f"kernel did not finish {code!r} in {timeout}s")

    def close(self) -> None:
        self.ws.close()
