"""The notebook side: the panel's target list and migrate()'s errors."""

from __future__ import annotations

import pytest

from cloudhop.extensions import notebook


def offer(provider, region, gpu, count, price):
    return {"provider": provider, "region": region, "gpu": gpu, "gpu_count": count, "price_hour": price,
            "instance_type": f"{gpu}-{count}"}


def test_targets_are_distinct_places_cheapest_first():
    choices = notebook.offer_choices([
        offer("aws", "us-east-1", "A100", 8, 32.0), offer("aws", "us-east-1", "A100", 8, 29.5),
        offer("gcp", "us-central1", "L4", 1, 0.9), offer("local", "site-b", "none", 0, None),
    ])
    labels = [label for label, _ in choices]
    assert labels == ["gcp / us-central1 / 1 x L4  ($0.90/h)", "aws / us-east-1 / 8 x A100  ($29.50/h)",
                      "local / site-b / no GPU"]
    assert choices[0][1] == {"provider": "gcp", "region": "us-central1", "gpu": "L4", "gpu_count": 1}


def test_migrate_outside_a_cloudhop_server_says_so(monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_SERVICE_URL", raising=False)
    with pytest.raises(notebook.CloudhopAPIError, match="not running in a Cloudhop server"):
        notebook.migrate(provider="local", region="site-b")


class ServerAPI:
    """This server's Cloudhop REST API as the panel sees it: one offer, and a migration
    that reads ``snapshotting`` when started and ``done`` once polled."""

    def __init__(self):
        import http.server
        import json
        import threading

        api = self
        self.polled = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def reply(self, body):
                data = json.dumps(body).encode()
                self.send_response(200 if self.command == "GET" else 202)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                path = self.path.removeprefix("/user/ada/cloudhop/api/")
                if path == "info":
                    self.reply({"provider": "local", "region": "site-a", "gpu": "none", "gpu_count": 0})
                elif path == "offers":
                    self.reply({"offers": [offer("local", "site-b", "none", 0, None)]})
                else:
                    api.polled += 1
                    self.reply(migration("done", target_url="/user/ada/site-b-abc123/"))

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.reply(migration("snapshotting"))

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/user/ada/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def migration(state, target_url=None):
    return {"id": "0123456789ab", "state": state, "target_server": "site-b-abc123", "target_url": target_url,
            "bytes_total": 0, "bytes_sent": 0, "variables": {}, "skipped": [], "error": None}


@pytest.fixture
def server_api(monkeypatch):
    api = ServerAPI()
    monkeypatch.setenv("JUPYTERHUB_SERVICE_URL", api.url)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "secret")
    yield api
    api.close()


def widgets_of(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from widgets_of(child)


def test_the_panel_sends_the_browser_to_the_new_server_when_the_move_is_done(server_api):
    import time

    import ipywidgets as w

    panel = notebook.panel()
    parts = list(widgets_of(panel))
    move = next(p for p in parts if isinstance(p, w.Button))
    out = next(p for p in parts if isinstance(p, w.Output))
    status = [p for p in parts if isinstance(p, w.HTML)][-1]
    move.click()
    deadline = time.monotonic() + 30
    while not out.outputs and time.monotonic() < deadline:
        time.sleep(0.1)
    scripts = [o["data"].get("application/javascript") for o in out.outputs]
    assert scripts == ['window.top.location.assign("/user/ada/site-b-abc123/");']
    # the link stays, for a browser where the script does not run
    assert '<a href="/user/ada/site-b-abc123/" target="_top">open the new server</a>' in status.value
    assert move.disabled
    # one navigation, after the one poll that read done
    assert server_api.polled == 1 and len(out.outputs) == 1
