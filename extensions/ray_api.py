"""The Ray part of the Cloudhop server extension (runs inside the user's server).

Routes under the server's base URL:

* ``GET  cloudhop/ray`` - the cluster as the notebook sees it: the head's address, the
  dashboard link, Ray's own node list (from the head's dashboard API: alive/dead,
  resources, usage) and the hub's view of the worker nodes (launching, running, dead).
* ``POST cloudhop/ray/workers`` ``{"workers": N}`` - asks the hub to resize the
  cluster (the hub launches and removes worker nodes; see :mod:`cloudhop.hub.ray_api`).
  Only the server's owner: users the server is shared with may look, not launch nodes.
* ``ray-dashboard/`` - the Ray dashboard, proxied by jupyter-server-proxy's handler
  and authenticated like every page of the server. Ray itself listens on loopback only.
  jupyter-server-proxy leaves XSRF to the proxied app, and Ray's dashboard has none, so
  a page elsewhere could make the user's browser submit a Ray job (run code as the
  owner): here a request other than GET, HEAD or OPTIONS needs a token
  (``Authorization``) or the server's XSRF token, like the server's own API. The
  dashboard's pages only read, so the UI is unaffected. A request (GET included: the
  dashboard's profilers act on GET) that the browser says another site made is refused
  (:mod:`.cross_site`); the dashboard's own pages fetch same-origin.

  The dashboard wants the cluster's Ray token (:mod:`cloudhop.spawner.ray.auth`). The
  proxy puts it in ``Authorization`` in place of whatever the caller sent there (a
  Jupyter token is not Ray's business), and the token never reaches the browser:
  Ray's ``api/authenticate`` (which answers a valid token with a cookie holding it)
  is not proxied, and no ``Set-Cookie`` with Ray's token cookie is passed on.

All of it is active only when the server runs beside a Ray head (the head launcher
sets ``CLOUDHOP_RAY_DASHBOARD_PORT``). :func:`load` registers the routes; it is
idempotent, so the server extension and the head launcher's config may both call it.
"""

from __future__ import annotations

import json
import os
from urllib.parse import unquote

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from cloudhop.spawner.ray.auth import auth_headers

from .cross_site import cross_site_refusal
from .handlers import CloudhopHandler
from .hubclient import HubClient, HubError

DASHBOARD_NAME = "ray-dashboard"
#: Ray's dashboard route that turns a token into a cookie holding it; never proxied
RAY_AUTHENTICATE = "/api/authenticate"
#: the cookie in which Ray's dashboard keeps the token
RAY_TOKEN_COOKIE = "ray-authentication-token"


def dashboard_port() -> int | None:
    port = os.environ.get("CLOUDHOP_RAY_DASHBOARD_PORT")
    return int(port) if port and port.isdigit() else None


async def _fetch_json(url: str, *, timeout: float = 30):
    """GET JSON from the Ray head's dashboard on loopback, with the cluster's token."""
    req = HTTPRequest(url, headers={"Content-Type": "application/json", **auth_headers()},
                      request_timeout=timeout)
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


class RayStatusHandler(CloudhopHandler):
    @web.authenticated
    @authorized
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
            out["hub"] = await HubClient.from_env().ray_cluster()
        except HubError as err:
            out["errors"].append(f"hub: {err.message}" if err.status is not None else str(err))
        out["alive"] = len([n for n in out["nodes"] if n["state"] == "ALIVE"])
        self.finish(json.dumps(out))


class RayWorkersHandler(CloudhopHandler):
    @web.authenticated
    @authorized
    async def post(self):
        self.check_owner()  # workers are billed to the owner
        if dashboard_port() is None:
            raise web.HTTPError(404, "this server has no Ray cluster", reason="no-ray")
        try:
            body = self.get_json_body() or {}
        except web.HTTPError:
            raise web.HTTPError(400, "body must be JSON like {\"workers\": 2}") from None
        try:
            status = await HubClient.from_env().resize_ray(body)
        except HubError as err:
            # the hub's message names the field; pass its status on (400 stays 400)
            raise web.HTTPError(err.status if err.status and err.status < 600 else 502,
                                err.message if err.status is not None else str(err)) from None
        self.finish(json.dumps(status))


class XsrfCheckedProxy:
    """Mixed in front of jupyter-server-proxy's handler, whose ``check_xsrf_cookie`` does
    nothing: GET, HEAD and OPTIONS pass (the dashboard's pages and their fetches, which
    send no XSRF token), anything else gets the server's own check (skipped for a token
    in ``Authorization``; under JupyterHub a cookie-authenticated request that fails it
    is not authenticated, so it is a 403)."""

    def check_xsrf_cookie(self):
        if self.request.method in ("GET", "HEAD", "OPTIONS"):
            return None
        # JupyterHandler's method: the one JupyterHub replaces with its own check
        return JupyterHandler.check_xsrf_cookie(self)


class CrossSiteGuard:
    """Mixed in front of jupyter-server-proxy's handler: refuses (403, before the request
    is authenticated or proxied) what a page on another site made the user's browser
    send to the dashboard, GETs included (:mod:`.cross_site`)."""

    async def prepare(self, *args, **kwargs):
        prefix = "/" + DASHBOARD_NAME
        path = self.request.path
        proxied = path[path.find(prefix) + len(prefix):] if prefix in path else path
        why = cross_site_refusal(self.request.headers, self.request.host, dashboard_path(proxied))
        if why is not None:
            raise web.HTTPError(403, why)
        return await super().prepare(*args, **kwargs)


def dashboard_path(proxied: str) -> str:
    """The path Ray's dashboard sees for the proxied path ``proxied`` (what follows
    ``ray-dashboard/``), decoded and with empty segments dropped, as Ray's router reads
    it (``/api/authenticate``)."""
    return "/" + "/".join(part for part in unquote(proxied).split("/") if part)


class RayTokenProxy:
    """Mixed in front of jupyter-server-proxy's handler: sends the cluster's Ray token
    and keeps it from the browser (see the module docstring)."""

    def proxy_request_headers(self):
        headers = super().proxy_request_headers()
        for name in [k for k in headers if k.lower() == "authorization"]:
            del headers[name]
        headers.update(auth_headers())
        return headers

    async def proxy(self, port, path):
        if dashboard_path(path) == RAY_AUTHENTICATE:
            raise web.HTTPError(404, "not served through this proxy")
        return await super().proxy(port, path)

    def _keeps(self, name: str, value) -> bool:
        return not (name.lower() == "set-cookie" and str(value).lstrip().startswith(RAY_TOKEN_COOKIE + "="))

    def add_header(self, name, value):
        if self._keeps(name, value):
            super().add_header(name, value)

    def set_header(self, name, value):
        if self._keeps(name, value):
            super().set_header(name, value)


def _dashboard_handlers(base_url: str, port: int) -> list:
    from jupyter_server_proxy.config import ServerProcess, make_handlers
    from jupyter_server_proxy.handlers import ProxyHandler

    server = ServerProcess(name=DASHBOARD_NAME, port=port, launcher_entry={"enabled": False},
                           absolute_url=False)
    out = []
    for pattern, handler, *kwargs in make_handlers(base_url, [server]):
        if issubclass(handler, ProxyHandler):
            handler = type("RayDashboardProxy", (CrossSiteGuard, XsrfCheckedProxy, RayTokenProxy, handler), {})
        out.append((pattern, handler, *kwargs))
    return out


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
