"""A local stand-in for the Compute Engine REST API (v1), for the few calls Cloudhop's
GCP provider makes, so the real ``google-cloud-compute`` client (REST transport) runs
against it:

    POST   /compute/v1/projects/{p}/zones/{z}/instances            (insert)
    GET    /compute/v1/projects/{p}/zones/{z}/instances[/{name}]   (list, get)
    DELETE /compute/v1/projects/{p}/zones/{z}/instances/{name}     (delete)
    GET    /compute/v1/projects/{p}/aggregated/instances           (aggregatedList)
    GET    /compute/v1/projects/{p}/zones/{z}/operations/{op}      (zoneOperations.get)
    POST   /compute/v1/projects/{p}/zones/{z}/operations/{op}/wait (zoneOperations.wait)
    GET    /compute/v1/projects/{p}/zones/{z}/machineTypes, .../acceleratorTypes (list)
    POST   /compute/v1/projects/{p}/global/firewalls                 (firewalls.insert)
    GET    /compute/v1/projects/{p}/global/firewalls[/{name}]        (list, get)
    DELETE /compute/v1/projects/{p}/global/firewalls/{name}          (delete)
    GET    /compute/v1/projects/{p}/global/operations/{op}[/wait]    (globalOperations.get, POST wait)

Bodies are Compute's JSON (lowerCamel fields, ``compute#...`` kinds, errors as
``{"error": {"code", "message", "errors": [{"reason", ...}]}}``). Instances move
PROVISIONING -> RUNNING on the first read after insert, and STOPPING -> gone on the
first read after delete. ``script("insert", ...)`` queues answers for the next inserts:
``"capacity"`` (the operation ends with ZONE_RESOURCE_POOL_EXHAUSTED), ``"quota"``
(QUOTA_EXCEEDED), ``503``/``429``/``500`` (an HTTP error), ``None`` (normal);
``script("aggregated", 503)`` answers the next instance list with that HTTP error;
``script("firewall_insert", 403)`` (or ``"firewall_list"``) answers the next firewall
insert (list) with that HTTP error.
Firewall rules are kept as Compute returns them (``network`` as a full URL).
"""

from __future__ import annotations

import datetime
import itertools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from .json_http import Loopback

BASE = "https://www.googleapis.com/compute/v1"
_ids = itertools.count(1000)

OP_ERRORS = {
    "capacity": ("ZONE_RESOURCE_POOL_EXHAUSTED",
                 "The zone '{zone}' does not have enough resources available to fulfill "
                 "the request.  Try a different zone, or try again later."),
    "quota": ("QUOTA_EXCEEDED", "Quota 'NVIDIA_L4_GPUS' exceeded.  Limit: 0.0 in region {region}."),
}


class FakeCompute(Loopback):
    """State of the fake API: instances, operations, scripted answers, a request log."""

    def __init__(self):
        self.lock = threading.Lock()
        self.instances: dict[tuple[str, str, str], dict] = {}
        self.firewalls: dict[tuple[str, str], dict] = {}
        self.operations: dict[str, dict] = {}
        self.request_ids: dict[str, dict] = {}
        self.scripts: dict[str, list] = {}
        self.requests: list[tuple[str, str]] = []
        #: machine and accelerator types per zone, for the catalog check
        self.machine_types: dict[str, list[str]] = {}
        self.accelerator_types: dict[str, list[str]] = {}

    # -- test controls ------------------------------------------------------------------
    def answering(self):
        return _Handler

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, p in self.requests if m == method and re.search(pattern, p))

    # -- behaviour ----------------------------------------------------------------------
    def _operation(self, project, zone, kind, target, error=None) -> dict:
        """A zone's operation (``zone`` None: a global one)."""
        name = f"operation-{next(_ids)}"
        scope = f"{BASE}/projects/{project}/zones/{zone}" if zone else f"{BASE}/projects/{project}/global"
        op = {
            "kind": "compute#operation",
            "id": str(next(_ids)),
            "name": name,
            "operationType": kind,
            "targetLink": target,
            "status": "RUNNING",
            "progress": 0,
            "selfLink": f"{scope}/operations/{name}",
        }
        if zone:
            op["zone"] = scope
        if error:
            code, message = OP_ERRORS[error]
            op["_error"] = {"errors": [{"code": code, "message": message.format(
                zone=zone, region=zone.rsplit("-", 1)[0])}]}
        self.operations[name] = op
        return op

    def _finish(self, op: dict) -> dict:
        op = dict(op)
        op["status"], op["progress"] = "DONE", 100
        err = op.pop("_error", None)
        if err:
            op["error"] = err
            op["httpErrorStatusCode"] = 503 if "POOL" in err["errors"][0]["code"] else 403
        return op

    def _advance(self, key) -> dict | None:
        inst = self.instances.get(key)
        if inst is None:
            return None
        view = dict(inst)
        if inst["status"] == "PROVISIONING":
            inst["status"] = "RUNNING"
        elif inst["status"] == "STOPPING":
            del self.instances[key]
        return view

    def insert(self, project, zone, body, query):
        answer = self.next_answer("insert")
        if isinstance(answer, int):
            return answer, _error(answer, {429: "rateLimitExceeded", 503: "backendError"}.get(answer, "internalError"))
        req = (query.get("requestId") or [None])[0]
        with self.lock:
            if req and req in self.request_ids:
                return 200, self.request_ids[req]
            key = (project, zone, body["name"])
            target = f"{BASE}/projects/{project}/zones/{zone}/instances/{body['name']}"
            if key in self.instances:
                return 409, _error(409, "alreadyExists",
                                   f"The resource 'projects/{project}/zones/{zone}/instances/{body['name']}' already exists")
            op = self._operation(project, zone, "insert", target, error=answer)
            if answer is None:
                n = next(_ids)
                nic = dict((body.get("networkInterfaces") or [{}])[0])
                nic["networkIP"] = f"10.128.0.{n % 250 + 2}"
                nic["accessConfigs"] = [
                    dict(a, natIP=f"34.1.{n % 250}.{n % 200 + 1}") for a in nic.get("accessConfigs", [])
                ]
                self.instances[key] = dict(
                    body,
                    kind="compute#instance",
                    id=str(n),
                    status="PROVISIONING",
                    zone=f"{BASE}/projects/{project}/zones/{zone}",
                    selfLink=target,
                    networkInterfaces=[nic],
                    creationTimestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
                )
            public = {k: v for k, v in op.items() if k != "_error"}
            if req:
                self.request_ids[req] = public
        return 200, public

    def get(self, project, zone, name):
        with self.lock:
            view = self._advance((project, zone, name))
        if view is None:
            return 404, _error(404, "notFound", f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found")
        return 200, view

    def delete(self, project, zone, name):
        answer = self.next_answer("delete")
        if isinstance(answer, int):
            return answer, _error(answer, "backendError")
        with self.lock:
            key = (project, zone, name)
            if key not in self.instances:
                return 404, _error(404, "notFound", f"The resource 'projects/{project}/zones/{zone}/instances/{name}' was not found")
            self.instances[key]["status"] = "STOPPING"
            op = self._operation(project, zone, "delete", self.instances[key]["selfLink"])
        return 200, op

    def list(self, project, zone, query):
        with self.lock:
            views = [self._advance(k) for k in list(self.instances) if k[0] == project and k[1] == zone]
        return 200, {"kind": "compute#instanceList", "items": _filter(views, query)}

    def aggregated(self, project, query):
        answer = self.next_answer("aggregated")
        if isinstance(answer, int):
            reason = {429: "rateLimitExceeded", 503: "backendError"}.get(answer, "internalError")
            return answer, _error(answer, reason)
        with self.lock:
            keys = [k for k in list(self.instances) if k[0] == project]
            views = [(k[1], self._advance(k)) for k in keys]
        items: dict[str, dict] = {}
        matched = {id(v) for v in _filter([v for _, v in views], query)}
        for zone, view in views:
            if id(view) in matched:
                items.setdefault(f"zones/{zone}", {"instances": []})["instances"].append(view)
        return 200, {"kind": "compute#instanceAggregatedList", "items": items}

    def firewall_insert(self, project, body):
        answer = self.next_answer("firewall_insert")
        if isinstance(answer, int):
            reason = {403: "forbidden", 429: "rateLimitExceeded", 503: "backendError"}.get(answer, "internalError")
            message = ("Required 'compute.firewalls.create' permission for "
                       f"'projects/{project}/global/firewalls/{body.get('name')}'") if answer == 403 else None
            return answer, _error(answer, reason, message)
        with self.lock:
            key = (project, body["name"])
            target = f"{BASE}/projects/{project}/global/firewalls/{body['name']}"
            if key in self.firewalls:
                return 409, _error(409, "alreadyExists",
                                   f"The resource 'projects/{project}/global/firewalls/{body['name']}' already exists")
            network = body.get("network") or "global/networks/default"
            if not network.startswith("https://"):
                network = f"{BASE}/{network}" if network.startswith("projects/") else f"{BASE}/projects/{project}/{network}"
            self.firewalls[key] = dict(
                body, kind="compute#firewall", id=str(next(_ids)), network=network, selfLink=target,
                creationTimestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
                disabled=False,
            )
            return 200, self._operation(project, None, "insert", target)

    def firewall_get(self, project, name):
        with self.lock:
            fw = self.firewalls.get((project, name))
        if fw is None:
            return 404, _error(404, "notFound", f"The resource 'projects/{project}/global/firewalls/{name}' was not found")
        return 200, fw

    def firewall_list(self, project):
        answer = self.next_answer("firewall_list")
        if isinstance(answer, int):
            return answer, _error(answer, "forbidden", "Required 'compute.firewalls.list' permission for "
                                  f"'projects/{project}'")
        with self.lock:
            items = [fw for (p, _), fw in self.firewalls.items() if p == project]
        return 200, {"kind": "compute#firewallList", "items": items}

    def firewall_delete(self, project, name):
        with self.lock:
            fw = self.firewalls.pop((project, name), None)
            if fw is None:
                return 404, _error(404, "notFound", f"The resource 'projects/{project}/global/firewalls/{name}' was not found")
            return 200, self._operation(project, None, "delete", fw["selfLink"])

    def operation(self, name):
        with self.lock:
            op = self.operations.get(name)
            if op is None:
                return 404, _error(404, "notFound", f"operation {name} not found")
            return 200, self._finish(op)


def _error(code: int, reason: str, message: str | None = None) -> dict:
    message = message or {429: "Rate Limit Exceeded", 503: "Backend Error"}.get(code, reason)
    return {"error": {"code": code, "message": message,
                      "errors": [{"message": message, "domain": "global", "reason": reason}]}}


_LABEL = re.compile(r'labels\.([a-z0-9_-]+)\s*(=|:)\s*"?([^"\s)]*)"?')


def _filter(views: list, query: dict) -> list:
    """Compute's list filter, for the forms the provider sends: ``labels.k = "v"`` and
    ``labels.k:*`` terms joined by AND (possibly parenthesised)."""
    text = (query.get("filter") or [""])[0]
    terms = _LABEL.findall(text)
    out = []
    for v in views:
        if v is None:
            continue
        labels = v.get("labels") or {}
        ok = all((k in labels) if op == ":" else labels.get(k) == val for k, op, val in terms)
        if ok:
            out.append(v)
    return out


_ZONE = r"/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)"
_GLOBAL = r"/compute/v1/projects/(?P<project>[^/]+)/global"


class _Handler(BaseHTTPRequestHandler):
    state: FakeCompute

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        self.state.requests.append((method, path))
        body = {}
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            body = json.loads(self.rfile.read(length) or b"{}")
        s = self.state
        routes = [
            ("POST", _ZONE + r"/instances$", lambda m: s.insert(m["project"], m["zone"], body, query)),
            ("GET", _ZONE + r"/instances$", lambda m: s.list(m["project"], m["zone"], query)),
            ("GET", _ZONE + r"/instances/(?P<name>[^/]+)$", lambda m: s.get(m["project"], m["zone"], m["name"])),
            ("DELETE", _ZONE + r"/instances/(?P<name>[^/]+)$", lambda m: s.delete(m["project"], m["zone"], m["name"])),
            ("GET", r"/compute/v1/projects/(?P<project>[^/]+)/aggregated/instances$",
             lambda m: s.aggregated(m["project"], query)),
            ("GET", _ZONE + r"/operations/(?P<op>[^/]+)$", lambda m: s.operation(m["op"])),
            ("POST", _ZONE + r"/operations/(?P<op>[^/]+)/wait$", lambda m: s.operation(m["op"])),
            ("GET", r"/compute/v1/projects/[^/]+/aggregated/machineTypes$", lambda m: (200, {"items": {
                f"zones/{z}": {"machineTypes": [{"name": t, "zone": z} for t in ts]}
                for z, ts in s.machine_types.items()}})),
            ("GET", r"/compute/v1/projects/[^/]+/aggregated/acceleratorTypes$", lambda m: (200, {"items": {
                f"zones/{z}": {"acceleratorTypes": [{"name": t, "zone": z} for t in ts]}
                for z, ts in s.accelerator_types.items()}})),
            ("GET", _ZONE + r"/machineTypes$", lambda m: (200, {"items": [
                {"name": t, "zone": m["zone"]} for t in s.machine_types.get(m["zone"], [])]})),
            ("GET", _ZONE + r"/acceleratorTypes$", lambda m: (200, {"items": [
                {"name": t, "zone": m["zone"]} for t in s.accelerator_types.get(m["zone"], [])]})),
            ("POST", _GLOBAL + r"/firewalls$", lambda m: s.firewall_insert(m["project"], body)),
            ("GET", _GLOBAL + r"/firewalls$", lambda m: s.firewall_list(m["project"])),
            ("GET", _GLOBAL + r"/firewalls/(?P<name>[^/]+)$", lambda m: s.firewall_get(m["project"], m["name"])),
            ("DELETE", _GLOBAL + r"/firewalls/(?P<name>[^/]+)$", lambda m: s.firewall_delete(m["project"], m["name"])),
            ("GET", _GLOBAL + r"/operations/(?P<op>[^/]+)$", lambda m: s.operation(m["op"])),
            ("POST", _GLOBAL + r"/operations/(?P<op>[^/]+)/wait$", lambda m: s.operation(m["op"])),
        ]
        for verb, pattern, action in routes:
            m = re.match(pattern, path)
            if verb == method and m:
                self._send(*action(m))
                return
        self._send(404, _error(404, "notFound", f"no route {method} {path}"))

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_DELETE(self):
        self._route("DELETE")
