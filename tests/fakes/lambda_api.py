"""A local stand-in for Lambda Cloud's public REST API (``/api/v1``), for the calls
Cloudhop's Lambda provider makes, so the provider's real ``requests`` client runs
against it (``c.LambdaProvider.api_endpoint``):

    GET    /api/v1/instance-types                   types, prices, regions with capacity
    POST   /api/v1/instance-operations/launch       {"data": {"instance_ids": [...]}}
    POST   /api/v1/instance-operations/terminate    {"data": {"terminated_instances": [...]}}
    GET    /api/v1/instances                        every instance of the account
    GET    /api/v1/instances/{id}
    GET    /api/v1/firewall-rules                   the account's inbound rules
    GET    /api/v1/firewall-rulesets                rulesets (id, name, region, rules)
    POST   /api/v1/firewall-rulesets
    DELETE /api/v1/firewall-rulesets/{id}           409 while an instance uses it

Bodies are Lambda's JSON: ``{"data": ...}``, errors ``{"error": {"code", "message",
"suggestion"}}`` with Lambda's codes. Every request needs ``Authorization: Bearer
<key>`` (else 401 ``global/invalid-api-key``). Instances go booting -> active on the
first read, terminating -> terminated on the next, and are then dropped from the list.
``script("launch", ...)`` queues answers for the next launches: ``"capacity"``,
``"quota"``, ``429``, ``500``, ``None`` (a normal launch).

Private addresses are documentation addresses (RFC 5737), which nothing answers, so a
hub waiting for a server on such a node waits as for a VM still booting.
"""

from __future__ import annotations

import datetime
import itertools

from tests.fakes.json_http import JSONDouble

_ids = itertools.count(1)

SCRIPTED = {
    "capacity": (400, "instance-operations/launch/insufficient-capacity",
                 "Not enough capacity to fulfill launch request."),
    "quota": (400, "global/quota-exceeded", "Quota exceeded for gpu_8x_h100_sxm5."),
    429: (429, "global/rate-limited", "Too many requests"),
    500: (500, "global/unknown", "Internal server error"),
}

TYPES = {
    "gpu_1x_a10": ("1x A10 (24 GB PCIe)", 75, 30, 200, 1),
    "gpu_1x_h100_pcie": ("1x H100 (80 GB PCIe)", 249, 26, 200, 1),
    "gpu_8x_h100_sxm5": ("8x H100 (80 GB SXM5)", 2392, 208, 1800, 8),
}


def _err(status, code, message):
    return status, {"error": {"code": code, "message": message, "suggestion": "try again"}}


class FakeLambda(JSONDouble):
    def __init__(self, key="lambda-test-key", regions=("us-east-1", "us-west-1")):
        super().__init__()
        self.key = key
        self.regions = list(regions)
        self.instances: dict[str, dict] = {}
        self.rulesets: dict[str, dict] = {}
        self.account_rules = [{"protocol": "tcp", "port_range": [22, 22], "source_network": "0.0.0.0/0",
                               "description": "SSH"}]
        #: instance type -> regions with capacity now (instance-types)
        self.capacity = {t: list(self.regions) for t in TYPES}
        base = "/api/v1"
        self.route("GET", f"{base}/instance-types", self.instance_types)
        self.route("POST", f"{base}/instance-operations/launch", self.launch)
        self.route("POST", f"{base}/instance-operations/terminate", self.terminate)
        self.route("GET", f"{base}/instances", self.list)
        self.route("GET", f"{base}/instances/([^/]+)", self.get)
        self.route("GET", f"{base}/firewall-rules", lambda *a: (200, {"data": self.account_rules}))
        self.route("GET", f"{base}/firewall-rulesets", self.ruleset_list)
        self.route("POST", f"{base}/firewall-rulesets", self.ruleset_create)
        self.route("DELETE", f"{base}/firewall-rulesets/([^/]+)", self.ruleset_delete)

    def authorize(self, headers):
        if headers.get("authorization") != f"Bearer {self.key}":
            return _err(401, "global/invalid-api-key", "API key was invalid, expired, or deleted.")
        return None

    # -- instance types --------------------------------------------------------------------
    def instance_types(self, m, q, body, h):
        data = {}
        for name, (desc, cents, vcpus, mem, gpus) in TYPES.items():
            data[name] = {
                "instance_type": {"name": name, "description": desc, "gpu_description": desc,
                                  "price_cents_per_hour": cents,
                                  "specs": {"vcpus": vcpus, "memory_gib": mem, "storage_gib": 512, "gpus": gpus}},
                "regions_with_capacity_available": [{"name": r, "description": r} for r in self.capacity.get(name, [])],
            }
        return 200, {"data": data}

    # -- instances -----------------------------------------------------------------------
    def _view(self, inst):
        """What a read shows, moving the instance one state on (as Lambda's do)."""
        view = dict(inst)
        if inst["status"] == "booting":
            inst["status"] = "active"
        elif inst["status"] == "terminating":
            inst["status"] = "terminated"
        elif inst["status"] == "terminated":
            self.instances.pop(inst["id"], None)
        return view

    def launch(self, m, q, body, h):
        answer = self.next_answer("launch")
        if answer is not None:
            return _err(*SCRIPTED[answer])
        missing = [k for k in ("region_name", "instance_type_name", "ssh_key_names") if not body.get(k)]
        if missing:
            return _err(400, "global/invalid-parameters", f"missing {missing[0]}")
        if body["instance_type_name"] not in TYPES:
            return _err(404, "global/object-does-not-exist", "Specified instance type does not exist.")
        if len(body.get("name") or "") > 64:
            return _err(400, "global/invalid-parameters", "name is longer than 64 characters")
        for rs in body.get("firewall_rulesets") or []:
            if rs.get("id") not in self.rulesets:
                return _err(404, "global/object-does-not-exist", f"firewall ruleset {rs.get('id')} not found")
        with self.lock:
            n = next(_ids)
            inst_id = f"{n:032x}"
            self.instances[inst_id] = {
                "id": inst_id,
                "name": body.get("name"),
                "ip": f"203.0.113.{n % 250 + 1}",
                "private_ip": f"198.51.100.{n % 250 + 1}",
                "status": "booting",
                "ssh_key_names": body["ssh_key_names"],
                "file_system_names": [],
                "region": {"name": body["region_name"], "description": body["region_name"]},
                "instance_type": {"name": body["instance_type_name"],
                                  "price_cents_per_hour": TYPES[body["instance_type_name"]][1]},
                "hostname": f"{n}-fake.cloud.lambda.ai",
                "jupyter_token": "lambda-jupyter-token",
                "jupyter_url": f"https://jupyter-{n}.lambdaspaces.com/?token=lambda-jupyter-token",
                "_user_data": body.get("user_data", ""),
                "_firewall_rulesets": [rs["id"] for rs in body.get("firewall_rulesets") or []],
            }
        return 200, {"data": {"instance_ids": [inst_id]}}

    @staticmethod
    def _public(inst):
        return {k: v for k, v in inst.items() if not k.startswith("_")}

    def list(self, m, q, body, h):
        answer = self.next_answer("list")
        if answer is not None:
            return _err(*SCRIPTED[answer])
        with self.lock:
            return 200, {"data": [self._public(self._view(i)) for i in list(self.instances.values())]}

    def get(self, m, q, body, h):
        with self.lock:
            inst = self.instances.get(m[1])
            if inst is None:
                return _err(404, "global/object-does-not-exist", "Specified instance does not exist.")
            return 200, {"data": self._public(self._view(inst))}

    def terminate(self, m, q, body, h):
        with self.lock:
            ids = body.get("instance_ids") or []
            missing = [i for i in ids if i not in self.instances]
            if missing:
                return _err(404, "global/object-does-not-exist", "Specified instance does not exist.")
            out = []
            for i in ids:
                inst = self.instances[i]
                if inst["status"] != "terminated":
                    inst["status"] = "terminating"
                out.append(self._public(inst))
            return 200, {"data": {"terminated_instances": out}}

    def live(self):
        """Instances not terminated (tests)."""
        with self.lock:
            return [i for i in self.instances.values() if i["status"] not in ("terminating", "terminated")]

    # -- firewall rulesets -------------------------------------------------------------------
    def ruleset_list(self, m, q, body, h):
        with self.lock:
            return 200, {"data": list(self.rulesets.values())}

    def ruleset_create(self, m, q, body, h):
        if not body.get("name") or not body.get("region"):
            return _err(400, "global/invalid-parameters", "name and region are required")
        with self.lock:
            rid = f"rs-{next(_ids):08d}"
            self.rulesets[rid] = {"id": rid, "name": body["name"], "region": {"name": body["region"]},
                                  "rules": body.get("rules") or [],
                                  "created": datetime.datetime.now(datetime.timezone.utc).isoformat()}
            return 200, {"data": self.rulesets[rid]}

    def ruleset_delete(self, m, q, body, h):
        with self.lock:
            if m[1] not in self.rulesets:
                return _err(404, "global/object-does-not-exist", "Specified firewall ruleset does not exist.")
            if any(m[1] in i["_firewall_rulesets"] for i in self.instances.values() if i["status"] != "terminated"):
                return _err(409, "firewall-rulesets/in-use", "The firewall ruleset is used by an instance.")
            del self.rulesets[m[1]]
            return 200, {"data": {}}
