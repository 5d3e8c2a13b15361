"""In the notebook: ``cloudhop.panel()`` and ``cloudhop.migrate(...)``.

Both talk to this server's own Cloudhop REST API (:mod:`.server`) at
``JUPYTERHUB_SERVICE_URL`` with the kernels' token in ``JUPYTERHUB_API_TOKEN``, which the
server puts in its kernels' environment instead of its own (:mod:`.kernelenv`): it may use
this server's API and nothing else. A migration checkpoints this very kernel, which can only
happen between cells, so neither call blocks: progress is followed from a background
thread and shown in the cell's widgets (or printed, without ipywidgets). When the
migration is done, the widgets send the browser to the new server (a JavaScript output,
which JupyterLab runs because the kernel's own output is trusted) and keep a link to it.

A move that left out something of the user's (a file over the size limit, a path the
operator excludes) stops at ``awaiting-accept``: the new server runs, this one too. The
widgets then list what was left out and ask whether to stop this server anyway
(:meth:`MigrationHandle.accept`), or to keep it running.
"""

from __future__ import annotations

import html
import json
import os
import threading
import time
import urllib.error
import urllib.request

FINAL = ("done", "failed")
#: a move whose target runs while this server waits for the user to accept what it left out
WAITING = "awaiting-accept"
#: how many left-out paths the question names
SHOWN = 10


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

    def accept(self) -> dict:
        """Accept what a move in ``awaiting-accept`` left out: this server stops shortly
        after (the new server runs on). Raises CloudhopAPIError when the move does not
        wait for that, or its new server no longer runs."""
        self.last = _api("POST", f"migrations/{self.id}/accept", {})
        return self.last

    def wait(self, timeout: float = 3600, interval: float = 1.0) -> dict:
        """Poll until the move ends, or waits for :meth:`accept`."""
        deadline = time.monotonic() + timeout
        while self.last["state"] not in FINAL + (WAITING,) and time.monotonic() < deadline:
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
        while handle.last["state"] not in FINAL + (WAITING,):
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
    if state == WAITING:
        return (f"the new server runs at {m['target_url']}; this server keeps running because "
                f"{m.get('left_out') or 'something'} of yours {_were(m)} left out")
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
        follow = _browser_follower(nav)

        def show(m):
            label.value = f"<b>Cloudhop</b>: {_link(m)}"
            ask(handle, m)
            follow(m)

        prompt, ask = _accept_prompt(show)
        display(label, prompt, nav)
    except ImportError:
        def show(m):
            print("Cloudhop:", _text(m), flush=True)
            if m["state"] == WAITING:
                print("".join(f"  {line}\n" for line in left_out_lines(m))
                      + "Stop this server anyway with .accept() on the move this call returned.", flush=True)
    _follow(handle, show)
    return handle


def _mine(m: dict) -> list[dict]:
    """The ``skipped`` entries of ``m`` that are the user's paths (not caches, not variables)."""
    return [s for s in m.get("skipped") or [] if "kind" in s and not s.get("cache")]


def _were(m: dict) -> str:
    return "was" if len(_mine(m)) == 1 else "were"


def left_out_lines(m: dict) -> list[str]:
    """The paths of the user's a move left out (not caches), as ``"data/big.bin (2 MiB:
    over the size limit of 1 MiB)"``: at most :data:`SHOWN`, then how many more."""
    from .snapshot.excludes import human_bytes

    mine = _mine(m)
    lines = [f"{s['path']} ({human_bytes(s['size']) if s.get('size') is not None else 'size unknown'}: "
             f"{s['reason']})" for s in mine[:SHOWN]]
    if len(mine) > SHOWN:
        lines.append(f"and {len(mine) - SHOWN} more (the move's skipped lists them all)")
    return lines


def question(m: dict) -> str:
    """The HTML question a move awaiting the user's accept asks."""
    import html

    items = "".join(f"<li><code>{html.escape(line)}</code></li>" for line in left_out_lines(m))
    return (f"<b>{html.escape(m.get('left_out') or 'Some files')} {_were(m)} left out</b> "
            f"of the move:<ul>{items}</ul>The new server runs. Stop this server anyway? What was left out "
            "goes with it unless you copy it first (its terminal and file browser still work).")


def _accept_prompt(show):
    """``(box, update)``: the question and its two buttons, shown by ``update(handle, m)``
    while the move ``m`` awaits the user's accept; stopping this server calls
    :meth:`MigrationHandle.accept`, then ``show`` follows the move as before."""
    import html

    import ipywidgets as w

    text = w.HTML("")
    stop = w.Button(description="Stop this server", button_style="danger", icon="power-off")
    keep = w.Button(description="Keep it running")
    box = w.VBox([text, w.HBox([stop, keep])], layout=w.Layout(display="none"))
    current: dict = {}

    def update(handle, m):
        current["handle"] = handle
        box.layout.display = "" if m["state"] == WAITING and not current.get("kept") else "none"
        if m["state"] == WAITING:
            text.value = question(m)

    def on_stop(_):
        stop.disabled = keep.disabled = True
        handle = current["handle"]
        try:
            handle.accept()
        except CloudhopAPIError as err:
            text.value = question(handle.last) + f"<br><span style='color:#b00'>{html.escape(str(err))}</span>"
            stop.disabled = keep.disabled = False
            return
        box.layout.display = "none"
        show(handle.last)
        _follow(handle, show)

    def on_keep(_):
        current["kept"] = True
        box.layout.display = "none"

    stop.on_click(on_stop)
    keep.on_click(on_keep)
    return box, update


def _link(m: dict) -> str:
    import html

    text = html.escape(_text(m))
    if m["state"] in ("done", WAITING) and m.get("target_url"):
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


def spend_note(info: dict) -> str:
    """The panel's price and spend of this server (the hub's ledger, or an estimate), and
    the budget warning from 80% of the user's budget."""
    price, spend = info.get("price_hour"), info.get("spend")
    note = f" &middot; ${price:.2f}/h" if isinstance(price, (int, float)) else ""
    if isinstance(spend, (int, float)):
        note += f" &middot; spent ${spend:.2f}" + ("" if info.get("spend_source") == "ledger" else " (estimate)")
    budget = info.get("budget") or {}
    if budget.get("warning"):
        note += f"<br><b style='color:#b45309'>{html.escape(budget.get('message') or '')}</b>"
    return note


def rescued_note(info: dict) -> str:
    """The panel's note for a server the hub relaunched after a spot interruption."""
    origin = info.get("rescued_from")
    return f" &middot; <i>moved after a spot interruption (from {html.escape(origin)})</i>" if origin else ""


def panel():
    """An ipywidgets panel: where this server runs, a target picker (the offers the hub
    lets this user launch), a Move button, progress and, when a move left out something of
    the user's, what and whether to stop this server anyway."""
    import ipywidgets as w

    info = _api("GET", "info")
    here = w.HTML(f"<b>This server</b>: {_describe(info)}" + spend_note(info) + rescued_note(info))
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
    live: dict = {}

    def show(m):
        total = m.get("bytes_total") or 0
        arrived = m["state"] in ("done", WAITING)
        bar.value = 1 if arrived else (min(1, m.get("bytes_sent", 0) / total) if total else bar.value)
        bar.bar_style = {"done": "success", "failed": "danger", WAITING: "warning"}.get(m["state"], "info")
        status.value = _link(m)
        move.disabled = m["state"] not in FINAL or m["state"] == "done"
        ask(live["handle"], m)
        follow(m)

    prompt, ask = _accept_prompt(show)

    def on_click(_):
        move.disabled = True
        try:
            handle = MigrationHandle(_api("POST", "migrations", target.value))
        except CloudhopAPIError as err:
            status.value = f"<span style='color:#b00'>{err}</span>"
            move.disabled = False
            return
        live["handle"] = handle
        show(handle.last)
        _follow(handle, show)

    move.on_click(on_click)
    return w.VBox([here, note, w.HBox([target, move]), bar, prompt, status, nav])
