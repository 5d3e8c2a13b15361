"""An operator's `cloudhop up --config FILE` may add to what Cloudhop sets with traitlets'
idioms (``.append``/``.extend``/``.prepend`` on lists, ``.update`` on dicts): Cloudhop's
services, roles, handlers and spawner settings stay, the operator's are added, and a
plain assignment still overrides. The hub's and proxy's internal ports are kept in the
data folder unless the operator chose them."""

from __future__ import annotations

import json
import sys
import textwrap
import time

import pytest
import requests
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

from cloudhop.hub.services import EXTENDED_SETTINGS, add_idle_culler, settle_operator_settings
from cloudhop.hub.up import EMBEDDED_CONFIG
from hubfixture import free_port
from ownports_hub import OwnPortsHub

CLOUDHOP_SERVICES = {"cloudhop-store", "cloudhop-reaper"}
EXTENSION_ARG = "--ServerApp.jpserver_extensions=cloudhop.extensions=True"


def load_embedded(tmp_path, monkeypatch, extra: str, data: str = "data") -> Config:
    """`cloudhop up`'s hub config, with ``extra`` as the operator's --config file."""
    folder = tmp_path / data
    folder.mkdir(exist_ok=True)
    (tmp_path / "extra.py").write_text(textwrap.dedent(extra))
    monkeypatch.setenv("CLOUDHOP_DATA_DIR", str(folder))
    monkeypatch.setenv("CLOUDHOP_EXTRA_CONFIG", str(tmp_path / "extra.py"))
    monkeypatch.delenv("CLOUDHOP_CULL_IDLE", raising=False)
    return PyFileConfigLoader(EMBEDDED_CONFIG.name, path=str(EMBEDDED_CONFIG.parent)).load_config()


def names(entries) -> list[str]:
    return [e["name"] for e in entries]


def test_list_append_adds_the_operators_service_and_role_to_cloudhops(tmp_path, monkeypatch):
    c = load_embedded(tmp_path, monkeypatch, """
        c.JupyterHub.services.append({"name": "mine", "api_token": "0123456789abcdef"})
        c.JupyterHub.load_roles.append({"name": "mine", "scopes": ["read:users"], "services": ["mine"]})
        c.JupyterHub.extra_handlers.append(("/mine", object))
    """)
    assert names(c.JupyterHub.services)[0] == "mine"
    assert CLOUDHOP_SERVICES <= set(names(c.JupyterHub.services))
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["mine"]["services"] == ["mine"]
    assert "access:services!service=cloudhop-store" in roles["user"]["scopes"]
    assert roles["cloudhop-reaper"]["services"] == ["cloudhop-reaper"]
    routes = [h[0] for h in c.JupyterHub.extra_handlers]
    # the operator's route stays; Cloudhop's own are registered by the app (hub/app.py),
    # not through this deprecated setting
    from cloudhop.hub.app import cloudhop_routes

    ours = [h[0] for h in cloudhop_routes()]
    assert routes == ["/mine"] and any("ray" in r for r in ours) and any("offers" in r for r in ours)


def test_list_extend_and_prepend(tmp_path, monkeypatch):
    c = load_embedded(tmp_path, monkeypatch, """
        c.JupyterHub.services.extend([{"name": "a", "api_token": "0123456789abcdef"},
                                      {"name": "b", "api_token": "fedcba9876543210"}])
        c.JupyterHub.services.prepend([{"name": "first", "api_token": "00112233445566778899"}])
        c.Spawner.args.extend(["--ServerApp.terminals_enabled=False"])
        c.Spawner.server_token_scopes.append("read:users:name")
    """)
    assert names(c.JupyterHub.services)[:3] == ["first", "a", "b"]
    assert CLOUDHOP_SERVICES <= set(names(c.JupyterHub.services))
    # the embedded defaults' own arguments (no Jupyter news in JupyterLab) stay, then the operator's
    assert c.Spawner.args == ["--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                              "--ServerApp.terminals_enabled=False", EXTENSION_ARG]
    assert "read:users:name" in c.Spawner.server_token_scopes
    assert "access:services!service=cloudhop-store" in c.Spawner.server_token_scopes


def test_dict_update(tmp_path, monkeypatch):
    c = load_embedded(tmp_path, monkeypatch, """
        c.Spawner.environment.update({"SITE": "lab-3"})
        c.Authenticator.admin_users.add("grace")
        c.CloudhopSpawner.providers.append("aws")
    """)
    env = c.Spawner.environment
    assert env["SITE"] == "lab-3" and env["CLOUDHOP_STORE_LOCAL_URL"].startswith("http://127.0.0.1:")
    assert "grace" in c.Authenticator.admin_users and len(c.Authenticator.admin_users) == 2
    assert c.CloudhopSpawner.providers == ["local", "aws"]
    reaper = json.loads({s["name"]: s for s in c.JupyterHub.services}["cloudhop-reaper"]
                        ["environment"]["CLOUDHOP_REAPER_SETTINGS"])
    assert reaper["providers"] == ["local", "aws"]


def test_a_plain_assignment_still_overrides(tmp_path, monkeypatch):
    c = load_embedded(tmp_path, monkeypatch, """
        c.Spawner.default_url = "/tree"
        c.CloudhopSpawner.providers = ["aws"]
        c.JupyterHub.extra_handlers = []
        c.Spawner.environment = {"ONLY": "1"}
        c.JupyterHub.services = [{"name": "mine", "api_token": "0123456789abcdef"}]
        c.JupyterHub.hub_port = 18081
        c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:18001"
    """)
    assert c.Spawner.default_url == "/tree" and c.CloudhopSpawner.providers == ["aws"]
    assert not any("ray" in h[0] for h in c.JupyterHub.extra_handlers), "the operator's [] replaced Cloudhop's"
    assert set(c.Spawner.environment) == {"ONLY", "CLOUDHOP_STORE_LOCAL_URL", "CLOUDHOP_STORE_URL"}
    assert names(c.JupyterHub.services)[0] == "mine" and CLOUDHOP_SERVICES <= set(names(c.JupyterHub.services))
    assert (c.JupyterHub.hub_port, c.ConfigurableHTTPProxy.api_url) == (18081, "http://127.0.0.1:18001")
    assert not (tmp_path / "data" / "hub_port").exists() and not (tmp_path / "data" / "proxy_api_port").exists()


def test_internal_ports_are_picked_once_and_kept(tmp_path, monkeypatch):
    first = load_embedded(tmp_path, monkeypatch, "")
    again = load_embedded(tmp_path, monkeypatch, "")
    other = load_embedded(tmp_path, monkeypatch, "", data="other")
    ports = (first.JupyterHub.hub_port, first.ConfigurableHTTPProxy.api_url)
    assert ports == (again.JupyterHub.hub_port, again.ConfigurableHTTPProxy.api_url)
    assert first.JupyterHub.hub_port not in (8081, other.JupyterHub.hub_port)
    assert first.ConfigurableHTTPProxy.api_url not in ("http://127.0.0.1:8001", other.ConfigurableHTTPProxy.api_url)
    assert (tmp_path / "data" / "hub_port").read_text().strip() == str(first.JupyterHub.hub_port)


def test_a_data_folder_from_before_keeps_jupyterhubs_ports(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "jupyterhub.sqlite").write_bytes(b"SQLite format 3\0")  # a hub ran here
    c = load_embedded(tmp_path, monkeypatch, "")
    assert (c.JupyterHub.hub_port, c.ConfigurableHTTPProxy.api_url) == (8081, "http://127.0.0.1:8001")


def test_the_helm_path_adds_a_service_to_a_lazy_list():
    """A z2jh extraConfig snippet that appends before Cloudhop's adds its service."""
    c = Config()
    c.JupyterHub.services.append({"name": "site", "api_token": "0123456789abcdef"})
    c.JupyterHub.load_roles.extend([{"name": "site", "scopes": ["read:users"], "services": ["site"]}])
    add_idle_culler(c, timeout=600)
    assert names(c.JupyterHub.services) == ["site", "cloudhop-idle-culler"]
    assert names(c.JupyterHub.load_roles) == ["site", "cloudhop-idle-culler"]


def test_extended_settings_start_from_jupyterhubs_defaults():
    from jupyterhub.app import JupyterHub
    from jupyterhub.spawner import Spawner

    classes = {"JupyterHub": JupyterHub, "Spawner": Spawner}
    for (section, name), initial in EXTENDED_SETTINGS.items():
        assert classes[section].class_traits()[name].default() == initial, (section, name)
    c = Config()
    c.Spawner.args.append("--x")
    settle_operator_settings(c)
    assert c.Spawner.args == ["--x"] and "services" not in c.JupyterHub


ECHO_SERVICE = '''
import http.server, os, sys

class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("echo " + os.environ["JUPYTERHUB_SERVICE_NAME"] + " " + self.path).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
'''


@pytest.mark.e2e
def test_a_real_hub_runs_the_operators_appended_service(tmp_path):
    (tmp_path / "echo.py").write_text(ECHO_SERVICE)
    port = free_port()
    hub = OwnPortsHub(tmp_path, extra_config=f"""
        c.JupyterHub.services.append({{"name": "echo", "url": "http://127.0.0.1:{port}",
                                       "command": [{sys.executable!r}, {str(tmp_path / 'echo.py')!r}, "{port}"]}})
    """)
    try:
        hub.start()
        listed = hub.api("GET", "/services")
        assert listed.status_code == 200, listed.text
        assert {"echo", "cloudhop-test"} | CLOUDHOP_SERVICES <= set(listed.json()), listed.json()
        r = _get_when_up(f"{hub.url}/services/echo/hello")
        assert r is not None and r.status_code == 200, hub.log()
        assert r.text == "echo echo /services/echo/hello"
        store = hub.api("GET", "/services/cloudhop-store").json()
        assert store["url"].startswith("http://127.0.0.1:")
    finally:
        hub.stop()


def _get_when_up(url: str, timeout: float = 30):
    """GET ``url`` until it answers 200 (a service starts beside its hub)."""
    deadline, r = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            r = requests.get(url, timeout=5)
            if r.status_code == 200:
                return r
        except requests.RequestException:
            pass
        time.sleep(0.5)
    return r
