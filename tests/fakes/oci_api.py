"""A local stand-in for the OCI Core and Identity REST APIs (version 20160918), for the
calls Cloudhop's OCI provider makes, so the real ``oci`` SDK clients run against it
(``service_endpoint``):

    POST   /20160918/instances/                      LaunchInstance (opc-retry-token)
    GET    /20160918/instances/{id}                  GetInstance
    DELETE /20160918/instances/{id}                  TerminateInstance
    GET    /20160918/instances?compartmentId=...     ListInstances (paged: opc-next-page)
    GET    /20160918/vnicAttachments?instanceId=...  ListVnicAttachments
    GET    /20160918/vnics/{id}                      GetVnic
    GET    /20160918/availabilityDomains             ListAvailabilityDomains (Identity)
    GET    /20160918/images                          ListImages
    GET    /20160918/shapes                          ListShapes
    GET    /20160918/subnets/{id}                    GetSubnet
    POST   /20160918/networkSecurityGroups           CreateNetworkSecurityGroup (opc-retry-token)
    GET    /20160918/networkSecurityGroups?compartmentId=...&vcnId=...  ListNetworkSecurityGroups (paged)
    DELETE /20160918/networkSecurityGroups/{id}      DeleteNetworkSecurityGroup
    POST   /20160918/networkSecurityGroups/{id}/actions/addSecurityRules
    GET    /20160918/networkSecurityGroups/{id}/securityRules

Bodies are OCI's JSON (camelCase; errors ``{"code", "message"}`` with the HTTP status
OCI uses). Instances go PROVISIONING -> RUNNING on the first read, TERMINATING ->
TERMINATED on the first read after terminate. ``script("launch", ...)`` queues answers
for the next launches: ``"capacity"`` (500 InternalError "Out of host capacity."),
``"quota"`` (400 LimitExceeded), ``429``/``500``/``503`` (a plain HTTP error), ``None``;
``script("list", 503)`` answers the next ListInstances with that error.
An instance's VNIC joins the NSGs its launch names (``createVnicDetails.nsgIds``, which
must exist); an NSG with a VNIC of an instance not yet TERMINATED cannot be deleted
(409, as OCI refuses a group that still contains VNICs), and
``script("delete_nsg", 409)`` refuses the next deletes anyway.
Signatures are not checked (the SDK still signs every request with a real key).
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

_ids = itertools.count(1)
AD_PREFIX = "Uocm"
PAGE = 2  # small pages, so the client's paging is exercised

SCRIPTED = {
    "capacity": (500, "InternalError", "Out of host capacity."),
    "quota": (400, "LimitExceeded", "The following service limits were exceeded: gpu-a10-count. "
              "Request a service limit increase from the service limits page in the console."),
    429: (429, "TooManyRequests", "Too many requests for the user"),
    500: (500, "InternalServerError", "Internal error"),
    503: (503, "ServiceUnavailable", "Service unavailable"),
}


class FakeOCI(Loopback):
    def __init__(self, region="eu-amsterdam-1", ads=("AD-1",)):
        self.region = region
        self.lock = threading.Lock()
        self.instances: dict[str, dict] = {}
        self.nsgs: dict[str, dict] = {}
        self.nsg_tokens: dict[str, str] = {}
        self.vcn = f"ocid1.vcn.oc1.{region}.fakevcn"
        self.retry_tokens: dict[str, str] = {}
        self.scripts: dict[str, list] = {}
        self.requests: list[tuple[str, str]] = []
        self.ads = [f"{AD_PREFIX}:{region.upper()}-{ad}" for ad in ads]
        self.images = [
            {"id": f"ocid1.image.oc1.{region}.gpuimage2", "displayName": "Oracle-Linux-8.10-Gen2-GPU-2026.10.01-0",
             "operatingSystem": "Oracle Linux", "timeCreated": "2026-10-01T00:00:00.000Z"},
            {"id": f"ocid1.image.oc1.{region}.plainimage", "displayName": "Oracle-Linux-8.10-2026.10.01-0",
             "operatingSystem": "Oracle Linux", "timeCreated": "2026-10-02T00:00:00.000Z"},
        ]
        #: shapes per availability domain, for the catalog check
        self.shapes: dict[str, list[str]] = {}

    def answering(self):
        return _Handler

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, p in self.requests if m == method and re.search(pattern, p))

    # -- behaviour ----------------------------------------------------------------------
    def _advance(self, inst_id):
        inst = self.instances.get(inst_id)
        if inst is None:
            return None
        view = dict(inst)
        if inst["lifecycleState"] == "PROVISIONING":
            inst["lifecycleState"] = "RUNNING"
        elif inst["lifecycleState"] == "TERMINATING":
            inst["lifecycleState"] = "TERMINATED"
        return view

    def launch(self, body, headers):
        answer = self.next_answer("launch")
        if answer is not None:
            status, code, message = SCRIPTED[answer]
            return status, {"code": code, "message": message}
        token = headers.get("opc-retry-token")
        with self.lock:
            if token and token in self.retry_tokens:
                return 200, dict(self.instances[self.retry_tokens[token]])
            if body.get("availabilityDomain") not in self.ads:
                return 400, {"code": "InvalidParameter",
                             "message": f"Invalid availabilityDomain {body.get('availabilityDomain')}"}
            unknown = [g for g in (body.get("createVnicDetails") or {}).get("nsgIds") or [] if g not in self.nsgs]
            if unknown:
                return 404, {"code": "NotAuthorizedOrNotFound",
                             "message": f"Network security group {unknown[0]} not found"}
            n = next(_ids)
            inst_id = f"ocid1.instance.oc1.{self.region}.fake{n:06d}"
            inst = {
                "id": inst_id,
                "displayName": body.get("displayName"),
                "availabilityDomain": body["availabilityDomain"],
                "compartmentId": body["compartmentId"],
                "region": self.region,
                "shape": body["shape"],
                "lifecycleState": "PROVISIONING",
                "freeformTags": body.get("freeformTags") or {},
                "definedTags": {},
                "metadata": body.get("metadata") or {},
                "sourceDetails": body.get("sourceDetails"),
                "preemptibleInstanceConfig": body.get("preemptibleInstanceConfig"),
                "timeCreated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
                "_subnet": (body.get("createVnicDetails") or {}).get("subnetId"),
                "_nsgs": list((body.get("createVnicDetails") or {}).get("nsgIds") or []),
                "_n": n,
            }
            self.instances[inst_id] = inst
            if token:
                self.retry_tokens[token] = inst_id
        return 200, _public(inst)

    def get(self, inst_id):
        with self.lock:
            view = self._advance(inst_id)
        if view is None:
            return 404, {"code": "NotAuthorizedOrNotFound", "message": "Authorization failed or requested resource not found."}
        return 200, _public(view)

    def terminate(self, inst_id):
        with self.lock:
            inst = self.instances.get(inst_id)
            if inst is None:
                return 404, {"code": "NotAuthorizedOrNotFound", "message": "Authorization failed or requested resource not found."}
            if inst["lifecycleState"] != "TERMINATED":
                inst["lifecycleState"] = "TERMINATING"
        return 204, None

    def list(self, query):
        answer = self.next_answer("list")
        if answer is not None:
            status, code, message = SCRIPTED[answer]
            return status, {"code": code, "message": message}
        compartment = query.get("compartmentId", [""])[0]
        with self.lock:
            ids = [i for i, inst in self.instances.items() if inst["compartmentId"] == compartment]
            views = [_public(self._advance(i)) for i in ids]
        start = int(query.get("page", ["0"])[0])
        nxt = str(start + PAGE) if start + PAGE < len(views) else None
        return 200, views[start:start + PAGE], ({"opc-next-page": nxt} if nxt else {})

    def vnic_attachments(self, query):
        inst_id = query.get("instanceId", [""])[0]
        inst = self.instances.get(inst_id)
        if inst is None or inst["lifecycleState"] == "PROVISIONING":
            return 200, []
        return 200, [{
            "id": f"ocid1.vnicattachment.oc1.{inst['_n']}", "instanceId": inst_id,
            "vnicId": f"ocid1.vnic.oc1.{inst['_n']}", "lifecycleState": "ATTACHED",
            "availabilityDomain": inst["availabilityDomain"], "compartmentId": inst["compartmentId"],
            "subnetId": inst["_subnet"], "timeCreated": "2026-11-22T12:00:00.000Z",
        }]

    def vnic(self, vnic_id):
        n = int(vnic_id.rsplit(".", 1)[-1])
        nsgs = next((i["_nsgs"] for i in self.instances.values() if i["_n"] == n), [])
        return 200, {"id": vnic_id, "privateIp": f"10.0.0.{n % 250 + 2}", "publicIp": f"129.1.0.{n % 250 + 2}",
                     "isPrimary": True, "lifecycleState": "AVAILABLE", "nsgIds": list(nsgs)}

    # -- networking: the subnet's VCN and network security groups ----------------------------
    def subnet(self, subnet_id):
        return 200, {"id": subnet_id, "vcnId": self.vcn, "compartmentId": "ocid1.compartment.oc1..fake",
                     "cidrBlock": "10.0.0.0/24", "lifecycleState": "AVAILABLE", "displayName": "nodes"}

    def nsg_create(self, body, headers):
        token = headers.get("opc-retry-token")
        with self.lock:
            if token and token in self.nsg_tokens:
                return 200, _public(self.nsgs[self.nsg_tokens[token]])
            if body.get("vcnId") != self.vcn:
                return 404, {"code": "NotAuthorizedOrNotFound", "message": f"VCN {body.get('vcnId')} not found"}
            nsg_id = f"ocid1.networksecuritygroup.oc1.{self.region}.fake{next(_ids):06d}"
            self.nsgs[nsg_id] = {
                "id": nsg_id, "compartmentId": body["compartmentId"], "vcnId": body["vcnId"],
                "displayName": body.get("displayName"), "freeformTags": body.get("freeformTags") or {},
                "definedTags": {}, "lifecycleState": "AVAILABLE",
                "timeCreated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
                "_rules": [],
            }
            if token:
                self.nsg_tokens[token] = nsg_id
            return 200, _public(self.nsgs[nsg_id])

    def nsg_list(self, query):
        compartment, vcn = query.get("compartmentId", [""])[0], query.get("vcnId", [None])[0]
        with self.lock:
            views = [_public(g) for g in self.nsgs.values()
                     if g["compartmentId"] == compartment and (vcn is None or g["vcnId"] == vcn)]
        start = int(query.get("page", ["0"])[0])
        nxt = str(start + PAGE) if start + PAGE < len(views) else None
        return 200, views[start:start + PAGE], ({"opc-next-page": nxt} if nxt else {})

    def nsg_delete(self, nsg_id):
        answer = self.next_answer("delete_nsg")
        with self.lock:
            if nsg_id not in self.nsgs:
                return 404, {"code": "NotAuthorizedOrNotFound",
                             "message": "Authorization failed or requested resource not found."}
            in_use = any(nsg_id in i["_nsgs"] and i["lifecycleState"] != "TERMINATED" for i in self.instances.values())
            if answer == 409 or in_use:
                return 409, {"code": "Conflict", "message": f"Network security group {nsg_id} still contains VNICs."}
            del self.nsgs[nsg_id]
        return 204, None

    def nsg_add_rules(self, nsg_id, body):
        with self.lock:
            nsg = self.nsgs.get(nsg_id)
            if nsg is None:
                return 404, {"code": "NotAuthorizedOrNotFound",
                             "message": "Authorization failed or requested resource not found."}
            added = [dict(r, id=f"{next(_ids):06X}", isValid=True, isStateless=r.get("isStateless", False),
                          timeCreated="2026-11-22T12:00:00.000Z") for r in body.get("securityRules") or []]
            nsg["_rules"] += added
        return 200, {"securityRules": added}

    def nsg_rules(self, nsg_id):
        nsg = self.nsgs.get(nsg_id)
        if nsg is None:
            return 404, {"code": "NotAuthorizedOrNotFound",
                         "message": "Authorization failed or requested resource not found."}
        return 200, list(nsg["_rules"])


def _public(inst: dict) -> dict:
    return {k: v for k, v in inst.items() if not k.startswith("_")}


class _Handler(BaseHTTPRequestHandler):
    state: FakeOCI

    def log_message(self, *args):
        pass

    def _send(self, code, body, headers=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("opc-request-id", f"fake-{next(_ids)}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self, method):
        url = urlsplit(self.path)
        path, query = url.path.rstrip("/"), parse_qs(url.query)
        self.state.requests.append((method, path))
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}") if length else {}
        s = self.state
        if method == "POST" and path == "/20160918/instances":
            return self._send(*s.launch(body, {k.lower(): v for k, v in self.headers.items()}))
        if method == "GET" and path == "/20160918/instances":
            return self._send(*s.list(query))
        m = re.match(r"^/20160918/instances/([^/]+)$", path)
        if m and method == "GET":
            return self._send(*s.get(m[1]))
        if m and method == "DELETE":
            return self._send(*s.terminate(m[1]))
        if method == "GET" and path == "/20160918/vnicAttachments":
            return self._send(*s.vnic_attachments(query))
        m = re.match(r"^/20160918/vnics/([^/]+)$", path)
        if m and method == "GET":
            return self._send(*s.vnic(m[1]))
        if method == "GET" and path == "/20160918/availabilityDomains":
            comp = query.get("compartmentId", [""])[0]
            return self._send(200, [{"name": ad, "compartmentId": comp, "id": f"ocid1.ad.{i}"}
                                    for i, ad in enumerate(s.ads)])
        if method == "GET" and path == "/20160918/images":
            return self._send(200, s.images)
        m = re.match(r"^/20160918/subnets/([^/]+)$", path)
        if m and method == "GET":
            return self._send(*s.subnet(m[1]))
        if path == "/20160918/networkSecurityGroups":
            if method == "POST":
                return self._send(*s.nsg_create(body, {k.lower(): v for k, v in self.headers.items()}))
            if method == "GET":
                return self._send(*s.nsg_list(query))
        m = re.match(r"^/20160918/networkSecurityGroups/([^/]+)(/actions/addSecurityRules|/securityRules)?$", path)
        if m and method == "DELETE" and not m[2]:
            return self._send(*s.nsg_delete(m[1]))
        if m and method == "POST" and m[2] == "/actions/addSecurityRules":
            return self._send(*s.nsg_add_rules(m[1], body))
        if m and method == "GET" and m[2] == "/securityRules":
            return self._send(*s.nsg_rules(m[1]))
        if method == "GET" and path == "/20160918/shapes":
            ad = query.get("availabilityDomain", [""])[0]
            return self._send(200, [{"shape": name} for name in s.shapes.get(ad, [])])
        return self._send(404, {"code": "NotFound", "message": f"no route {method} {path}"})

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_DELETE(self):
        self._route("DELETE")
