"""Azure: GPU VMs through ``azure-mgmt-compute`` and ``azure-mgmt-network`` with
``azure-identity``'s default credential chain (environment, workload identity, managed
identity, Azure CLI); the only module that imports them.

Every node is one VM in ``c.AzureProvider.resource_group`` that creates its own NIC and
public IP (``networkInterfaceConfigurations``), all with ``deleteOption: Delete``, so
deleting the VM deletes its NIC, public IP and OS disk: nothing is left to sweep.
Node ids are ``"<location>/<VM name>"``; the name is a hash of the request id, so a
repeated launch is the same VM (and a ``PUT`` of it is idempotent anyway). Tags are
Azure tags on the VM. Spot VMs use priority ``Spot`` with eviction policy ``Delete``.
The server starts from cloud-init in ``osProfile.customData``.

Capacity errors (``SkuNotAvailable``, ``AllocationFailed``, ``ZonalAllocationFailed``,
``OverconstrainedAllocationRequest``) come back from the create or its long-running
operation and are raised at once; quota errors (``QuotaExceeded``, and
``OperationNotAllowed`` naming a quota) likewise; a refused or missing credential is a
:class:`~.base.CredentialsError`; 429 and 5xx are retried.

The SDK's models (azure-mgmt-compute 39 and azure-mgmt-network 33 on) are mappings of
ARM's JSON, so bodies are written and answers read in ARM's own spelling
(``vm["properties"]["provisioningState"]``), as Azure's REST reference shows them.

The nodes of a Ray cluster share an application security group of their own and a
network security group on their NICs (:class:`AzureRuleStore`): Ray's ports are open
from the group to the group, and closed to the rest of the virtual network (which
Azure's default ``AllowVnetInBound`` would otherwise admit). Both go after the
cluster's last VM.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from types import SimpleNamespace

from traitlets import Bool, Float, Integer, TraitError, Unicode, validate

from ..validate import check_number
from .base import (
    FAILED,
    PENDING,
    RUNNING,
    STOPPING,
    TAG_HUB,
    TAG_REQUEST,
    TAG_SERVER,
    TAG_USER,
    CapacityError,
    CredentialsError,
    Node,
    ProviderError,
    QuotaError,
)
from .cloud import CloudProvider, Retry, epoch_of, split_id
from .ray_firewall import CLUSTER_TAG, DESCRIPTION, PORTS, RayRule, RuleInUse, RuleStore, cluster_of, rule_name

INSTALL_HINT = "the Azure provider needs azure-mgmt-compute, azure-mgmt-network and azure-identity"
SCOPE = "https://management.azure.com/.default"
#: when a Ray rule was made (Azure's network security groups say nothing of it)
TAG_CREATED = "cloudhop-created"

CAPACITY_CODES = ("SkuNotAvailable", "AllocationFailed", "ZonalAllocationFailed",
                  "OverconstrainedAllocationRequest", "OverconstrainedZonalAllocationRequest")
QUOTA_CODES = ("QuotaExceeded", "OperationNotAllowed")
CREDENTIAL_CODES = ("AuthorizationFailed", "InvalidAuthenticationToken", "AuthenticationFailed",
                    "LinkedAuthorizationFailed")

_STATES = {
    "Creating": PENDING,
    "Updating": PENDING,
    "Migrating": PENDING,
    "Succeeded": RUNNING,
    "Deleting": STOPPING,
    "Failed": FAILED,
    "Canceled": FAILED,
}


def _sdk():
    """The SDK modules, imported on first use (a missing SDK is a reason, not a crash)."""
    try:
        from azure.core import exceptions
        from azure.core.pipeline.policies import SansIOHTTPPolicy
        from azure.identity import DefaultAzureCredential
        from azure.mgmt.compute import ComputeManagementClient
        from azure.mgmt.network import NetworkManagementClient
    except ImportError as err:  # pragma: no cover - depends on the install
        raise CredentialsError(INSTALL_HINT) from err
    return SimpleNamespace(errors=exceptions, NoAuth=SansIOHTTPPolicy, DefaultCredential=DefaultAzureCredential,
                           Compute=ComputeManagementClient, Network=NetworkManagementClient)


def vm_name(request_id: str) -> str:
    """The VM name of a request: stable, so a repeated create is the same VM."""
    return "cloudhop-" + hashlib.sha256(request_id.encode()).hexdigest()[:20]


def _throwaway_ssh_key() -> str:
    """An OpenSSH public key whose private half is dropped at once: Azure wants a key or a
    password on every Linux VM, and Cloudhop logs in to none."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


class _StaticToken:
    """A credential for a local test server only (``anonymous_credentials``)."""

    def get_token(self, *scopes, **kwargs):
        from azure.core.credentials import AccessToken

        return AccessToken("anonymous", int(time.time()) + 3600)


class AzureProvider(CloudProvider):
    """GPU VMs on Azure. See :class:`~.base.Provider` for the contract."""

    name = "azure"
    display_name = "Azure"
    lists_everywhere = True  # one list covers the resource group, whatever the location

    subscription_id = Unicode(
        "", help="Subscription the VMs are created in. Empty: $AZURE_SUBSCRIPTION_ID."
    ).tag(config=True)

    resource_group = Unicode(
        "", help="Resource group every VM, NIC, public IP and Ray security group is created "
        "in (required). Its VMs may be in any location."
    ).tag(config=True)

    subnet_id = Unicode(
        "", help="Resource id of the subnet the NICs join (required: Azure has no default "
        "network), ``/subscriptions/.../virtualNetworks/<vnet>/subnets/<subnet>``. Its network "
        "security group must admit the hub on the server port."
    ).tag(config=True)

    image = Unicode(
        "microsoft-dsvm:ubuntu-hpc:2204:latest",
        help="Marketplace image URN (publisher:offer:sku:version) with the NVIDIA driver "
        "and cloud-init, or an image resource id.",
    ).tag(config=True)

    admin_username = Unicode("cloudhop", help="The VMs' admin user (Cloudhop never logs in).").tag(config=True)

    ssh_public_key = Unicode(
        "", help="OpenSSH public key for the admin user. Empty: a throwaway key nobody holds."
    ).tag(config=True)

    disk_gb = Integer(128, help="OS disk size (GB) of every VM.").tag(config=True)

    api_endpoint = Unicode(
        "", help="Azure Resource Manager endpoint override (a sovereign cloud, or a local "
        "test server). Empty: the public cloud's."
    ).tag(config=True)

    anonymous_credentials = Bool(
        False, help="Send no credentials (only for a local test server set in api_endpoint)."
    ).tag(config=True)

    poll_seconds = Float(
        5.0, help="Seconds between polls of a long-running operation (a VM create)."
    ).tag(config=True)

    @validate("disk_gb")
    def _valid_disk(self, proposal):
        return check_number(proposal, minimum=30, integer=True, unit="GB")

    @validate("subnet_id")
    def _valid_subnet(self, proposal):
        value = proposal["value"].strip()
        if value and not (value.lower().startswith("/subscriptions/") and "/subnets/" in value.lower()):
            raise TraitError(f"c.AzureProvider.subnet_id must be a subnet's resource id "
                             f"('/subscriptions/.../virtualNetworks/<vnet>/subnets/<name>'), not {value!r}")
        return value

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._clients: dict[str, object] = {}
        self._credential = None
        self._ips: dict[str, tuple[str | None, str | None]] = {}
        self._key = None

    # -- clients -------------------------------------------------------------------------
    def subscription(self) -> str:
        sub = self.subscription_id or os.environ.get("AZURE_SUBSCRIPTION_ID", "")
        if not sub:
            raise CredentialsError("no Azure credentials: no subscription (set "
                                   "c.AzureProvider.subscription_id or $AZURE_SUBSCRIPTION_ID)")
        return sub

    def client(self, kind: str = "compute"):
        """The ``compute`` or ``network`` management client."""
        if kind not in self._clients:
            sdk = _sdk()
            extra = {}
            if self.api_endpoint:
                extra["base_url"] = self.api_endpoint
            if self.anonymous_credentials:
                credential = _StaticToken()
                extra["authentication_policy"] = sdk.NoAuth()
            else:
                if self._credential is None:
                    self._credential = sdk.DefaultCredential()
                credential = self._credential
            cls = sdk.Compute if kind == "compute" else sdk.Network
            self._clients[kind] = cls(credential, self.subscription(), retry_total=3,
                                      retry_backoff_factor=self.retry_base_delay, **extra)
        return self._clients[kind]

    # -- errors --------------------------------------------------------------------------
    @staticmethod
    def _error_text(err) -> str:
        """What an SDK error says, with the answer's body (where a long-running
        operation's error code is)."""
        parts = [str(err)]
        response = getattr(err, "response", None)
        if response is not None:
            try:
                parts.append(response.text())
            except Exception:  # noqa: BLE001 - the message alone then
                pass
        return " ".join(parts)

    def _classify(self, err):
        sdk = _sdk()
        exceptions = sdk.errors
        try:
            from azure.identity import CredentialUnavailableError
        except ImportError:  # pragma: no cover
            CredentialUnavailableError = ()
        if CredentialUnavailableError and isinstance(err, CredentialUnavailableError):
            return CredentialsError("no Azure credentials found (environment, workload or managed "
                                    "identity, Azure CLI)")
        if isinstance(err, exceptions.ClientAuthenticationError):
            return CredentialsError("Azure refused the hub's credentials")
        if isinstance(err, exceptions.ServiceRequestError):
            return Retry(err)
        if not isinstance(err, exceptions.HttpResponseError):
            return err
        text = self._error_text(err)
        code = next((c for c in CAPACITY_CODES + QUOTA_CODES + CREDENTIAL_CODES if c in text),
                    getattr(getattr(err, "error", None), "code", None) or str(err.status_code))
        message = f"Azure {code}: {(getattr(err, 'message', '') or str(err)).splitlines()[0]}"
        if code in CAPACITY_CODES:
            return CapacityError(message)
        if code == "QuotaExceeded" or (code == "OperationNotAllowed" and "quota" in text.lower()):
            return QuotaError(message)
        if code in CREDENTIAL_CODES or err.status_code in (401, 403):
            return CredentialsError(f"Azure {code}: the hub's credentials were refused")
        if err.status_code == 429 or (err.status_code or 0) >= 500:
            return Retry(err)
        return ProviderError(message)

    # -- payloads ------------------------------------------------------------------------
    def _image_reference(self) -> dict:
        if self.image.startswith("/"):
            return {"id": self.image}
        publisher, offer, sku, version = (self.image.split(":") + ["latest"] * 4)[:4]
        return {"publisher": publisher, "offer": offer, "sku": sku, "version": version}

    def vm_body(self, spec, tags: dict, user_data: str, nsg: str | None = None) -> dict:
        """The ``virtualMachines`` PUT body (ARM's JSON) of a spec; ``nsg``: the Ray
        cluster's network security group id (pure, but for a throwaway key)."""
        if not self.ssh_public_key and self._key is None:
            self._key = _throwaway_ssh_key()
        name = vm_name(spec.request_id)
        ip_config = {"name": "ipconfig", "properties": {
            "primary": True,
            "subnet": {"id": self.subnet_id},
            "privateIPAddressVersion": "IPv4",
        }}
        if self.public_ip:
            ip_config["properties"]["publicIPAddressConfiguration"] = {
                "name": f"{name}-ip", "sku": {"name": "Standard"},
                "properties": {"publicIPAllocationMethod": "Static", "deleteOption": "Delete"},
            }
        nic = {"name": f"{name}-nic", "properties": {
            "primary": True, "deleteOption": "Delete", "ipConfigurations": [ip_config]}}
        if nsg:
            nic["properties"]["networkSecurityGroup"] = {"id": nsg}
            ip_config["properties"]["applicationSecurityGroups"] = [{"id": asg_of(nsg)}]
        props = {
            "hardwareProfile": {"vmSize": spec.offer.instance_type},
            "storageProfile": {
                "imageReference": self._image_reference(),
                "osDisk": {"createOption": "FromImage", "deleteOption": "Delete", "diskSizeGB": self.disk_gb,
                           "managedDisk": {"storageAccountType": "Premium_LRS"}},
            },
            "osProfile": {
                "computerName": name,
                "adminUsername": self.admin_username,
                "customData": base64.b64encode(user_data.encode()).decode(),
                "linuxConfiguration": {
                    "disablePasswordAuthentication": True,
                    "ssh": {"publicKeys": [{"path": f"/home/{self.admin_username}/.ssh/authorized_keys",
                                            "keyData": self.ssh_public_key or self._key}]},
                },
            },
            "networkProfile": {"networkApiVersion": "2020-11-01", "networkInterfaceConfigurations": [nic]},
        }
        if spec.spot:
            props.update(priority="Spot", evictionPolicy="Delete", billingProfile={"maxPrice": -1})
        body = {"location": spec.offer.region, "tags": dict(tags), "properties": props}
        zone = spec.zone or (spec.offer.zones[0] if spec.offer.zones else None)
        if zone:
            body["zones"] = [zone]
        return body

    # -- blocking calls ------------------------------------------------------------------
    def _addresses(self, vm) -> tuple[str | None, str | None]:
        """(private, public) IP of a running VM: its NIC (and public IP) read once."""
        name = vm["name"]
        if name not in self._ips:
            network = self.client("network")
            nic = network.network_interfaces.get(self.resource_group, f"{name}-nic")
            ipc = (nic["properties"].get("ipConfigurations") or [{}])[0].get("properties", {})
            private, public = ipc.get("privateIPAddress"), None
            if ipc.get("publicIPAddress"):
                pip = network.public_ip_addresses.get(self.resource_group, f"{name}-ip")
                public = pip["properties"].get("ipAddress")
            self._ips[name] = (private, public)
        return self._ips[name]

    def _node(self, vm) -> Node:
        props = vm.get("properties") or {}
        state = _STATES.get(props.get("provisioningState"), FAILED)
        tags = dict(vm.get("tags") or {})
        private = public = None
        if state == RUNNING:
            private, public = self._addresses(vm)
        return self.vm_node(
            where=vm.get("location", ""),
            native_id=vm["name"],
            state=state,
            tags=tags,
            private=private,
            public=public,
            info={
                "instance_type": (props.get("hardwareProfile") or {}).get("vmSize"),
                "zone": (vm.get("zones") or [None])[0],
                "spot": props.get("priority") == "Spot",
                "launched_at": epoch_of(props.get("timeCreated")),
            },
            creating="Azure is creating the VM",
            status=props.get("provisioningState", ""),
        )

    def _vms(self) -> list:
        return list(self.client().virtual_machines.list(self.resource_group))

    def _blocking_find(self, where, tags):
        out = []
        for vm in self._vms():
            have = vm.get("tags") or {}
            if all(have.get(k) == str(v) for k, v in tags.items()):
                node = self._node(vm)
                # a VM being deleted is on its way out (Azure lists it until it is gone)
                if node.state != STOPPING and (where in ("*", None) or node.region == where):
                    out.append(node)
        return out

    def _blocking_describe(self, where):
        return {n.id: n for n in (self._node(vm) for vm in self._vms() if TAG_REQUEST in (vm.get("tags") or {}))}

    def _blocking_create_node(self, spec, tags, user_data, rule):
        """Create the VM and wait for its operation, where Azure reports capacity. A VM
        whose create failed stays behind in state ``Failed`` (costing nothing, but holding
        its NIC, public IP and a Ray group): it is deleted before the error goes on."""
        exceptions = _sdk().errors
        name = vm_name(spec.request_id)
        compute = self.client()
        body = self.vm_body(spec, tags, user_data, rule)
        try:
            poller = compute.virtual_machines.begin_create_or_update(
                self.resource_group, name, body, polling_interval=self.poll_seconds,
                retry_total=0)  # capacity must reach failover at once; launch() retries the rest
            return self._node(poller.result())
        except exceptions.HttpResponseError:
            try:
                failed = compute.virtual_machines.get(self.resource_group, name)
                if (failed.get("properties") or {}).get("provisioningState") == "Failed":
                    compute.virtual_machines.begin_delete(self.resource_group, name,
                                                          polling_interval=self.poll_seconds).result()
            except exceptions.HttpResponseError as cleanup:
                if not isinstance(cleanup, exceptions.ResourceNotFoundError):
                    self.log.warning("azure: could not delete the failed VM %s: %s", name, cleanup)
            raise

    def _blocking_terminate(self, node_id):
        exceptions = _sdk().errors
        _, name = split_id(node_id)
        compute = self.client()
        try:
            compute.virtual_machines.begin_delete(self.resource_group, name, polling_interval=self.poll_seconds)
            vm = compute.virtual_machines.get(self.resource_group, name)
        except exceptions.ResourceNotFoundError:
            return None
        self._ips.pop(name, None)
        return self._node(vm)

    def _blocking_check(self):
        try:
            self.subscription()
        except CredentialsError as err:
            return err.message
        if not self.resource_group:
            return "Azure needs a resource group: set c.AzureProvider.resource_group"
        if not self.subnet_id:
            return "Azure needs a subnet: set c.AzureProvider.subnet_id"
        if not self.anonymous_credentials:
            try:
                if self._credential is None:
                    self._credential = _sdk().DefaultCredential()
                self._credential.get_token(SCOPE)
            except Exception as err:  # noqa: BLE001 - a reason, never a crash
                mapped = self._classify(err)
                return mapped.message if isinstance(mapped, ProviderError) else \
                    f"no usable Azure credentials ({type(err).__name__})"
        return None

    def _blocking_check_catalog(self, offers):
        """The VM sizes each location offers this subscription, from Resource SKUs,
        leaving out those restricted for it (``NotAvailableForSubscription``)."""
        sizes: dict[str, set] = {}
        for sku in self.client().resource_skus.list():
            if sku.get("resourceType") != "virtualMachines":
                continue
            blocked = {loc.lower() for r in sku.get("restrictions") or [] if r.get("type") == "Location"
                       for loc in (r.get("restrictionInfo") or {}).get("locations") or r.get("values") or []}
            for loc in sku.get("locations") or []:
                if loc.lower() not in blocked:
                    sizes.setdefault(loc.lower(), set()).add(sku.get("name"))
        return [(o.instance_type, o.region, ()) for o in offers if o.instance_type in sizes.get(o.region.lower(), ())]

    # -- Ray firewall: an application and a network security group per cluster --------------
    def _rule_store(self):
        return AzureRuleStore(client=self.client, group=lambda: self.resource_group,
                              poll=lambda: self.poll_seconds, log=self.log)


def asg_of(nsg_id: str) -> str:
    """The application security group id beside a Ray cluster's network security group
    (same name, same resource group)."""
    return nsg_id.replace("/networkSecurityGroups/", "/applicationSecurityGroups/")


class AzureRuleStore(RuleStore):
    """A Ray cluster's rule on Azure (see :class:`~.ray_firewall.RuleStore`): an
    application security group the cluster's NICs join, and a network security group on
    those NICs, both named :func:`~.ray_firewall.rule_name` and tagged with the hub and
    cluster. The NSG admits Ray's ports from the ASG to the ASG and denies them from the
    rest of the virtual network; everything else stays at Azure's defaults (the VNet,
    the hub included, reaches the server port). ``where`` is the location."""

    def __init__(self, *, client, group, poll, log):
        self.client = client
        self.group = group
        self.poll = poll
        self.log = log

    def ensure(self, where, tags):
        cluster = cluster_of(tags)
        name = rule_name(cluster)
        network = self.client("network")
        owner = {k: str(v) for k, v in tags.items() if k in (TAG_HUB, TAG_USER, TAG_SERVER, CLUSTER_TAG)}
        owner[TAG_CREATED] = str(int(time.time()))
        exceptions = _sdk().errors
        try:
            return network.network_security_groups.get(self.group(), name)["id"]
        except exceptions.ResourceNotFoundError:
            pass
        asg = network.application_security_groups.begin_create_or_update(
            self.group(), name, {"location": where, "tags": owner}, polling_interval=self.poll()).result()
        ports = f"{PORTS[0]}-{PORTS[1]}"
        nsg = network.network_security_groups.begin_create_or_update(self.group(), name, {
            "location": where, "tags": owner,
            "properties": {"securityRules": [
                {"name": "ray-within-cluster", "properties": {
                    "description": DESCRIPTION[:140], "protocol": "Tcp", "access": "Allow", "direction": "Inbound",
                    "priority": 100, "sourcePortRange": "*", "destinationPortRange": ports,
                    "sourceApplicationSecurityGroups": [{"id": asg["id"]}],
                    "destinationApplicationSecurityGroups": [{"id": asg["id"]}]}},
                {"name": "ray-from-elsewhere", "properties": {
                    "protocol": "Tcp", "access": "Deny", "direction": "Inbound", "priority": 110,
                    "sourcePortRange": "*", "destinationPortRange": ports,
                    "sourceAddressPrefix": "*", "destinationAddressPrefix": "*"}},
            ]}}, polling_interval=self.poll()).result()
        self.log.info("azure: made security groups %s for Ray cluster %s", name, cluster)
        return nsg["id"]

    def list(self, where, hub):
        out = []
        for nsg in self.client("network").network_security_groups.list(self.group()):
            tags = nsg.get("tags") or {}
            if tags.get(TAG_HUB) == hub and tags.get(CLUSTER_TAG) and nsg.get("location") == where:
                created = tags.get(TAG_CREATED, "")
                out.append(RayRule(nsg["id"], tags[CLUSTER_TAG], float(created) if created.isdigit() else None))
        return out

    def delete(self, where, rule):
        exceptions = _sdk().errors
        network = self.client("network")
        name = rule.id.rsplit("/", 1)[-1]
        for ops in (network.network_security_groups, network.application_security_groups):
            try:
                ops.begin_delete(self.group(), name, polling_interval=self.poll()).result()
            except exceptions.ResourceNotFoundError:
                continue
            except exceptions.HttpResponseError as err:
                if "InUse" in AzureProvider._error_text(err):  # a NIC still being deleted holds it
                    raise RuleInUse(rule.id) from err
                raise


__all__ = ["AzureProvider", "AzureRuleStore", "asg_of", "vm_name"]
