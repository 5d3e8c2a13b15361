"""The notebook's Ray panel resizing the cluster: ``ray_panel.scale`` and the panel's
Apply button, against a stand-in for the hub's Ray API and Ray's dashboard (a local
HTTP server here): what is sent, with which token, and what the user reads back."""

from __future__ import annotations

import html
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cloudhop.extensions import ray_panel

REFUSAL = "workers: 3 Ray workers is more than group 'class' allows: at most 2"


class HubStandIn:
    """Answers the hub's ``/hub/api/cloudhop/ray/ada`` like the hub with a limit of two
    workers, and Ray's dashboard with no nodes; records each POST."""

    def __init__(self):
        self.posts: list[dict] = []
        self.workers = 1
        me = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.startswith("/hub/api/cloudhop/ray/ada"):
                    self._send(200, me.status())
                else:  # the dashboard's node list and cluster status
                    self._send(200, {"data": {"result": {"result": []}}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                me.posts.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if body.get("workers", 0) > 2:
                    self._send(403, {"status": 403, "message": REFUSAL, "rule": "max_ray_workers"})
                    return
                me.workers = body["workers"]
                self._send(200, me.status())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def status(self) -> dict:
        return {"address": "127.0.0.1:24000", "requested": self.workers, "alive": self.workers, "dead": 0,
                "workers": [{"index": i, "state": "running", "id": f"local-{i}"} for i in range(self.workers)]}


@pytest.fixture
def hub(monkeypatch):
    stand_in = HubStandIn()
    port = stand_in.server.server_address[1]
    for k, v in {"JUPYTERHUB_API_URL": f"{stand_in.url}/hub/api", "JUPYTERHUB_USER": "ada",
                 "JUPYTERHUB_SERVER_NAME": "", "JUPYTERHUB_API_TOKEN": "server-token",
                 "JUPYTERHUB_SERVICE_PREFIX": "/user/ada/", "CLOUDHOP_RAY_DASHBOARD_PORT": str(port),
                 "CLOUDHOP_RAY_HEAD": "127.0.0.1:24000"}.items():
        monkeypatch.setenv(k, v)
    yield stand_in
    stand_in.server.shutdown()


def test_scale_asks_the_hub_with_the_servers_token_and_passes_a_refusal_on(hub):
    assert ray_panel.scale(2)["alive"] == 2
    assert hub.posts == [{"path": "/hub/api/cloudhop/ray/ada", "auth": "token server-token", "body": {"workers": 2}}]
    with pytest.raises(ray_panel.RayPanelError) as err:
        ray_panel.scale(3)
    assert str(err.value) == f"403: {REFUSAL}"
    assert hub.workers == 2


def test_apply_resizes_and_shows_the_hubs_answer_or_its_refusal(hub):
    panel = ray_panel.ray_panel()
    view, (count, apply, _refresh), message = panel.children[0], panel.children[1].children, panel.children[2]
    assert count.value == 1 and "asked for 1" in view.value  # read from the hub

    count.value = 3
    apply.click()
    assert html.escape(f"403: {REFUSAL}") in message.value  # the hub's own words, escaped
    assert "color:#b00" in message.value and hub.workers == 1
    assert count.value == 1, "after a refusal the panel shows what the hub has"

    count.value = 2
    apply.click()
    assert message.value == "The hub has 2 worker node(s) for this server."
    assert [p["body"] for p in hub.posts] == [{"workers": 3}, {"workers": 2}]
    assert "asked for 2" in view.value and count.value == 2
