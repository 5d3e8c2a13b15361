"""The Ray part of the Cloudhop server extension (runs inside the user's server).

Routes under the server's base URL:

* ``GET  cloudhop/ray`` - the cluster as the notebook sees it: the head's address, the
  dashboard link, Ray's own node list (from the head's dashboard API: alive/dead,
  resources, usage) and the hub's view of the worker nodes (launching, running, dead).
* ``POST cloudhop/ray/workers`` ``{"workers": N}`` - asks the hub to resize the
  cluster (the hub launches and removes worker nodes; see :mod:`cloudhop.hub.ray_api`).
* ``ray-dashboard/`` - the Ray dashboard, proxied by jupyter-server-proxy's handler
  and authenticated like every page of the server. Ray itself listens on loopback only.

All of it is active only when the server runs beside a Ray head (the head launcher
sets ``CLOUDHOP_RAY_DASHBOARD_PORT``). :func:`load` registers the routes; it is
idempotent, so the server extension and the head launcher's config may both call it.
"""

from __future__ import annotations

import json
import os

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .ray_panel import hub_ray_url

DASHBOARD_NAME = "ray-dashboard"


def dashboard_port() -> int | None:
    port = os.environ.get("CLOUDHOP_RAY_DASHBOARD_PORT")
    return int(port) if port and port.isdigit() else None


async def _fetch_json(url: str, *, method: str = "GET", body=None, token: str | None = None,
                      timeout: float = 30):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"token {token}"
    req = HTTPRequest(url, method=method, headers=headers, request_timeout=timeout,
                      body=None if body is None else json.dumps(body))
    resp = await AsyncHTTPClient().fetch(req)
    return json.loads(resp.body or b"null")


async def ray_nodes(port: int) -> list[dict]:
    """Ray's node list from the head's dashboard (state API), trimmed for the browser."""
    data = await _fetch_json(f"http://127.0.0.1:{port}/api/v0/nodes?limit=1000&detail=true", timeout=10)
    out = []
    for n in data.get("data", {}).get("result", {}).get("result", []):
        out.append({
            "node_id": n.get("node_id"), "ip": n.get("node_ip"), "head": bool(n.get("is_head_node")),
            "state": n.get("state"), "resources": n.get("resources_total", {}),
        })
    return out


async def cluster_usage(port: int) -> dict:
    """Used vs total of each resource, from the dashboard's cluster status."""
    try:
        data = await _fetch_json(f"http://127.0.0.1:{port}/api/cluster_status", timeout=10)
    except Exception:
        return {}
    usage = (data.get("data", {}).get("clusterStatus", {}).get("loadMetricsReport", {}) or {}).get("usage", {})
    return {k: {"used": v[0], "total": v[1]} for k, v in usage.items()
            if isinstance(v, (list, tuple)) and len(v) == 2 and not k.startswith("node:")}


class RayStatusHandler(APIHandler):
    @web.authenticated
    async def get(self):
        port = dashboard_port()
        if port is None:
            raise web.HTTPError(404, "this server has no Ray cluster", reason="no-ray")
        out = {
            "address": os.environ.get("CLOUDHOP_RAY_HEAD") or os.environ.get("RAY_ADDRESS"),
            "dashboard_url": url_path_join(self.base_url, DASHBOARD_NAME) + "/",
            "nodes": [], "usage": {}, "hub": None, "errors": [],
        }
        try:
            out["nodes"] = await ray_nodes(port)
            out["usage"] = await cluster_usage(port)
        except Exception as err:  # the head may still be starting
            out["errors"].append(f"ray: {err}")
        try:
            out["hub"] = await _fetch_json(hub_ray_url(), token=os.environ.get("JUPYTERHUB_API_TOKEN"))
        except HTTPClientError as err:
            out["errors"].append(f"hub: {_hub_message(err)}")
        except OSError as err:
            out["errors"].append(f"hub unreachable: {err}")
        out["alive"] = len([n for n in out["nodes"] if n["state"] == "ALIVE"])
        self.finish(json.dumps(out))


class RayWorkersHandler(APIHandler):
    @web.authenticated
    async def post(self):
        if dashboard_port() is None:
            raise web.HTTPError(404, "this server has no Ray cluster", reason="no-ray")
        try:
            body = self.get_json_body() or {}
        except web.HTTPError:
            raise web.HTTPError(400, "body must be JSON like {\"workers\": 2}") from None
        try:
            status = await _fetch_json(hub_ray_url(), method="POST", body=body,
                                       token=os.environ.get("JUPYTERHUB_API_TOKEN"), timeout=600)
        except HTTPClientError as err:
            # the hub's message names the field; pass its status on (400 stays 400)
            raise web.HTTPError(err.code if err.code and err.code < 600 else 502, _hub_message(err)) from None
        self.finish(json.dumps(status))


def _hub_message(err: HTTPClientError) -> str:
    if err.response is not None and err.response.body:
        try:
            return json.loads(err.response.body).get("message") or err.message
        except ValueError:
            pass
    return str(err.message)


def _dashboard_handlers(base_url: str, port: int) -> list:
    from jupyter_server_proxy.config import ServerProcess, make_handlers

    server = ServerProcess(name=DASHBOARD_NAME, port=port, launcher_entry={"enabled": False},
                           absolute_url=False)
    return make_handlers(base_url, [server])


def load(serverapp) -> None:
    """Add the Ray routes to ``serverapp`` (once)."""
    web_app = serverapp.web_app
    if web_app.settings.get("cloudhop_ray_loaded"):
        return
    web_app.settings["cloudhop_ray_loaded"] = True
    base = web_app.settings["base_url"]
    routes = [
        (url_path_join(base, "cloudhop/ray"), RayStatusHandler),
        (url_path_join(base, "cloudhop/ray/workers"), RayWorkersHandler),
    ]
    port = dashboard_port()
    if port is not None:
        routes += _dashboard_handlers(base, port)
    web_app.add_handlers(".*$", routes)
    serverapp.log.info("cloudhop: Ray routes loaded (dashboard %s)", "on port %s" % port if port else "off")


def _jupyter_server_extension_points():
    return [{"module": "cloudhop.extensions.ray_api"}]


def _load_jupyter_server_extension(serverapp):
    load(serverapp)
