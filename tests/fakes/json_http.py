"""The loopback HTTP server under the cloud API doubles: :class:`Loopback`, a threaded
server on 127.0.0.1 with scripted answers per call (every double, the OCI and Compute
ones included), and :class:`JSONDouble`, which adds a route table of ``(method, path
regex) -> handler`` and the requests it saw (method, path, headers, body) for the JSON
REST doubles of Lambda Cloud, DigitalOcean, Azure and Yandex Cloud, so each double holds
only its cloud's wire format.

A handler is ``fn(match, query, body, headers) -> (status, body[, headers])``; a body
of None sends nothing. ``script(call, *answers)`` queues answers a double takes with
``next_answer(call)``.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


class Loopback:
    """A double's server and scripted answers. A subclass sets ``self.lock`` and
    ``self.scripts = {}`` in ``__init__`` and names the request handler class that
    answers (:meth:`answering`); that class finds the double as its ``state``."""

    lock: threading.Lock
    scripts: dict[str, list]
    server: ThreadingHTTPServer | None = None

    def answering(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def script(self, call: str, *answers) -> None:
        """Queue ``answers`` for the next calls ``call`` (taken by :meth:`next_answer`)."""
        with self.lock:
            self.scripts.setdefault(call, []).extend(answers)

    def next_answer(self, call: str):
        """The next scripted answer for ``call``, or None: behave as the cloud does."""
        with self.lock:
            queue = self.scripts.get(call) or []
            return queue.pop(0) if queue else None

    def start(self) -> str:
        """Serve on a free port of 127.0.0.1; returns the base URL."""
        handler = type("Handler", (self.answering(),), {"state": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


class JSONDouble(Loopback):
    """Base of a REST double: subclasses fill :attr:`routes` in ``__init__``."""

    def __init__(self):
        self.lock = threading.RLock()
        self.routes: list[tuple[str, re.Pattern, object]] = []
        self.requests: list[dict] = []
        self.scripts: dict[str, list] = {}

    def answering(self):
        return _Handler

    def route(self, method: str, pattern: str, handler) -> None:
        self.routes.append((method, re.compile(f"^{pattern}$"), handler))

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for r in self.requests if r["method"] == method and re.search(pattern, r["path"]))

    def authorize(self, headers: dict):
        """None when the request may go on, else the ``(status, body)`` to answer."""
        return None


class _Handler(BaseHTTPRequestHandler):
    state: JSONDouble
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _send(self, status, body=None, headers=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self, method):
        url = urlsplit(self.path)
        path, query = url.path.rstrip("/") or "/", {k: v[0] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return self._send(400, {"error": {"code": "invalid-json", "message": "body is not JSON"}})
        headers = {k.lower(): v for k, v in self.headers.items()}
        s = self.state
        with s.lock:
            s.requests.append({"method": method, "path": path, "query": query, "headers": headers, "body": body})
        refused = s.authorize(headers)
        if refused is not None:
            return self._send(*refused)
        for m, pattern, handler in s.routes:
            match = pattern.match(path)
            if m == method and match:
                return self._send(*handler(match, query, body, headers))
        return self._send(404, {"error": {"code": "not-found", "message": f"no route {method} {path}"}})

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PATCH(self):
        self._dispatch("PATCH")
