"""The hub's Python proxy (``cloudhop.hub.proxy``) passes an event stream on as it comes,
and everything else as the Python port always did. A real proxy and a real upstream,
in one event loop."""

from __future__ import annotations

import asyncio

from configurable_http_proxy import configproxy
from tornado import web, websocket
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from cloudhop.hub.proxy import StreamingProxyHandler


class Events(web.RequestHandler):
    """An event stream that sends its second event only once the test says so."""

    def initialize(self, gate: asyncio.Event):
        self.gate = gate

    async def get(self):
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("X-Upstream", "yes")
        self.write("data: first\n\n")
        await self.flush()
        await self.gate.wait()
        self.write("data: second\n\n")


class Plain(web.RequestHandler):
    def get(self):
        self.write({"hello": "world"})

    def post(self):
        self.set_status(201)
        self.write(self.request.body)


def serve(app) -> tuple[HTTPServer, int]:
    [sock] = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets([sock])
    return server, sock.getsockname()[1]


async def test_an_event_stream_arrives_before_the_upstream_finishes(monkeypatch):
    gate = asyncio.Event()
    upstream, up_port = serve(web.Application([("/events", Events, {"gate": gate}), ("/plain", Plain)]))
    monkeypatch.setattr(configproxy, "ProxyHandler", StreamingProxyHandler)
    proxy = configproxy.PythonProxy({"auth_token": "x"})
    proxy.add_route("/", {"target": f"http://127.0.0.1:{up_port}"})
    front, port = serve(proxy.proxy_app)
    chunks: list[bytes] = []
    got_first = asyncio.Event()
    headers = {}

    def on_header(line: str) -> None:
        if ": " in line:
            key, value = line.strip().split(": ", 1)
            headers[key] = value

    def on_chunk(chunk: bytes) -> None:
        chunks.append(chunk)
        if b"first" in b"".join(chunks):
            got_first.set()

    client = AsyncHTTPClient(force_instance=True)
    try:
        request = HTTPRequest(f"http://127.0.0.1:{port}/events", headers={"Accept": "text/event-stream"},
                              streaming_callback=on_chunk, header_callback=on_header, request_timeout=30)
        response = asyncio.ensure_future(client.fetch(request))
        await asyncio.wait_for(got_first.wait(), 10)
        assert not response.done(), "the first event came while the upstream still streams"
        assert headers["Content-Type"].startswith("text/event-stream") and headers["X-Upstream"] == "yes"
        gate.set()
        assert (await response).code == 200
        assert b"".join(chunks) == b"data: first\n\ndata: second\n\n"

        # everything else: the Python port's own path, as before
        plain = await client.fetch(f"http://127.0.0.1:{port}/plain")
        assert plain.code == 200 and plain.body == b'{"hello": "world"}'
        posted = await client.fetch(f"http://127.0.0.1:{port}/plain", method="POST", body=b"abc",
                                    headers={"Accept": "text/event-stream"})
        assert posted.code == 201 and posted.body == b"abc"
    finally:
        client.close()
        front.stop()
        upstream.stop()


async def test_a_stream_whose_target_is_down_is_a_503(monkeypatch):
    monkeypatch.setattr(configproxy, "ProxyHandler", StreamingProxyHandler)
    [sock] = bind_sockets(0, "127.0.0.1")
    dead = sock.getsockname()[1]
    sock.close()
    proxy = configproxy.PythonProxy({"auth_token": "x"})
    proxy.add_route("/", {"target": f"http://127.0.0.1:{dead}"})
    front, port = serve(proxy.proxy_app)
    client = AsyncHTTPClient(force_instance=True)
    try:
        r = await client.fetch(f"http://127.0.0.1:{port}/events", headers={"Accept": "text/event-stream"},
                               raise_error=False)
        assert r.code == 503
    finally:
        client.close()
        front.stop()


class Closer(websocket.WebSocketHandler):
    """A websocket the target closes after its first message (as a server does for a user
    whose access it revoked)."""

    def on_message(self, message):
        self.write_message("bye " + message)
        self.close(4003, "revoked")


async def test_a_websocket_the_target_closes_is_closed_for_the_browser(monkeypatch):
    upstream, up_port = serve(web.Application([("/ws", Closer)]))
    monkeypatch.setattr(configproxy, "ProxyHandler", StreamingProxyHandler)
    proxy = configproxy.PythonProxy({"auth_token": "x"})
    proxy.add_route("/", {"target": f"http://127.0.0.1:{up_port}"})
    front, port = serve(proxy.proxy_app)
    try:
        ws = await websocket.websocket_connect(f"ws://127.0.0.1:{port}/ws")
        await ws.write_message("hi")
        assert await asyncio.wait_for(ws.read_message(), 10) == "bye hi"
        assert await asyncio.wait_for(ws.read_message(), 10) is None, "the close reaches the browser"
        assert ws.close_code == 4003 and ws.close_reason == "revoked"
    finally:
        front.stop()
        upstream.stop()
