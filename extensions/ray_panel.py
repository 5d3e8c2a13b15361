"""``cloudhop.ray_panel()``: the server's Ray cluster as an ipywidgets panel.

Shows the nodes Ray sees (head and workers, alive or dead, CPUs, GPUs and their model),
the cluster's usage, the hub's view of the worker nodes (launching, running, dead, with
why), a link to the Ray dashboard through the server's own URL, and a worker count to
add or remove workers.

Where it reads from (the kernel runs on the head's node):
* Ray: the head's dashboard API on loopback (``CLOUDHOP_RAY_DASHBOARD_PORT``), with the
  cluster's token (``RAY_AUTH_TOKEN_PATH``), so the panel works before and without
  ``ray.init()``;
* the hub: its Ray API with the kernels' token (``JUPYTERHUB_API_TOKEN``: ``access:servers``
  on this server only, see :mod:`.kernelenv`), which the hub accepts from the server's
  owner to add and remove workers - only the hub launches nodes.
"""

from __future__ import annotations

import html
import json
import os
import urllib.error
import urllib.request
from urllib.parse import quote

from cloudhop.spawner.ray.auth import auth_headers


class RayPanelError(RuntimeError):
    pass


def _get_json(url: str, *, method: str = "GET", body=None, token: str | None = None, timeout: float = 30,
              headers: dict | None = None):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"token {token}")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read()).get("message") or err.reason
        except ValueError:
            message = err.reason
        raise RayPanelError(f"{err.code}: {message}") from None
    except OSError as err:
        raise RayPanelError(f"unreachable: {err}") from None


def hub_ray_url(env=os.environ) -> str:
    api = env.get("JUPYTERHUB_API_URL", "").rstrip("/")
    user = quote(env.get("JUPYTERHUB_USER", ""), safe="")
    server = env.get("JUPYTERHUB_SERVER_NAME", "")
    return f"{api}/cloudhop/ray/{user}" + (f"/{quote(server, safe='')}" if server else "")


def dashboard_link(env=os.environ) -> str:
    return env.get("JUPYTERHUB_SERVICE_PREFIX", "/").rstrip("/") + "/ray-dashboard/"


def cluster_summary(env=os.environ) -> dict:
    """Everything the panel shows, as plain data (``errors`` lists what could not be read)."""
    port = env.get("CLOUDHOP_RAY_DASHBOARD_PORT")
    if not port:
        raise RayPanelError("this server has no Ray cluster: start it with the Ray option "
                            '(e.g. {"ray": {"workers": 1}})')
    out = {"address": env.get("CLOUDHOP_RAY_HEAD") or env.get("RAY_ADDRESS"),
           "dashboard": dashboard_link(env), "nodes": [], "usage": {}, "hub": None, "errors": []}
    base = f"http://127.0.0.1:{port}"
    ray_auth = auth_headers(env)
    try:
        data = _get_json(f"{base}/api/v0/nodes?limit=1000&detail=true", timeout=10, headers=ray_auth)
        for n in data.get("data", {}).get("result", {}).get("result", []):
            res = n.get("resources_total", {})
            gpu_models = sorted(k.split(":", 1)[1] for k in res if k.startswith("cloudhop_gpu:"))
            out["nodes"].append({
                "node_id": n.get("node_id"), "ip": n.get("node_ip"),
                "role": "head" if n.get("is_head_node") else "worker", "state": n.get("state"),
                "cpus": res.get("CPU", 0), "gpus": res.get("GPU", 0), "gpu_model": ", ".join(gpu_models),
            })
        status = _get_json(f"{base}/api/cluster_status", timeout=10, headers=ray_auth)
        usage = (status.get("data", {}).get("clusterStatus", {}).get("loadMetricsReport", {}) or {}).get("usage", {})
        out["usage"] = {k: {"used": v[0], "total": v[1]} for k, v in usage.items()
                        if k in ("CPU", "GPU") and isinstance(v, (list, tuple)) and len(v) == 2}
    except RayPanelError as err:
        out["errors"].append(f"Ray dashboard {err} (the head may still be starting)")
    try:
        out["hub"] = _get_json(hub_ray_url(env), token=env.get("JUPYTERHUB_API_TOKEN"))
    except RayPanelError as err:
        out["errors"].append(f"hub {err}")
    return out


def scale(workers: int, env=os.environ) -> dict:
    """Ask the hub for ``workers`` live workers (adds, removes, replaces dead ones)."""
    return _get_json(hub_ray_url(env), method="POST", body={"workers": workers},
                     token=env.get("JUPYTERHUB_API_TOKEN"), timeout=600)


def _table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{html.escape(t)}</th>" for _, t in cols)
    body = "".join(
        "<tr>" + "".join(f"<td style='padding:2px 8px'>{html.escape(str(r.get(k, '') if r.get(k) is not None else ''))}</td>"
                         for k, _ in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render(summary: dict) -> str:
    """The panel's HTML for a :func:`cluster_summary` (escaped; links only to the server)."""
    alive = sum(1 for n in summary["nodes"] if n["state"] == "ALIVE")
    parts = [
        f"<b>Ray cluster</b> at <code>{html.escape(str(summary['address']))}</code>: "
        f"{alive} node(s) alive - <a href='{html.escape(summary['dashboard'])}' target='_blank'>Ray dashboard</a>",
        _table([{**n, "node_id": (n["node_id"] or "")[:12]} for n in summary["nodes"]],
               [("role", "role"), ("node_id", "node"), ("ip", "ip"), ("state", "state"),
                ("cpus", "CPUs"), ("gpus", "GPUs"), ("gpu_model", "GPU model")]),
    ]
    if summary["usage"]:
        parts.append("Usage: " + ", ".join(
            f"{k} {v['used']:g}/{v['total']:g}" for k, v in sorted(summary["usage"].items())))
    hub = summary.get("hub")
    if hub:
        parts.append(f"<b>Worker nodes</b> ({hub['alive']} live, {hub['dead']} dead; asked for {hub['requested']})")
        parts.append(_table(hub["workers"], [("index", "#"), ("state", "state"), ("id", "node"),
                                             ("offer", "offer"), ("detail", "detail")]))
    for err in summary["errors"]:
        parts.append(f"<span style='color:#b00'>{html.escape(err)}</span>")
    return "<br>".join(parts)


def ray_panel():
    """Display the panel (in a notebook); returns the widget."""
    import ipywidgets as w

    view = w.HTML()
    count = w.BoundedIntText(min=0, max=32, description="Workers")
    apply = w.Button(description="Apply", button_style="primary", tooltip="add or remove workers")
    refresh = w.Button(description="Refresh")
    message = w.HTML()

    def update(*_):
        try:
            summary = cluster_summary()
        except RayPanelError as err:
            view.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"
            return
        view.value = render(summary)
        if summary.get("hub"):
            count.value = summary["hub"]["requested"]

    def do_apply(*_):
        message.value = f"Asking the hub for {count.value} worker(s)..."
        try:
            status = scale(int(count.value))
            message.value = f"The hub has {status['alive']} worker node(s) for this server."
        except RayPanelError as err:
            message.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"
        update()

    apply.on_click(do_apply)
    refresh.on_click(update)
    update()
    return w.VBox([view, w.HBox([count, apply, refresh]), message])
