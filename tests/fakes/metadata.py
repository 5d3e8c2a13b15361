"""Loopback doubles of the clouds' instance metadata endpoints, in the formats the clouds
document, for the spot preemption agent (``cloudhop.extensions.preempt``):

**AWS** (IMDSv2; ``FakeMetadata("aws")``)::

    PUT /latest/api/token        X-aws-ec2-metadata-token-ttl-seconds: 1..21600 -> the token (text)
    GET /latest/meta-data/spot/instance-action          X-aws-ec2-metadata-token: <token>
        -> 404 until a notice, then 200 {"action": "terminate"|"stop"|"hibernate", "time": "...Z"}
    GET /latest/meta-data/events/recommendations/rebalance
        -> 404 until a recommendation, then 200 {"noticeTime": "...Z"}

  A GET without a valid token is 401 (IMDSv2 only, as on an instance that requires it).

**GCP** (``FakeMetadata("gcp")``)::

    GET /computeMetadata/v1/instance/preempted           Metadata-Flavor: Google -> "TRUE" | "FALSE"
    GET /computeMetadata/v1/instance/maintenance-event   -> "NONE" | "MIGRATE_ON_HOST_MAINTENANCE"
                                                            | "TERMINATE_ON_HOST_MAINTENANCE"

  Every answer has an ``ETag``; ``?wait_for_change=true[&last_etag=E][&timeout_sec=N]``
  holds the request until the value's ETag differs from ``E`` (or the current one when
  no ``last_etag`` is sent), or until ``timeout_sec`` passes (then it answers the
  unchanged value). Without ``Metadata-Flavor: Google`` the answer is 403.

**OCI** (IMDS v2; ``FakeMetadata("oci")``)::

    GET /opc/v2/instance/         Authorization: Bearer Oracle -> the instance's JSON
                                  (id, displayName, region, shape, state, ...)

  OCI gives no preemption notice in instance metadata; what exists is the instance's
  ``state`` (``Running``, then ``Stopping``/``Terminating`` when it is reclaimed). Without
  the header the answer is 401.

``notice()`` makes the cloud announce an interruption (AWS's ``instance-action``, GCP's
``preempted`` TRUE, OCI's state ``Terminating``); ``rebalance()`` (AWS) and
``maintenance(value)`` (GCP) the softer signals. ``requests`` logs ``(method, path)``.
"""

from __future__ import annotations

import datetime
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CLOUDS = ("aws", "gcp", "oci")
#: the path each cloud's base URL ends at (what the agent is given as its metadata URL)
BASES = {"aws": "", "gcp": "/computeMetadata/v1", "oci": "/opc/v2"}


def _iso(seconds_from_now: float) -> str:
    moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds_from_now)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeMetadata:
    """One cloud's metadata endpoint on 127.0.0.1; ``start()`` returns its base URL."""

    def __init__(self, cloud: str):
        if cloud not in CLOUDS:
            raise ValueError(f"cloud must be one of {CLOUDS}, not {cloud!r}")
        self.cloud = cloud
        self.changed = threading.Condition()
        self.version = 0
        self.tokens: set[str] = set()
        self.instance_action: dict | None = None
        self.rebalance_notice: dict | None = None
        self.preempted = "FALSE"
        self.maintenance_event = "NONE"
        self.state = "Running"
        self.requests: list[tuple[str, str]] = []
        self.down = False  # answer 503 to everything (the metadata service unreachable)
        self._server: ThreadingHTTPServer | None = None

    # -- what the cloud announces -------------------------------------------------------
    def _change(self, **values) -> None:
        with self.changed:
            for name, value in values.items():
                setattr(self, name, value)
            self.version += 1
            self.changed.notify_all()

    def notice(self, action: str = "terminate") -> None:
        """The cloud is about to take the instance back."""
        if self.cloud == "aws":
            self._change(instance_action={"action": action, "time": _iso(120)})
        elif self.cloud == "gcp":
            self._change(preempted="TRUE")
        else:
            self._change(state="Terminating")

    def reset(self) -> None:
        """A quiet instance again (a new one in the same place)."""
        self._change(instance_action=None, rebalance_notice=None, preempted="FALSE", maintenance_event="NONE",
                     state="Running")

    def rebalance(self) -> None:
        self._change(rebalance_notice={"noticeTime": _iso(0)})

    def maintenance(self, value: str = "TERMINATE_ON_HOST_MAINTENANCE") -> None:
        self._change(maintenance_event=value)

    # -- server ---------------------------------------------------------------------------
    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: str | bytes = b"", ctype: str = "text/plain", headers=None):
                data = body.encode() if isinstance(body, str) else body
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # a held request whose client went away (a stopped server's agent)

            def do_PUT(self):
                fake.requests.append(("PUT", self.path))
                if fake.down:
                    return self._send(503, "unavailable")
                if fake.cloud != "aws" or urlsplit(self.path).path != "/latest/api/token":
                    return self._send(404, "not found")
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
                if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                    return self._send(400, "bad ttl")
                token = secrets.token_urlsafe(24)
                fake.tokens.add(token)
                self._send(200, token, headers={"X-aws-ec2-metadata-token-ttl-seconds": ttl})

            def do_GET(self):
                fake.requests.append(("GET", self.path))
                if fake.down:
                    return self._send(503, "unavailable")
                getattr(self, f"_{fake.cloud}")()

            def _aws(self):
                if self.headers.get("X-aws-ec2-metadata-token") not in fake.tokens:
                    return self._send(401, "")
                path = urlsplit(self.path).path
                value = {"/latest/meta-data/spot/instance-action": fake.instance_action,
                         "/latest/meta-data/events/recommendations/rebalance": fake.rebalance_notice}.get(path)
                if value is None:
                    return self._send(404, "<?xml version=\"1.0\"?><html><body>404 - Not Found</body></html>",
                                      "text/html")
                self._send(200, json.dumps(value))

            def _gcp(self):
                if self.headers.get("Metadata-Flavor") != "Google":
                    return self._send(403, "Missing Metadata-Flavor:Google header.")
                parts = urlsplit(self.path)
                names = {"/computeMetadata/v1/instance/preempted": "preempted",
                         "/computeMetadata/v1/instance/maintenance-event": "maintenance_event"}
                name = names.get(parts.path)
                if name is None:
                    return self._send(404, "not found")
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}

                def etag():
                    return f"{hash((name, getattr(fake, name))) & 0xffffffffffff:012x}"

                if query.get("wait_for_change") == "true":
                    last = query.get("last_etag") or etag()
                    deadline = time.monotonic() + float(query.get("timeout_sec") or 300)
                    with fake.changed:
                        while etag() == last and time.monotonic() < deadline and not fake.down:
                            fake.changed.wait(max(0.0, min(0.5, deadline - time.monotonic())))
                self._send(200, getattr(fake, name), "application/text",
                           headers={"ETag": etag(), "Metadata-Flavor": "Google"})

            def _oci(self):
                if self.headers.get("Authorization") != "Bearer Oracle":
                    return self._send(401, json.dumps({"code": "NotAuthenticated"}), "application/json")
                if urlsplit(self.path).path.rstrip("/") != "/opc/v2/instance":
                    return self._send(404, json.dumps({"code": "NotFound"}), "application/json")
                self._send(200, json.dumps({
                    "id": "ocid1.instance.oc1.iad.fake", "displayName": "cloudhop-node",
                    "region": "iad", "canonicalRegionName": "us-ashburn-1",
                    "availabilityDomain": "Uocm:US-ASHBURN-AD-1", "shape": "VM.GPU.A10.1",
                    "state": fake.state, "timeCreated": 1700000000000,
                }), "application/json")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}{BASES[self.cloud]}"

    def stop(self) -> None:
        if self._server is not None:
            with self.changed:
                self.down = True
                self.changed.notify_all()
            self._server.shutdown()
            self._server.server_close()
