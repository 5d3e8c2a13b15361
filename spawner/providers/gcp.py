"""GCP: GPU VMs on Compute Engine through google-cloud-compute (the only module that
imports it), REST transport.

Credentials are Application Default Credentials (``GOOGLE_APPLICATION_CREDENTIALS``,
``gcloud auth application-default login`` or the VM's service account); the project is
``c.GCPProvider.project`` or the one ADC names. Node ids are ``"<zone>/<instance name>"``.

GCP labels allow only lowercase letters, digits, ``_`` and ``-``; a tag value that does
not fit is labelled by its hash, and the exact tags are kept in the instance's
``cloudhop-tags`` metadata, which is what :class:`Node.tags` shows. Capacity and quota
errors arrive in the insert operation (``ZONE_RESOURCE_POOL_EXHAUSTED``,
``QUOTA_EXCEEDED``), so launch waits for that operation; the insert itself is sent
without retries (with a ``requestId``, so Compute drops duplicates) and every other
call uses a google-api-core ``Retry`` on 429/5xx.

The nodes of a Ray cluster (:data:`~cloudhop.spawner.providers.base.TAG_RAY_CLUSTER`) carry a network
tag of their own, and a firewall rule made before the first of them admits Ray's ports
from that tag to that tag only; it is deleted after the cluster's last instance
(:class:`GCPRuleStore`, driven as :mod:`cloudhop.spawner.providers.ray_firewall` says).
Firewall rules have no labels: the hub and cluster a rule belongs to are in its
description.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import uuid
from types import SimpleNamespace

from traitlets import Bool, Float, Integer, List, TraitError, Unicode, validate

from .base import (
    FAILED,
    PENDING,
    RUNNING,
    STOPPING,
    TAG_HUB,
    TAG_REQUEST,
    CapacityError,
    CredentialsError,
    LaunchSpec,
    Node,
    ProviderError,
    QuotaError,
)
from .ray_firewall import CLUSTER_TAG, DESCRIPTION, PORTS, RayRule, RuleStore, cluster_of, rule_name
from ..validate import check_number
from .aliases import Renamed
from .cloud import CloudProvider, Retry, split_id

INSTALL_HINT = "the GCP provider needs google-cloud-compute: pip install 'cloudhop[gcp]'"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
#: where the exact tags live (labels are lossy)
TAGS_METADATA = "cloudhop-tags"

#: catalog GPU name -> Compute accelerator type, for GPUs attached to N1 hosts
ACCELERATOR_TYPES = {
    "T4": "nvidia-tesla-t4",
    "V100": "nvidia-tesla-v100",
    "P100": "nvidia-tesla-p100",
    "P4": "nvidia-tesla-p4",
    "K80": "nvidia-tesla-k80",
}

_STATES = {
    "PROVISIONING": PENDING,
    "STAGING": PENDING,
    "RUNNING": RUNNING,
    "STOPPING": STOPPING,
    "SUSPENDING": STOPPING,
    "SUSPENDED": STOPPING,
    "REPAIRING": PENDING,
    # Compute's TERMINATED is "stopped" (the VM still exists and is deleted on terminate)
    "TERMINATED": STOPPING,
}
CAPACITY_CODES = {
    "ZONE_RESOURCE_POOL_EXHAUSTED",
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
    "RESOURCE_POOL_EXHAUSTED",
    "STOCKOUT",
    "UNSUPPORTED_OPERATION",
}
QUOTA_CODES = {"QUOTA_EXCEEDED", "QUOTA_LIMIT", "rateLimitExceeded/quota"}
_LABEL_OK = re.compile(r"^[a-z0-9_-]{0,63}$")
#: what Compute takes as a network tag (RFC 1035 label)
_NETWORK_TAG = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
#: every Ray cluster rule's name starts so (see firewall.rule_name)
RAY_RULE_PREFIX = "cloudhop-ray-"


def _sdk():
    """The SDK modules, imported on first use (a missing SDK is a reason, not a crash)."""
    try:
        import google.auth
        import google.auth.exceptions
        from google.api_core import exceptions, retry
        from google.api_core.client_options import ClientOptions
        from google.auth import credentials
        from google.cloud import compute_v1
    except ImportError as err:  # pragma: no cover - depends on the install
        raise CredentialsError(INSTALL_HINT) from err
    return SimpleNamespace(
        auth=google.auth, auth_errors=google.auth.exceptions, credentials=credentials,
        errors=exceptions, retry=retry, ClientOptions=ClientOptions, compute=compute_v1,
    )


class OperationError(Exception):
    """A Compute operation finished with an error (codes as Compute spells them)."""

    def __init__(self, codes: list[str], message: str):
        super().__init__(message)
        self.codes = codes


def label_value(value: str) -> str:
    """A tag value as a GCP label value: itself when it fits, else a stable hash."""
    value = str(value)
    if _LABEL_OK.match(value):
        return value
    return "h-" + hashlib.sha256(value.encode()).hexdigest()[:32]


def instance_name(request_id: str) -> str:
    """The instance name for a request: stable, so a repeated insert collides."""
    return "cloudhop-" + hashlib.sha256(request_id.encode()).hexdigest()[:20]


def _timestamp(text: str) -> float | None:
    """Compute's RFC 3339 creation time as epoch seconds (None when absent)."""
    try:
        return datetime.datetime.fromisoformat(text).timestamp() if text else None
    except ValueError:
        return None


def zone_region(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


class GCPProvider(CloudProvider):
    """GPU VMs on Compute Engine. See :class:`~.base.Provider` for the contract."""

    name = "gcp"
    display_name = "GCP"

    project = Unicode(
        "", help="Project nodes are created in. Empty: the project of the Application "
        "Default Credentials."
    ).tag(config=True)

    image = Unicode(
        "projects/ubuntu-os-accelerator-images/global/images/family/ubuntu-accelerator-2204-amd64-with-nvidia-550",
        help="Boot image (a family or image URL) of every node: a cloud-init image with "
        "the NVIDIA driver. Docker and the container toolkit are installed by the "
        "bootstrap when missing.",
    ).tag(config=True)

    network = Unicode(
        "global/networks/default",
        help="VPC network of the nodes; its firewall must admit the hub on the server "
        "port (see network_tags).",
    ).tag(config=True)

    subnetwork = Unicode(
        "", help="Subnetwork (``regions/<region>/subnetworks/<name>``). Empty: the "
        "network's subnet of the node's region (auto-mode networks)."
    ).tag(config=True)

    network_tags = List(
        Unicode(), ["cloudhop-node"],
        help="Network tags on every node, for firewall rules that target them.",
    ).tag(config=True)

    external_ip = Renamed("public_ip")

    disk_gb = Integer(100, help="Boot disk size (GB) of every node.").tag(config=True)

    api_endpoint = Unicode(
        "", help="Compute API endpoint override (a private endpoint, or a local test "
        "server such as ``http://127.0.0.1:8080``). Empty: the public endpoint."
    ).tag(config=True)

    anonymous_credentials = Bool(
        False, help="Send no credentials (only for a local test server set in api_endpoint)."
    ).tag(config=True)

    operation_timeout = Float(
        180.0, help="Seconds launch waits for the insert operation (capacity and quota "
        "errors are reported there)."
    ).tag(config=True)

    @validate("disk_gb")
    def _valid_disk(self, proposal):
        # Compute's smallest boot disk is 10 GB (GPU images want far more)
        return check_number(proposal, minimum=10, integer=True, unit="GB")

    @validate("network_tags")
    def _valid_network_tags(self, proposal):
        bad = [t for t in proposal["value"] if not _NETWORK_TAG.match(t)]
        if bad:
            raise TraitError(f"c.GCPProvider.network_tags must be network tags (lowercase letters, "
                             f"digits and '-', starting with a letter, at most 63), not {bad[0]!r}")
        return proposal["value"]

    @validate("network", "image")
    def _valid_not_empty(self, proposal):
        if not proposal["value"].strip():
            raise TraitError(f"c.GCPProvider.{proposal['trait'].name} must name a Compute resource, not ''")
        return proposal["value"].strip()

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._clients: dict[str, object] = {}
        self._credentials = None
        self._adc_project = None

    # -- clients -------------------------------------------------------------------------
    def _auth(self):
        if self._credentials is None:
            sdk = _sdk()
            if self.anonymous_credentials:
                self._credentials = sdk.credentials.AnonymousCredentials()
            else:
                self._credentials, self._adc_project = sdk.auth.default(scopes=SCOPES)
        return self._credentials

    def project_id(self) -> str:
        self._auth()
        project = self.project or self._adc_project
        if not project:
            raise CredentialsError("no GCP project: set c.GCPProvider.project")
        return project

    def client(self, kind: str = "instances"):
        """The REST client of one Compute resource (``instances``, ``zone_operations``,
        ``firewalls``, ``global_operations``, ``machine_types``, ``accelerator_types``)."""
        if kind not in self._clients:
            sdk = _sdk()
            compute_v1 = sdk.compute
            cls = {
                "instances": compute_v1.InstancesClient,
                "zone_operations": compute_v1.ZoneOperationsClient,
                "firewalls": compute_v1.FirewallsClient,
                "global_operations": compute_v1.GlobalOperationsClient,
                "machine_types": compute_v1.MachineTypesClient,
                "accelerator_types": compute_v1.AcceleratorTypesClient,
            }[kind]
            options = sdk.ClientOptions(api_endpoint=self.api_endpoint) if self.api_endpoint else None
            self._clients[kind] = cls(credentials=self._auth(), transport="rest", client_options=options)
        return self._clients[kind]

    def _retry(self):
        sdk = _sdk()
        exceptions, retry = sdk.errors, sdk.retry
        return retry.Retry(
            predicate=retry.if_exception_type(
                exceptions.TooManyRequests,
                exceptions.InternalServerError,
                exceptions.BadGateway,
                exceptions.ServiceUnavailable,
                exceptions.GatewayTimeout,
            ),
            initial=self.retry_base_delay,
            maximum=10.0,
            multiplier=2.0,
            timeout=60.0,
        )

    # -- errors --------------------------------------------------------------------------
    def _classify(self, err):
        sdk = _sdk()
        exceptions, google_auth = sdk.errors, sdk.auth_errors
        if isinstance(err, OperationError):
            if CAPACITY_CODES & set(err.codes):
                return CapacityError(f"GCP {err.codes[0]}: {err}")
            if QUOTA_CODES & set(err.codes):
                return QuotaError(f"GCP {err.codes[0]}: {err}")
            return ProviderError(f"GCP {', '.join(err.codes)}: {err}")
        if isinstance(err, google_auth.DefaultCredentialsError):
            return CredentialsError("no GCP credentials found (Application Default Credentials)")
        if isinstance(err, google_auth.RefreshError):
            return CredentialsError("GCP refused the hub's credentials")
        if isinstance(err, exceptions.RetryError):
            return Retry(err.cause or err)
        if isinstance(err, (exceptions.TooManyRequests, exceptions.ServerError)):
            return Retry(err)
        if isinstance(err, exceptions.GoogleAPICallError):
            reasons = {str(e.get("reason", "")) for e in (err.errors or []) if isinstance(e, dict)}
            text = f"GCP {err.code}: {err.message}"
            if reasons & {"quotaExceeded", "QUOTA_EXCEEDED"} or "Quota" in (err.message or ""):
                return QuotaError(text)
            # over REST a 403 is Forbidden (PermissionDenied is its gRPC twin)
            if isinstance(err, (exceptions.Unauthorized, exceptions.Forbidden)):
                # Compute's message names the missing permission, never a secret
                return CredentialsError(f"GCP {err.code}: the hub's credentials were refused: {err.message}")
            return ProviderError(text)
        return err

    # -- payloads ------------------------------------------------------------------------
    def zone_for(self, spec: LaunchSpec) -> str:
        if spec.zone:
            return spec.zone
        if spec.offer.zones:
            return spec.offer.zones[0]
        return f"{spec.offer.region}-a"

    def instance_body(self, spec: LaunchSpec, tags: dict, user_data: str, zone: str) -> dict:
        """The ``instances.insert`` body (snake_case, as the client takes it)."""
        machine, accelerators = spec.offer.instance_type, []
        if "+" in machine:  # "<N1 host>+<GPU>x<count>": the GPU attaches to the host
            host, _, gpu = machine.partition("+")
            model, _, count = gpu.rpartition("x")
            machine = host
            accelerators = [{
                "accelerator_type": f"zones/{zone}/acceleratorTypes/{ACCELERATOR_TYPES.get(model, model.lower())}",
                "accelerator_count": int(count),
            }]
        nic = {"network": self.network}
        if self.subnetwork:
            nic["subnetwork"] = self.subnetwork
        if self.public_ip:  # an ephemeral external IP
            nic["access_configs"] = [{"name": "External NAT", "type_": "ONE_TO_ONE_NAT"}]
        scheduling = {
            # GPU VMs cannot live-migrate, and Spot VMs must not
            "on_host_maintenance": "TERMINATE" if spec.offer.gpu_count or spec.spot else "MIGRATE",
            "automatic_restart": not spec.spot,
        }
        if spec.spot:
            scheduling.update(provisioning_model="SPOT", instance_termination_action="DELETE")
        body = {
            "name": instance_name(spec.request_id),
            "machine_type": f"zones/{zone}/machineTypes/{machine}",
            "labels": {k: label_value(v) for k, v in tags.items()},
            "metadata": {"items": [
                {"key": "user-data", "value": user_data},
                {"key": TAGS_METADATA, "value": json.dumps(tags, sort_keys=True)},
            ]},
            "disks": [{
                "boot": True,
                "auto_delete": True,
                "initialize_params": {"source_image": self.image, "disk_size_gb": self.disk_gb},
            }],
            "network_interfaces": [nic],
            "scheduling": scheduling,
            "tags": {"items": list(self.network_tags)},
        }
        cluster = cluster_of(tags)
        if cluster:  # the target (and source) of the cluster's Ray firewall rule
            body["tags"]["items"].append(rule_name(cluster))
        if accelerators:
            body["guest_accelerators"] = accelerators
        return body

    def firewall_body(self, tags: dict) -> dict:
        """The ``firewalls.insert`` body of the Ray rule of the cluster ``tags`` name:
        Ray's ports, from the cluster's network tag to the same tag (pure)."""
        cluster = cluster_of(tags)
        name = rule_name(cluster)
        owner = json.dumps({TAG_HUB: str(tags.get(TAG_HUB, "")), CLUSTER_TAG: cluster}, sort_keys=True)
        return {
            "name": name,
            "network": self.network,
            "direction": "INGRESS",
            "priority": 1000,
            "allowed": [{"I_p_protocol": "tcp", "ports": [f"{PORTS[0]}-{PORTS[1]}"]}],
            "source_tags": [name],
            "target_tags": [name],
            "description": f"{DESCRIPTION} {owner}",
        }

    # -- blocking calls ------------------------------------------------------------------
    def _node(self, inst) -> Node:
        zone = inst.zone.rsplit("/", 1)[-1]
        meta = {i.key: i.value for i in inst.metadata.items} if inst.metadata else {}
        try:
            tags = json.loads(meta.get(TAGS_METADATA) or "{}")
        except ValueError:
            tags = dict(inst.labels)
        state = _STATES.get(inst.status, FAILED)
        nic = inst.network_interfaces[0] if inst.network_interfaces else None
        private = nic.network_i_p if nic else None
        public = nic.access_configs[0].nat_i_p if nic and nic.access_configs else None
        return self.vm_node(
            where=zone,
            native_id=inst.name,
            region=zone_region(zone),
            state=state,
            tags=tags,
            private=private,
            public=public,
            info={
                "instance_type": inst.machine_type.rsplit("/", 1)[-1],
                "zone": zone,
                "spot": inst.scheduling.provisioning_model == "SPOT" if inst.scheduling else False,
                "launched_at": _timestamp(inst.creation_timestamp),
            },
            creating="Compute Engine is creating the VM",
            status=inst.status,
        )

    @staticmethod
    def _filter(tags: dict) -> str:
        return " AND ".join(f'(labels.{k} = "{label_value(v)}")' for k, v in sorted(tags.items()))

    def _aggregated(self, filter_: str) -> list:
        pages = self.client().aggregated_list(
            request={"project": self.project_id(), "filter": filter_}, retry=self._retry(), timeout=30
        )
        out = []
        for _, scoped in pages:
            out += list(scoped.instances)
        return out

    def _blocking_find(self, where, tags):
        if where == "*":
            found = self._aggregated(self._filter(tags))
        else:
            found = self.client().list(
                request={"project": self.project_id(), "zone": where, "filter": self._filter(tags)},
                retry=self._retry(), timeout=30,
            )
        nodes = [self._node(i) for i in found]
        # labels may be hashes: confirm against the exact tags
        return [n for n in nodes if all(n.tags.get(k) == str(v) for k, v in tags.items())]

    def _blocking_describe(self, where):
        found = self._aggregated(f"(labels.{TAG_REQUEST}:*)")
        return {n.id: n for n in map(self._node, found)}

    def _wait(self, zone: str | None, operation) -> None:
        """Wait for a zone's operation (``zone`` None: a global one, e.g. a firewall's)."""
        import time

        ops = self.client("zone_operations" if zone else "global_operations")
        where = {"zone": zone} if zone else {}
        deadline = time.monotonic() + self.operation_timeout
        while operation.status != operation.Status.DONE and operation.status != "DONE":
            if time.monotonic() > deadline:
                raise OperationError(["TIMEOUT"], f"operation {operation.name} still running")
            operation = ops.wait(project=self.project_id(), operation=operation.name, **where,
                                 retry=self._retry(), timeout=150)
        if operation.error and operation.error.errors:
            errors = list(operation.error.errors)
            raise OperationError([e.code for e in errors], "; ".join(e.message for e in errors))

    def _blocking_create_node(self, spec, tags, user_data, rule):
        """Insert the instance in the offer's first zone with capacity: a zone whose pool
        is exhausted moves on to the next zone of the same offer at once; when every zone
        is exhausted the offer has no capacity. A Ray cluster's node carries its rule's
        network tag (:meth:`instance_body`), so ``rule`` itself is not needed here."""
        exhausted = []
        for zone in self.zones_for(spec):
            try:
                return self._insert(spec, tags, user_data, zone)
            except OperationError as err:
                if not CAPACITY_CODES & set(err.codes):
                    raise
                self.log.info("gcp: %s has no capacity for %s (%s)", zone, spec.offer.instance_type, err.codes[0])
                exhausted.append((zone, err))
        zones = ", ".join(z for z, _ in exhausted)
        raise OperationError(exhausted[-1][1].codes, f"no capacity in {zones}: {exhausted[-1][1]}")

    def zones_for(self, spec: LaunchSpec) -> list[str]:
        """The zones a launch tries, in order: the requested zone only, else the offer's."""
        if spec.zone:
            return [spec.zone]
        return list(spec.offer.zones) or [self.zone_for(spec)]

    def _insert(self, spec, tags, user_data, zone):
        sdk = _sdk()
        exceptions, compute_v1 = sdk.errors, sdk.compute
        body = self.instance_body(spec, tags, user_data, zone)
        try:
            op = self.client().insert(
                request={
                    "project": self.project_id(),
                    "zone": zone,
                    "instance_resource": compute_v1.Instance(body),
                    "request_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{spec.request_id}/{zone}")),
                },
                retry=None,  # capacity must reach failover at once; launch() retries the rest
                timeout=60,
            )
            self._wait(zone, op)
        except exceptions.Conflict:
            pass  # this request's instance exists already (a retried insert)
        inst = self.client().get(project=self.project_id(), zone=zone, instance=body["name"],
                                 retry=self._retry(), timeout=30)
        return self._node(inst)

    def _blocking_terminate(self, node_id):
        exceptions = _sdk().errors
        zone, name = split_id(node_id)
        try:
            self.client().delete(project=self.project_id(), zone=zone, instance=name,
                                 retry=self._retry(), timeout=60)
            inst = self.client().get(project=self.project_id(), zone=zone, instance=name,
                                     retry=self._retry(), timeout=30)
        except exceptions.NotFound:
            return None
        return self._node(inst)

    # -- Ray firewall: a rule per cluster, on the cluster's network tag (GCPRuleStore) ----
    def _rule_store(self):
        return GCPRuleStore(client=self.client, project=self.project_id, body=self.firewall_body,
                            wait=self._wait, retry=self._retry, log=self.log)

    # -- places --------------------------------------------------------------------------
    def _where(self, spec):
        return self.zone_for(spec)

    def _find_where(self, spec):
        return "*"  # one aggregated call covers every zone

    def _cache_key(self, where):
        return "*"

    def _region_of(self, where):
        return zone_region(where)

    def _places(self):
        return ["*"]

    def _blocking_check(self):
        google_auth = _sdk().auth_errors
        try:
            self.project_id()
        except google_auth.DefaultCredentialsError:
            return "no GCP credentials found (Application Default Credentials)"
        except CredentialsError as err:
            return err.message
        return None

    def _blocking_check_catalog(self, offers):
        """Which catalog types each zone offers, from two aggregated list calls."""
        project = self.project_id()
        machines: dict[str, set] = {}
        for scope, scoped in self.client("machine_types").aggregated_list(
            request={"project": project}, retry=self._retry(), timeout=60
        ):
            machines[scope.rsplit("/", 1)[-1]] = {m.name for m in scoped.machine_types}
        accels: dict[str, set] = {}
        for scope, scoped in self.client("accelerator_types").aggregated_list(
            request={"project": project}, retry=self._retry(), timeout=60
        ):
            accels[scope.rsplit("/", 1)[-1]] = {a.name for a in scoped.accelerator_types}
        out = []
        for offer in offers:
            machine, need = offer.instance_type, None
            if "+" in machine:
                machine, _, gpu = machine.partition("+")
                need = ACCELERATOR_TYPES.get(gpu.rpartition("x")[0])
            zones = [
                z for z, types in machines.items()
                if zone_region(z) == offer.region and machine in types
                and (need is None or need in accels.get(z, set()))
            ]
            if zones:
                out.append((offer.instance_type, offer.region, tuple(sorted(zones))))
        return out


class GCPRuleStore(RuleStore):
    """A Ray cluster's rule on Compute Engine (see :class:`~.ray_firewall.RuleStore`): a
    global firewall rule named :func:`~.ray_firewall.rule_name`, from the cluster's network
    tag to the same tag (:meth:`GCPProvider.firewall_body`). Rules are global, so
    ``where`` is not used. Firewall rules have no labels: the owner hub and cluster are
    in the description. The provider hands over its ``client(kind)``, ``project()``,
    ``body(tags)``, ``wait(zone, operation)`` and ``retry()`` policy."""

    def __init__(self, *, client, project, body, wait, retry, log):
        self.client = client
        self.project = project
        self.body = body
        self.wait = wait
        self.retry = retry
        self.log = log

    def ensure(self, where, tags):
        sdk = _sdk()
        body = self.body(tags)
        firewalls = self.client("firewalls")
        try:
            firewalls.get(project=self.project(), firewall=body["name"], retry=self.retry(), timeout=30)
            return body["name"]
        except sdk.errors.NotFound:
            pass
        try:
            op = firewalls.insert(project=self.project(), firewall_resource=sdk.compute.Firewall(body),
                                  retry=self.retry(), timeout=60)
            self.wait(None, op)
        except sdk.errors.Conflict:
            pass  # made meanwhile (a retried insert)
        self.log.info("gcp: made firewall rule %s for Ray cluster %s", body["name"], cluster_of(tags))
        return body["name"]

    def list(self, where, hub):
        out = []
        for fw in self.client("firewalls").list(request={"project": self.project()},
                                                retry=self.retry(), timeout=30):
            if not fw.name.startswith(RAY_RULE_PREFIX) or "{" not in (fw.description or ""):
                continue
            try:
                owner = json.loads(fw.description[fw.description.index("{"):])
            except ValueError:
                continue
            if owner.get(TAG_HUB) == hub and owner.get(CLUSTER_TAG):
                out.append(RayRule(fw.name, owner[CLUSTER_TAG], _timestamp(fw.creation_timestamp)))
        return out

    def delete(self, where, rule):
        exceptions = _sdk().errors
        try:
            op = self.client("firewalls").delete(project=self.project(), firewall=rule.id,
                                                 retry=self.retry(), timeout=60)
        except exceptions.NotFound:
            return
        self.wait(None, op)
