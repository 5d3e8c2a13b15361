"""The hub's HTTP proxy when no Node.js ``configurable-http-proxy`` is installed:
the Python port (``configurable_http_proxy``) with event streams passed on as they come.

The Python port reads a whole response before it sends any of it, and gives up on a
response after 20 s. For an event stream that means the spawn progress page
(``/hub/api/users/{name}/server/progress``) shows nothing until the spawn has ended,
and a spawn longer than 20 s ends its stream with an error. Here a request that accepts
``text/event-stream`` (what a browser's ``EventSource`` sends) is streamed instead:
the headers and each chunk are sent on at once, with no time limit while the target
keeps the stream open, on an HTTP client of its own so that open streams never queue
the proxy's other requests. Every other request takes the Python port's own path, but
that a websocket the target closes is closed on the browser's side too.

``cloudhop up`` runs it as ``python -m cloudhop.hub.proxy`` with the options of
``configurable-http-proxy`` (``hub/embedded_config.py``).
"""

from __future__ import annotations

from configurable_http_proxy import configproxy
from configurable_http_proxy.handlers import ProxyHandler
from tornado import httputil
from tornado.httpclient import AsyncHTTPClient
from tornado.iostream import StreamClosedError

#: what a streamed response does not pass on (the proxy frames the stream itself)
_HOP_HEADERS = ("content-length", "transfer-encoding", "content-encoding", "connection")
#: open event streams at once (each holds a connection for as long as its spawn runs)
MAX_STREAMS = 1000

_client: AsyncHTTPClient | None = None


def stream_client() -> AsyncHTTPClient:
    """The HTTP client for event streams, apart from the one the other requests use."""
    global _client
    if _client is None:
        _client = AsyncHTTPClient(force_instance=True, max_clients=MAX_STREAMS)
    return _client


def wants_stream(headers: httputil.HTTPHeaders) -> bool:
    """Whether a request asks for an event stream (``Accept: text/event-stream``)."""
    return "text/event-stream" in headers.get("Accept", "")


class StreamingProxyHandler(ProxyHandler):
    """The Python port's proxy handler, streaming event streams (see the module)."""

    async def call_proxy(self, path=None):
        if self.request.method != "GET" or not wants_stream(self.request.headers):
            return await super().call_proxy(path)
        url = await self.get_target_url(path)
        if url is None:
            return
        request = self._get_proxy_request(url)
        request.request_timeout = 0  # none: the stream lasts as long as the spawn
        request.header_callback = self._header_line
        request.streaming_callback = self._chunk
        self._status_line: str | None = None
        self._upstream_headers = httputil.HTTPHeaders()
        try:
            response = await stream_client().fetch(request, raise_error=False)
        except Exception as err:
            if not self._headers_written:
                await self.handle_proxy_error(503, err)
            return
        if not self._headers_written:  # an answer without a body (or an error before one)
            if response.code == 599:
                await self.handle_proxy_error(503, response.error)
                return
            self._send_headers(response.code, response.reason)
        if not self._finished:
            try:
                self.finish()
            except StreamClosedError:  # the browser left while the stream ran
                pass

    async def start_ws_client(self, path=None):
        """The Python port's websocket relay, which does not pass on a close from the
        target (a server that ends a connection, e.g. a user's whose share was revoked):
        here the browser's side is closed too, as Node's proxy does."""
        await super().start_ws_client(path)
        client = self.ws_client
        if client is None:
            return
        relay = client._on_message_callback  # tornado calls it with None when the target closes

        def relay_and_close(message):
            relay(message)
            if message is None and self.ws_connection is not None:
                self.close(client.close_code, client.close_reason)

        client._on_message_callback = relay_and_close

    def _header_line(self, line: str) -> None:
        """Collect the target's status line and headers; send them on at the blank line."""
        if self._status_line is None:
            self._status_line = line
            return
        if line.strip():
            self._upstream_headers.parse_line(line)
            return
        start = httputil.parse_response_start_line(self._status_line.strip())
        self._send_headers(start.code, start.reason)
        self.flush()

    def _send_headers(self, code: int, reason: str | None) -> None:
        """The target's status and headers, as the Python port passes them on: its own
        ``Server``, ``Content-Type`` and ``Date`` replaced, hop-by-hop ones left out."""
        self.set_status(code, reason or None)
        own = {key.lower() for key, _value in self._headers.get_all()}
        for key, value in self._upstream_headers.get_all():
            if key.lower() in _HOP_HEADERS:
                continue
            if key.lower() in own:
                self.set_header(key, value)
            else:
                self.add_header(key, value)

    def _chunk(self, chunk: bytes):
        """Pass one chunk on now; the target waits until the client has taken it."""
        if self._finished:
            return None
        self.write(chunk)
        return self.flush()


def main() -> None:
    """``configurable-http-proxy``'s command line, with :class:`StreamingProxyHandler`."""
    # PythonProxy builds its app from this module-level name when it is made
    configproxy.ProxyHandler = StreamingProxyHandler
    from configurable_http_proxy.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
