"""In the notebook: ``cloudhop.panel()`` and ``cloudhop.migrate(...)``.

Both talk to this server's own Cloudhop REST API (:mod:`.server`) at
``JUPYTERHUB_SERVICE_URL`` with the kernels' token in ``JUPYTERHUB_API_TOKEN``, which the
server puts in its kernels' environment instead of its own (:mod:`.kernelenv`): it may use
this server's API and nothing else. A migration checkpoints this very kernel, which can only
happen between cells, so neither call blocks: progress is followed from a background
thread and shown in the cell's widgets (or printed, without ipywidgets). When the
migration is done, the widgets send the browser to the new server (a JavaScript output,
which JupyterLab runs because the kernel's own output is trusted) and keep a link to it.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request

FINAL = ("done", "failed")


class CloudhopAPIError(RuntimeError):
    pass


def _server_url() -> str:
    url = os.environ.get("JUPYTERHUB_SERVICE_URL")
    if not url:
        raise CloudhopAPIError("not running in a Cloudhop server (JUPYTERHUB_SERVICE_URL is not set)")
    return url.rstrip("/") + "/"


def _token() -> str:
    token = os.environ.get("JUPYTERHUB_API_TOKEN")
    if not token:
        raise CloudhopAPIError("this kernel has no token for its server's API (JUPYTERHUB_API_TOKEN is not "
                               "set: the hub did not give the server one for its kernels; see the server's log)")
    return token


def _api(method: str, path: str, body=None) -> dict:
    req = urllib.request.Request(
        _server_url() + "cloudhop/api/" + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {_token()}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read()).get("message")
        except ValueError:
            message = None
        raise CloudhopAPIError(message or f"{err.code} {err.reason}") from None


def _describe(info: dict) -> str:
    gpu = info.get("gpu") or "none"
    gpus = "no GPU" if gpu == "none" else f"{info.get('gpu_count') or 1} x {gpu}"
    return f"{info.get('provider') or '?'} / {info.get('region') or '?'} / {gpus}"


def offer_choices(offers: list[dict]) -> list[tuple[str, dict]]:
    """``(label, user_options)`` per distinct provider/region/GPU/count, cheapest first."""
    seen: dict[tuple, tuple[str, dict, float]] = {}
    for o in offers:
        key = (o["provider"], o["region"], o["gpu"], o["gpu_count"])
        price = o.get("price_hour")
        if key in seen and (price is None or seen[key][2] <= price):
            continue
        gpus = "no GPU" if o["gpu"] == "none" else f"{o['gpu_count']} x {o['gpu']}"
        label = f"{o['provider']} / {o['region']} / {gpus}" + (f"  (${price:.2f}/h)" if price is not None else "")
        options = {"provider": o["provider"], "region": o["region"], "gpu": o["gpu"], "gpu_count": o["gpu_count"]}
        seen[key] = (label, options, price if price is not None else float("inf"))
    return [(label, opts) for label, opts, _ in sorted(seen.values(), key=lambda v: (v[2], v[0]))]


class MigrationHandle:
    """A started migration. ``status()`` reads its state; ``wait()`` polls until it ends
    (from another kernel or script only: the kernel being moved must stay idle)."""

    def __init__(self, data: dict):
        self.id = data["id"]
        self.last = data

    def status(self) -> dict:
        self.last = _api("GET", f"migrations/{self.id}")
        return self.last

    def wait(self, timeout: float = 3600, interval: float = 1.0) -> dict:
        deadline = time.monotonic() + timeout
        while self.last["state"] not in FINAL and time.monotonic() < deadline:
            time.sleep(interval)
            try:
                self.status()
            except (CloudhopAPIError, OSError):
                break  # the source stopped after "done" was read elsewhere
        return self.last

    def __repr__(self):
        return f"<Migration {self.id}: {self.last['state']}>"


def _follow(handle: MigrationHandle, show) -> None:
    def loop():
        while handle.last["state"] not in FINAL:
            time.sleep(1)
            try:
                handle.status()
            except (CloudhopAPIError, OSError) as err:
                show({"state": "failed", "error": f"lost contact with this server: {err}"})
                return
            show(handle.last)

    threading.Thread(target=loop, name=f"cloudhop-migration-{handle.id}", daemon=True).start()


def _text(m: dict) -> str:
    state = m["state"]
    if state == "done":
        return f"done: your project is at {m['target_url']} (this server stops now)"
    if state == "failed":
        return f"failed: {m.get('error')} - this server is unchanged"
    total = m.get("bytes_total") or 0
    sent = f" ({m.get('bytes_sent', 0) / 2**20:.1f} of {total / 2**20:.1f} MiB sent)" if total else ""
    return f"{state}{sent}"


def migrate(provider: str | None = None, region: str | None = None, gpu: str | None = None,
            gpu_count: int | None = None, **options) -> MigrationHandle:
    """Move this server's files and live kernels to a new server at the given place
    (the spawn form's options: provider, region, gpu, gpu_count, spot, ...).

    Returns at once; progress appears below the cell. Bad options raise at once,
    naming the field."""
    body = {k: v for k, v in dict(options, provider=provider, region=region, gpu=gpu,
                                  gpu_count=gpu_count).items() if v is not None}
    handle = MigrationHandle(_api("POST", "migrations", body))
    try:
        import ipywidgets as w
        from IPython.display import display

        label = w.HTML(f"<b>Cloudhop</b>: {_text(handle.last)}")
        nav = w.Output()
        display(label, nav)
        follow = _browser_follower(nav)

        def show(m):
            label.value = f"<b>Cloudhop</b>: {_link(m)}"
            follow(m)
    except ImportError:
        def show(m):
            print("Cloudhop:", _text(m), flush=True)
    _follow(handle, show)
    return handle


def _link(m: dict) -> str:
    import html

    text = html.escape(_text(m))
    if m["state"] == "done" and m.get("target_url"):
        url = html.escape(m["target_url"], quote=True)
        return f'{text} - <a href="{url}" target="_top">open the new server</a>'
    return text


def navigation(url: str):
    """JavaScript that sends the whole browser window (not just this output's frame) to
    ``url``; the link beside it stays as the fallback where scripts do not run."""
    from IPython.display import Javascript

    return Javascript(f"window.top.location.assign({json.dumps(url)});")


def _browser_follower(out):
    """``follow(m)``: the first time ``m`` is a done migration, put the navigation to its
    ``target_url`` into the Output widget ``out`` (safe from the progress thread)."""
    sent = threading.Event()

    def follow(m: dict) -> None:
        if m["state"] == "done" and m.get("target_url") and not sent.is_set():
            sent.set()
            out.append_display_data(navigation(m["target_url"]))

    return follow


def panel():
    """An ipywidgets panel: where this server runs, a target picker (the offers the hub
    lets this user launch), a Move button and progress."""
    import ipywidgets as w

    info = _api("GET", "info")
    here = w.HTML(f"<b>This server</b>: {_describe(info)}")
    try:
        choices = offer_choices(_api("GET", "offers")["offers"])
        note = w.HTML("")
    except CloudhopAPIError as err:
        choices, note = [], w.HTML(f"<i>offers unavailable: {err}</i>")
    here_key = (info.get("provider"), info.get("region"), info.get("gpu") or "none", info.get("gpu_count") or 0)
    choices = [(label, o) for label, o in choices
               if (o["provider"], o["region"], o["gpu"], o["gpu_count"]) != here_key]
    target = w.Dropdown(options=choices, description="Move to", layout=w.Layout(width="560px"),
                        style={"description_width": "initial"})
    move = w.Button(description="Move", button_style="primary", icon="truck", disabled=not choices)
    bar = w.FloatProgress(value=0, min=0, max=1, description="", layout=w.Layout(width="560px"))
    status = w.HTML("")
    nav = w.Output()
    follow = _browser_follower(nav)

    def show(m):
        total = m.get("bytes_total") or 0
        bar.value = 1 if m["state"] == "done" else (min(1, m.get("bytes_sent", 0) / total) if total else bar.value)
        bar.bar_style = {"done": "success", "failed": "danger"}.get(m["state"], "info")
        status.value = _link(m)
        move.disabled = m["state"] not in FINAL or m["state"] == "done"
        follow(m)

    def on_click(_):
        move.disabled = True
        try:
            handle = MigrationHandle(_api("POST", "migrations", target.value))
        except CloudhopAPIError as err:
            status.value = f"<span style='color:#b00'>{err}</span>"
            move.disabled = False
            return
        show(handle.last)
        _follow(handle, show)

    move.on_click(on_click)
    return w.VBox([here, note, w.HBox([target, move]), bar, status, nav])
