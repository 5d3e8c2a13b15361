"""A local stand-in for the Yandex Cloud REST APIs Cloudhop's Yandex provider calls, all
on one loopback server (``c.YandexProvider.api_endpoint``), so the provider's real
``requests`` client runs against it:

    POST   /iam/v1/tokens                        {"yandexPassportOauthToken"} or {"jwt"} (PS256,
                                                 checked with the key's public half)
    GET    /compute/v1/instances?folderId=&filter=name="..."&view=&pageSize=&pageToken=
    POST   /compute/v1/instances                 an Operation (done: false)
    GET    /compute/v1/instances/{id}?view=      metadata only with view=FULL, as Yandex's
    DELETE /compute/v1/instances/{id}            an Operation; DELETING, gone on the next read
    GET    /compute/v1/images:latestByFamily     GET /compute/v1/zones
    GET    /operations/{id}                      done, with the scripted error if any
    GET    /vpc/v1/subnets[/{id}]                one subnet per zone, network "enp-net"
    GET    /vpc/v1/securityGroups  POST ...  DELETE /vpc/v1/securityGroups/{id}
                                                 (code 9 while a VM's NIC uses it)

Errors are ``{"code": <gRPC code>, "message": ...}`` with the HTTP status Yandex pairs
with it. Every call but the token exchange needs ``Authorization: Bearer <IAM token>``
(else 401, code 16). Labels, names and ``Idempotency-Key`` are checked as Yandex does
(a second create with a key already used answers the first operation).
``script("create", ...)`` queues the next creates' answers: ``"capacity"`` (the
operation fails with RESOURCE_EXHAUSTED, not enough resources in the zone), ``"quota"``
(400, a GPU quota), ``429``, ``500``, ``None``; ``no_capacity = True`` fails every create
for want of resources.

Private addresses are documentation addresses (RFC 5737), which nothing answers, so a
hub waiting for a server on such a node waits as for a VM still booting.
"""

from __future__ import annotations

import base64
import datetime
import itertools
import json
import re

from tests.fakes.json_http import JSONDouble

_ids = itertools.count(1)
_LABEL_KEY = re.compile(r"^[a-z][-_./\\@0-9a-z]{0,62}$")
_LABEL_VALUE = re.compile(r"^[-_./\\@0-9a-z]{0,63}$")
_NAME = re.compile(r"^$|^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
ZONES = ("ru-central1-a", "ru-central1-b", "ru-central1-d")
IAM_AUDIENCE = "https://iam.api.cloud.yandex.net/iam/v1/tokens"

SCRIPTED = {
    "quota": (400, 8, "Quota limit compute.instanceGpus.count exceeded"),
    429: (429, 8, "Too many requests"),
    500: (500, 13, "Internal error"),
}


def _err(status, code, message):
    return status, {"code": code, "message": message, "details": []}


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FakeYandex(JSONDouble):
    def __init__(self, iam_token="yc-test-iam-token", oauth_token=None, folder="b1g-test-folder"):
        super().__init__()
        self.iam_token = iam_token
        self.oauth_token = oauth_token
        self.folder = folder
        #: key id -> (service account id, public key) a JWT may be signed with
        self.keys: dict[str, tuple] = {}
        self.instances: dict[str, dict] = {}
        self.groups: dict[str, dict] = {}
        self.operations: dict[str, dict] = {}
        self.idempotency: dict[str, dict] = {}
        self.no_capacity = False
        self.subnets = {f"e9b-{z}": {"id": f"e9b-{z}", "folderId": folder, "name": f"default-{z}", "zoneId": z,
                                     "networkId": "enp-net", "v4CidrBlocks": ["10.128.0.0/24"]} for z in ZONES}
        self.route("POST", "/iam/v1/tokens", self.tokens)
        for method, pattern, handler in (
            ("GET", "/compute/v1/instances", self.list),
            ("POST", "/compute/v1/instances", self.create),
            ("GET", "/compute/v1/instances/([^/:]+)", self.get),
            ("DELETE", "/compute/v1/instances/([^/:]+)", self.delete),
            ("GET", "/compute/v1/images:latestByFamily",
             lambda m, q, b, h: (200, {"id": "fd8gpuimage", "family": q.get("family")})),
            ("GET", "/compute/v1/zones", lambda m, q, b, h: (200, {"zones": [
                {"id": z, "regionId": "ru-central1", "status": "UP"} for z in ZONES]})),
            ("GET", "/operations/([^/]+)", self.operation),
            ("GET", "/vpc/v1/subnets", lambda m, q, b, h: (200, {"subnets": [
                s for s in self.subnets.values() if s["folderId"] == q.get("folderId")]})),
            ("GET", "/vpc/v1/subnets/([^/]+)", self.subnet),
            ("GET", "/vpc/v1/securityGroups", self.group_list),
            ("POST", "/vpc/v1/securityGroups", self.group_create),
            ("DELETE", "/vpc/v1/securityGroups/([^/]+)", self.group_delete),
        ):
            self.route(method, pattern, self._authed(handler))

    def _authed(self, handler):
        def run(m, q, body, headers):
            if headers.get("authorization") != f"Bearer {self.iam_token}":
                return _err(401, 16, "The token is invalid")
            return handler(m, q, body, headers)

        return run

    # -- IAM ---------------------------------------------------------------------------------
    def add_key(self, key_id: str, service_account: str, public_key) -> None:
        self.keys[key_id] = (service_account, public_key)

    def tokens(self, m, q, body, h):
        ok = False
        if self.oauth_token and body.get("yandexPassportOauthToken") == self.oauth_token:
            ok = True
        elif body.get("jwt"):
            ok = self._jwt_ok(body["jwt"])
        if not ok:
            return _err(401, 16, "Authentication failed")
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=12)
        return 200, {"iamToken": self.iam_token, "expiresAt": expires.isoformat().replace("+00:00", "Z")}

    def _jwt_ok(self, token: str) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        try:
            head, payload, signature = token.split(".")
            header, claims = json.loads(_unb64(head)), json.loads(_unb64(payload))
            account, public = self.keys[header["kid"]]
            public.verify(_unb64(signature), f"{head}.{payload}".encode(),
                          padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256())
        except (ValueError, KeyError, InvalidSignature):
            return False
        return header.get("alg") == "PS256" and claims.get("iss") == account and claims.get("aud") == IAM_AUDIENCE

    # -- operations --------------------------------------------------------------------------
    def _operation(self, description, metadata, error=None):
        op_id = f"op-{next(_ids):08d}"
        op = {"id": op_id, "description": description, "createdAt": _now(), "done": False, "metadata": metadata}
        self.operations[op_id] = {**op, "_error": error}
        return op

    def operation(self, m, q, body, h):
        with self.lock:
            op = self.operations.get(m[1])
            if op is None:
                return _err(404, 5, "Operation not found")
            out = {k: v for k, v in op.items() if not k.startswith("_")}
            out["done"] = True
            if op["_error"]:
                out["error"] = {"code": op["_error"][0], "message": op["_error"][1]}
            return 200, out

    # -- instances ---------------------------------------------------------------------------
    def _view(self, inst, full):
        view = {k: v for k, v in inst.items() if not k.startswith("_") and (full or k != "metadata")}
        if inst["status"] == "PROVISIONING":
            inst["status"] = "RUNNING"
        elif inst["status"] == "DELETING":
            self.instances.pop(inst["id"], None)
        return view

    def list(self, m, q, body, h):
        if q.get("folderId") != self.folder:
            return _err(403, 7, "Permission denied to folder")
        with self.lock:
            found = list(self.instances.values())
            name = re.fullmatch(r'name="([^"]*)"', q.get("filter", ""))
            if q.get("filter") and not name:
                return _err(400, 3, "filter: only name=\"...\" is supported")
            if name:
                found = [i for i in found if i["name"] == name[1]]
            size = int(q.get("pageSize") or 1000)
            start = int(q.get("pageToken") or 0)
            page = [self._view(i, q.get("view") == "FULL") for i in found[start:start + size]]
            out = {"instances": page}
            if start + size < len(found):
                out["nextPageToken"] = str(start + size)
            return 200, out

    def get(self, m, q, body, h):
        with self.lock:
            inst = self.instances.get(m[1])
            if inst is None:
                return _err(404, 5, f"Instance {m[1]} not found")
            return 200, self._view(inst, q.get("view") == "FULL")

    def _invalid(self, body):
        if body.get("folderId") != self.folder:
            return _err(403, 7, "Permission denied to folder")
        if not _NAME.match(body.get("name") or ""):
            return _err(400, 3, "Illegal argument name")
        for k, v in (body.get("labels") or {}).items():
            if not _LABEL_KEY.match(k) or not _LABEL_VALUE.match(str(v)):
                return _err(400, 3, f"Illegal argument labels: {k}")
        if body.get("zoneId") not in ZONES:
            return _err(400, 3, f"Illegal argument zoneId {body.get('zoneId')}")
        nic = (body.get("networkInterfaceSpecs") or [{}])[0]
        subnet = self.subnets.get(nic.get("subnetId"))
        if subnet is None or subnet["zoneId"] != body["zoneId"]:
            return _err(400, 3, "Subnet not found in the instance's zone")
        for group in nic.get("securityGroupIds") or []:
            if group not in self.groups:
                return _err(400, 3, f"Security group {group} not found")
        resources = body.get("resourcesSpec") or {}
        if not all(str(resources.get(k, "")).isdigit() for k in ("memory", "cores")):
            return _err(400, 3, "Illegal argument resourcesSpec")
        if not ((body.get("bootDiskSpec") or {}).get("diskSpec") or {}).get("imageId"):
            return _err(400, 3, "bootDiskSpec.diskSpec.imageId is required")
        return None

    def create(self, m, q, body, headers):
        key = headers.get("idempotency-key")
        with self.lock:
            if key and key in self.idempotency:
                return 200, self.idempotency[key]
            answer = self.next_answer("create")
            if answer in SCRIPTED:
                return _err(SCRIPTED[answer][0], SCRIPTED[answer][1], SCRIPTED[answer][2])
            invalid = self._invalid(body)
            if invalid:
                return invalid
            if any(i["name"] == body["name"] for i in self.instances.values() if body["name"]):
                return _err(409, 6, f"Instance with name {body['name']} already exists")
            n = next(_ids)
            inst_id = f"fhm{n:017d}"
            if answer == "capacity" or self.no_capacity:
                why = f"Not enough resources in zone {body['zoneId']} for platform {body.get('platformId')}"
                op = self._operation("Create instance", {"instanceId": inst_id}, (8, why))
                return 200, op
            nic = body["networkInterfaceSpecs"][0]
            address = {"address": f"198.51.100.{n % 250 + 1}"}
            if "oneToOneNatSpec" in (nic.get("primaryV4AddressSpec") or {}):
                address["oneToOneNat"] = {"address": f"203.0.113.{n % 250 + 1}", "ipVersion": "IPV4"}
            resources = body["resourcesSpec"]
            self.instances[inst_id] = {
                "id": inst_id, "folderId": body["folderId"], "createdAt": _now(), "name": body["name"],
                "description": body.get("description", ""), "labels": dict(body.get("labels") or {}),
                "zoneId": body["zoneId"], "platformId": body.get("platformId"),
                "resources": {"memory": resources["memory"], "cores": resources["cores"],
                              "coreFraction": resources.get("coreFraction", "100"),
                              "gpus": resources.get("gpus", "0")},
                "status": "PROVISIONING", "metadata": dict(body.get("metadata") or {}),
                "networkInterfaces": [{"index": "0", "subnetId": nic["subnetId"], "primaryV4Address": address,
                                       "securityGroupIds": list(nic.get("securityGroupIds") or [])}],
                "schedulingPolicy": dict(body.get("schedulingPolicy") or {}),
                "_body": body,
            }
            op = self._operation("Create instance", {"instanceId": inst_id})
            if key:
                self.idempotency[key] = op
            return 200, op

    def delete(self, m, q, body, h):
        with self.lock:
            inst = self.instances.get(m[1])
            if inst is None:
                return _err(404, 5, f"Instance {m[1]} not found")
            inst["status"] = "DELETING"
            return 200, self._operation("Delete instance", {"instanceId": m[1]})

    def live(self):
        """Instances not being deleted (tests)."""
        with self.lock:
            return [i for i in self.instances.values() if i["status"] != "DELETING"]

    # -- VPC -----------------------------------------------------------------------------------
    def subnet(self, m, q, body, h):
        found = self.subnets.get(m[1])
        return (200, found) if found else _err(404, 5, f"Subnet {m[1]} not found")

    def group_list(self, m, q, body, h):
        with self.lock:
            return 200, {"securityGroups": [g for g in self.groups.values() if g["folderId"] == q.get("folderId")]}

    def group_create(self, m, q, body, h):
        if body.get("folderId") != self.folder:
            return _err(403, 7, "Permission denied to folder")
        if not _NAME.match(body.get("name") or "") or len(body.get("description") or "") > 256:
            return _err(400, 3, "Illegal argument name or description")
        if body.get("networkId") != "enp-net":
            return _err(400, 3, "Network not found")
        with self.lock:
            if any(g["name"] == body["name"] for g in self.groups.values()):
                return _err(409, 6, "Security group with this name already exists")
            gid = f"enp{next(_ids):017d}"
            self.groups[gid] = {"id": gid, "folderId": body["folderId"], "createdAt": _now(), "name": body["name"],
                                "description": body.get("description", ""), "labels": body.get("labels") or {},
                                "networkId": body["networkId"], "status": "ACTIVE",
                                "rules": [{**r, "id": f"rule-{i}"} for i, r in enumerate(body.get("ruleSpecs") or [])]}
            return 200, self._operation("Create security group", {"securityGroupId": gid})

    def group_delete(self, m, q, body, h):
        with self.lock:
            if m[1] not in self.groups:
                return _err(404, 5, f"Security group {m[1]} not found")
            if any(m[1] in i["networkInterfaces"][0]["securityGroupIds"] for i in self.instances.values()):
                return _err(400, 9, "Security group is in use by a network interface")
            del self.groups[m[1]]
            return 200, self._operation("Delete security group", {"securityGroupId": m[1]})
