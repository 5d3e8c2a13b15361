"""A local stand-in for Azure Resource Manager, for the calls Cloudhop's Azure provider
makes, so the real ``azure-mgmt-compute`` and ``azure-mgmt-network`` clients run
against it (``c.AzureProvider.api_endpoint``). Paths are ARM's, under
``/subscriptions/{sub}/resourceGroups/{rg}/providers/``:

    Microsoft.Compute/virtualMachines                 GET (list, paged by nextLink)
    Microsoft.Compute/virtualMachines/{name}          PUT (long-running), GET, DELETE (long-running)
    Microsoft.Network/networkInterfaces/{name}        GET (made by its VM)
    Microsoft.Network/publicIPAddresses/{name}        GET (made by its VM)
    Microsoft.Network/networkSecurityGroups[/{name}]  GET list, PUT, GET, DELETE
    Microsoft.Network/applicationSecurityGroups/{name} PUT, DELETE
    /subscriptions/{sub}/providers/Microsoft.Compute/skus   Resource SKUs

and ``/operations/{id}``, the ``Azure-AsyncOperation`` status URL of a create or delete.
Bodies are ARM's JSON; errors ``{"error": {"code", "message"}}``. A VM is ``Creating``
until its operation is read (then ``Succeeded``), ``Deleting`` after a delete until it
is read once more or its operation is read, then gone; a VM deleted with ``deleteOption: Delete`` takes its NIC
and public IP along. ``script("create", ...)`` queues the next creates' outcomes:
``"sku"`` (409 SkuNotAvailable at once), ``"allocation"`` (the operation fails with
AllocationFailed and the VM stays, ``Failed``, as Azure leaves it), ``"quota"`` (409
OperationNotAllowed naming the quota), ``"auth"`` (401 AuthenticationFailed), ``429``/``500``, ``None``. A network security
group on a NIC that still exists cannot be deleted (400 InUseNetworkSecurityGroupCannotBeDeleted).

Private addresses are documentation addresses (RFC 5737), which nothing answers, so a
hub waiting for a server on such a node waits as for a VM still booting.
"""

from __future__ import annotations

import datetime
import itertools

from tests.fakes.json_http import JSONDouble

_ids = itertools.count(1)
PAGE = 2

SCRIPTED = {
    "sku": (409, "SkuNotAvailable", "The requested VM size for resource 'Following SKUs have failed for "
            "Capacity Restrictions: Standard_NC4as_T4_v3' is currently not available in location 'eastus'."),
    "quota": (409, "OperationNotAllowed", "Operation could not be completed as it results in exceeding "
              "approved standardNCASv3_T4 Family Cores quota."),
    "auth": (401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing."),
    429: (429, "TooManyRequests", "Too many requests"),
    500: (500, "InternalServerError", "Internal error"),
}


def _err(status, code, message):
    return status, {"error": {"code": code, "message": message}}


class FakeAzure(JSONDouble):
    def __init__(self, subscription="sub-test", group="rg-test"):
        super().__init__()
        self.sub, self.group = subscription, group
        self.vms: dict[str, dict] = {}
        self.nics: dict[str, dict] = {}
        self.pips: dict[str, dict] = {}
        self.nsgs: dict[str, dict] = {}
        self.asgs: dict[str, dict] = {}
        self.operations: dict[str, dict] = {}
        self.skus: list[dict] = []
        self.url = ""
        rg = f"/subscriptions/{subscription}/resourceGroups/{group}/providers"
        self.rg = rg
        self.route("GET", f"{rg}/Microsoft.Compute/virtualMachines", self.vm_list)
        self.route("PUT", f"{rg}/Microsoft.Compute/virtualMachines/([^/]+)", self.vm_put)
        self.route("GET", f"{rg}/Microsoft.Compute/virtualMachines/([^/]+)", self.vm_get)
        self.route("DELETE", f"{rg}/Microsoft.Compute/virtualMachines/([^/]+)", self.vm_delete)
        self.route("GET", f"{rg}/Microsoft.Network/networkInterfaces/([^/]+)", lambda m, *a: self._get(self.nics, m[1]))
        self.route("GET", f"{rg}/Microsoft.Network/publicIPAddresses/([^/]+)", lambda m, *a: self._get(self.pips, m[1]))
        self.route("GET", f"{rg}/Microsoft.Network/networkSecurityGroups",
                   lambda *a: (200, {"value": list(self.nsgs.values())}))
        self.route("PUT", f"{rg}/Microsoft.Network/networkSecurityGroups/([^/]+)", self.nsg_put)
        self.route("GET", f"{rg}/Microsoft.Network/networkSecurityGroups/([^/]+)", lambda m, *a: self._get(self.nsgs, m[1]))
        self.route("DELETE", f"{rg}/Microsoft.Network/networkSecurityGroups/([^/]+)", self.nsg_delete)
        self.route("PUT", f"{rg}/Microsoft.Network/applicationSecurityGroups/([^/]+)", self.asg_put)
        self.route("DELETE", f"{rg}/Microsoft.Network/applicationSecurityGroups/([^/]+)", self.asg_delete)
        self.route("GET", f"/subscriptions/{subscription}/providers/Microsoft.Compute/skus",
                   lambda *a: (200, {"value": self.skus}))
        self.route("GET", "/operations/([^/]+)", self.operation)

    def start(self) -> str:
        self.url = super().start()
        return self.url

    # -- helpers ---------------------------------------------------------------------------
    def _id(self, kind, name):
        return f"{self.rg}/{kind}/{name}"

    @staticmethod
    def _get(table, name):
        if name not in table:
            return _err(404, "ResourceNotFound", f"The Resource '{name}' was not found.")
        return 200, table[name]

    def _operation(self, **state):
        op = f"op-{next(_ids)}"
        self.operations[op] = state
        return {"Azure-AsyncOperation": f"{self.url}/operations/{op}?api-version=2024-07-01", "Retry-After": "0"}

    def operation(self, m, q, body, h):
        with self.lock:
            op = self.operations.get(m[1])
            if op is None:
                return _err(404, "NotFound", "no such operation")
            vm = self.vms.get(op.get("vm"))
            if op.get("fail"):
                if vm is not None:
                    vm["properties"]["provisioningState"] = "Failed"
                return 200, {"status": "Failed", "error": {"code": op["fail"][0], "message": op["fail"][1]}}
            if op.get("kind") == "create" and vm is not None:
                vm["properties"]["provisioningState"] = "Succeeded"
            if op.get("kind") == "delete" and vm is not None:  # done: the VM and its NIC are gone
                self._remove(op["vm"])
            return 200, {"status": "Succeeded"}

    # -- virtual machines ----------------------------------------------------------------------
    def vm_list(self, m, q, body, h):
        with self.lock:
            names = sorted(self.vms)
            start = int(q.get("$skiptoken", 0))
            page = [self._read(n) for n in names[start:start + PAGE]]
            out = {"value": [v for v in page if v is not None]}
            if start + PAGE < len(names):
                out["nextLink"] = (f"{self.url}{self.rg}/Microsoft.Compute/virtualMachines"
                                   f"?api-version=2024-07-01&$skiptoken={start + PAGE}")
            return 200, out

    def _read(self, name):
        """A VM as a read shows it; one being deleted is gone after this read."""
        vm = self.vms.get(name)
        if vm is None:
            return None
        if vm["properties"]["provisioningState"] == "Deleting":
            if vm.get("_seen_deleting"):
                self._remove(name)
                return None
            vm["_seen_deleting"] = True
        return {k: v for k, v in vm.items() if not k.startswith("_")}

    def _remove(self, name):
        vm = self.vms.pop(name)
        for nic in vm["properties"]["networkProfile"].get("networkInterfaceConfigurations") or []:
            self.nics.pop(nic["name"], None)
            for ipc in nic["properties"].get("ipConfigurations") or []:
                pip = ipc["properties"].get("publicIPAddressConfiguration")
                if pip:
                    self.pips.pop(pip["name"], None)

    def vm_put(self, m, q, body, h):
        answer = self.next_answer("create")
        if answer in SCRIPTED:
            return _err(*SCRIPTED[answer])
        name = m[1]
        props = body.get("properties") or {}
        for need in ("hardwareProfile", "storageProfile", "osProfile", "networkProfile"):
            if need not in props:
                return _err(400, "InvalidParameter", f"Required parameter '{need}' is missing (null).")
        with self.lock:
            if name in self.vms:  # a PUT of an existing VM updates it
                return 200, self._read(name)
            for nsg in [c["properties"].get("networkSecurityGroup", {}).get("id")
                        for c in props["networkProfile"]["networkInterfaceConfigurations"]]:
                if nsg and nsg.rsplit("/", 1)[-1] not in self.nsgs:
                    return _err(404, "ResourceNotFound", f"Network security group {nsg} was not found.")
            n = next(_ids)
            vm = {
                "id": self._id("Microsoft.Compute/virtualMachines", name), "name": name,
                "type": "Microsoft.Compute/virtualMachines", "location": body["location"],
                "tags": body.get("tags") or {}, "zones": body.get("zones"),
                "properties": dict(props, provisioningState="Creating", vmId=f"vm-{n}",
                                   timeCreated=datetime.datetime.now(datetime.timezone.utc).isoformat()),
            }
            vm["properties"]["osProfile"] = dict(props["osProfile"])
            self.vms[name] = vm
            for nic in props["networkProfile"]["networkInterfaceConfigurations"]:
                ipcs = []
                for ipc in nic["properties"]["ipConfigurations"]:
                    out = {"name": ipc["name"], "properties": {"privateIPAddress": f"192.0.2.{n % 250 + 1}",
                           "subnet": ipc["properties"]["subnet"],
                           "applicationSecurityGroups": ipc["properties"].get("applicationSecurityGroups")}}
                    pip = ipc["properties"].get("publicIPAddressConfiguration")
                    if pip:
                        self.pips[pip["name"]] = {"id": self._id("Microsoft.Network/publicIPAddresses", pip["name"]),
                                                  "name": pip["name"], "location": body["location"],
                                                  "properties": {"ipAddress": f"20.0.0.{n % 250 + 1}"}}
                        out["properties"]["publicIPAddress"] = {"id": self.pips[pip["name"]]["id"]}
                    ipcs.append(out)
                self.nics[nic["name"]] = {
                    "id": self._id("Microsoft.Network/networkInterfaces", nic["name"]), "name": nic["name"],
                    "location": body["location"],
                    "properties": {"ipConfigurations": ipcs,
                                   "networkSecurityGroup": nic["properties"].get("networkSecurityGroup")}}
            fail = SCRIPTED_ASYNC.get(answer)
            headers = self._operation(kind="create", vm=name, fail=fail)
            return 201, {k: v for k, v in vm.items() if not k.startswith("_")}, headers

    def vm_get(self, m, q, body, h):
        with self.lock:
            vm = self._read(m[1])
            if vm is None:
                return _err(404, "ResourceNotFound", f"The Resource 'Microsoft.Compute/virtualMachines/{m[1]}' "
                            f"under resource group '{self.group}' was not found.")
            return 200, vm

    def vm_delete(self, m, q, body, h):
        with self.lock:
            vm = self.vms.get(m[1])
            if vm is None:
                return 204, None
            vm["properties"]["provisioningState"] = "Deleting"
            return 202, None, self._operation(kind="delete", vm=m[1])

    def live(self):
        with self.lock:
            return [v for v in self.vms.values() if v["properties"]["provisioningState"] != "Deleting"]

    # -- security groups -----------------------------------------------------------------------
    def nsg_put(self, m, q, body, h):
        with self.lock:
            name = m[1]
            self.nsgs[name] = {"id": self._id("Microsoft.Network/networkSecurityGroups", name), "name": name,
                               "location": body.get("location"), "tags": body.get("tags") or {},
                               "properties": dict(body.get("properties") or {}, provisioningState="Succeeded")}
            return 201, self.nsgs[name]

    def nsg_delete(self, m, q, body, h):
        with self.lock:
            nsg = self.nsgs.get(m[1])
            if nsg is None:
                return 204, None
            if any((nic["properties"].get("networkSecurityGroup") or {}).get("id") == nsg["id"]
                   for nic in self.nics.values()):
                return _err(400, "InUseNetworkSecurityGroupCannotBeDeleted",
                            f"Network security group {nsg['id']} cannot be deleted because it is in use.")
            del self.nsgs[m[1]]
            return 200, None

    def asg_put(self, m, q, body, h):
        with self.lock:
            name = m[1]
            self.asgs[name] = {"id": self._id("Microsoft.Network/applicationSecurityGroups", name), "name": name,
                               "location": body.get("location"), "tags": body.get("tags") or {},
                               "properties": {"provisioningState": "Succeeded"}}
            return 201, self.asgs[name]

    def asg_delete(self, m, q, body, h):
        with self.lock:
            self.asgs.pop(m[1], None)
            return 200, None


SCRIPTED_ASYNC = {
    "allocation": ("AllocationFailed", "Allocation failed. We do not have sufficient capacity for the "
                   "requested VM size in this region."),
}
