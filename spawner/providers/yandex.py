"""Yandex Cloud: GPU VMs on Compute Cloud through its REST API with ``requests`` (the
``yandexcloud`` SDK would replace the environment's protobuf, so it is not used); the
only module that talks to Yandex Cloud.

Credentials, the first found: an IAM token in ``$YC_IAM_TOKEN``; an OAuth token in
``$YC_TOKEN`` (as the ``yc`` CLI names it), exchanged for an IAM token at
``iam.api.cloud.yandex.net/iam/v1/tokens``; a service account's authorized key (the
JSON ``yc iam key create`` writes) in ``$YC_SERVICE_ACCOUNT_KEY_FILE`` or
``c.YandexProvider.service_account_key_file``, from which a PS256-signed JWT is made
and exchanged the same way. IAM tokens are kept until an hour before they expire. The
token travels only in the ``Authorization`` header; no message, log line or node holds
a credential. The folder is ``c.YandexProvider.folder_id`` or ``$YC_FOLDER_ID``.

A VM has no instance type: it is a platform (``gpu-standard-v3``: A100, ``standard-v3-t4``:
T4, ...) with cores, memory and a GPU count, which the catalog's instance type spells
``<platform>-<gpus>gpu-<cores>c-<memory GB>g`` (:func:`parse_type`). Node ids are
``"<zone>/<instance id>"``; the catalog's region is ``ru-central1`` and its zones the
zones a platform runs in: a zone without capacity moves on to the next zone of the offer.

Labels are the truth, as on GCP: a tag value a Yandex label cannot hold is labelled by
its hash, and the exact tags are in the instance's ``cloudhop-tags`` metadata. The
Compute list filters by name only, so the folder's instances are listed (all pages) and
matched here. The instance name is a hash of the request id (names are unique in a
folder) and the create carries an ``Idempotency-Key``; a launch first looks for the
request's instance. The server starts from cloud-init in the ``user-data`` metadata.
Preemptible instances are the spot market.

Errors: ``RESOURCE_EXHAUSTED`` or "not enough resources" in the create or its
operation is a :class:`~.base.CapacityError`, a quota a :class:`~.base.QuotaError`,
``UNAUTHENTICATED``/``PERMISSION_DENIED`` a :class:`~.base.CredentialsError`; 429, 5xx
and ``UNAVAILABLE`` are retried.

The nodes of a Ray cluster share a VPC security group of their own
(:class:`YandexRuleStore`): Ray's ports from the group itself only, the server port as
a VM without a group has it, and all outbound traffic; a NIC with security groups admits
nothing else. It goes after the cluster's last VM.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
import time
import uuid

from traitlets import Dict, Float, Integer, Unicode, validate

from ..validate import check_number
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
from .cloud import TAG_PORT, CloudProvider, Retry, epoch_of, split_id
from .gcp import label_value  # Yandex label values allow a superset of GCP's characters
from .ray_firewall import CLUSTER_TAG, DESCRIPTION, PORTS, RayRule, RuleInUse, RuleStore, cluster_of, rule_name

#: the public API hosts, by service
HOSTS = {
    "compute": "https://compute.api.cloud.yandex.net",
    "vpc": "https://vpc.api.cloud.yandex.net",
    "operation": "https://operation.api.cloud.yandex.net",
    "iam": "https://iam.api.cloud.yandex.net",
}
IAM_PATH = "/iam/v1/tokens"
#: where the exact tags live (labels are lossy)
TAGS_METADATA = "cloudhop-tags"
IAM_ENV, OAUTH_ENV, KEY_ENV, FOLDER_ENV = "YC_IAM_TOKEN", "YC_TOKEN", "YC_SERVICE_ACCOUNT_KEY_FILE", "YC_FOLDER_ID"
NO_CREDENTIALS = (f"no Yandex Cloud credentials: set ${IAM_ENV}, ${OAUTH_ENV}, ${KEY_ENV} or "
                  "c.YandexProvider.service_account_key_file")
NO_FOLDER = f"no Yandex Cloud folder: set c.YandexProvider.folder_id or ${FOLDER_ENV}"
PAGE = 1000
GB = 1024 ** 3
_TYPE = re.compile(r"^(?P<platform>[a-z0-9-]+?)-(?P<gpus>\d+)gpu-(?P<cores>\d+)c-(?P<memory>\d+)g$")

#: gRPC codes as the REST API writes them in an error body (``{"code": 8, ...}``)
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED = 3, 5, 6, 7
RESOURCE_EXHAUSTED, FAILED_PRECONDITION, UNAVAILABLE, UNAUTHENTICATED = 8, 9, 14, 16

_STATES = {
    "PROVISIONING": PENDING,
    "STARTING": PENDING,
    "UPDATING": RUNNING,
    "RUNNING": RUNNING,
    "RESTARTING": PENDING,
    "STOPPING": STOPPING,
    "STOPPED": STOPPING,
    "DELETING": STOPPING,
    "ERROR": FAILED,
    "CRASHED": FAILED,
}


class YandexAPIError(Exception):
    """An error answer of a Yandex Cloud API or a failed operation: HTTP ``status`` (0
    for an operation), the gRPC ``code`` and the message."""

    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def parse_type(instance_type: str) -> dict:
    """``gpu-standard-v3-1gpu-28c-119g`` -> platform, gpus, cores and memory (GB)."""
    m = _TYPE.match(instance_type or "")
    if not m:
        raise ProviderError(f"not a Yandex Cloud instance type: {instance_type!r} (expected "
                            "'<platform>-<gpus>gpu-<cores>c-<memory GB>g')")
    return {"platform": m["platform"], "gpus": int(m["gpus"]), "cores": int(m["cores"]),
            "memory": int(m["memory"])}


def type_name(platform: str, gpus: int, cores: int, memory_gb: int) -> str:
    return f"{platform}-{gpus}gpu-{cores}c-{memory_gb}g"


def instance_name(request_id: str) -> str:
    """The instance name of a request: stable, unique in the folder."""
    return "cloudhop-" + hashlib.sha256(request_id.encode()).hexdigest()[:20]


def zone_region(zone: str) -> str:
    """``ru-central1-a`` -> ``ru-central1``."""
    return zone.rsplit("-", 1)[0]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def service_account_jwt(key: dict, audience: str, now: float | None = None) -> str:
    """The JWT (PS256) a service account's authorized key signs to ask for an IAM token."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    now = int(now if now is not None else time.time())
    header = {"typ": "JWT", "alg": "PS256", "kid": key["id"]}
    payload = {"iss": key["service_account_id"], "aud": audience, "iat": now, "exp": now + 3600}
    signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    private = serialization.load_pem_private_key(key["private_key"].encode(), password=None)
    signature = private.sign(signing.encode(), padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
                             hashes.SHA256())
    return f"{signing}.{_b64(signature)}"


class YandexAPI:
    """The calls Cloudhop makes, over one ``requests`` session, with an IAM token got
    and renewed from the credentials (see the module docstring). ``base``: one URL for
    every service (a private endpoint or a test server); empty: Yandex's hosts."""

    def __init__(self, base: str, key_file, timeout: float = 30.0):
        import requests

        self.base = base.rstrip("/")
        self.key_file = key_file
        self.timeout = timeout
        self.session = requests.Session()
        self._token: tuple[str, float] | None = None  # (IAM token, renew after, monotonic)
        self._lock = threading.Lock()

    def url(self, service: str, path: str) -> str:
        return (self.base or HOSTS[service]) + path

    def has_credentials(self) -> bool:
        return bool(os.environ.get(IAM_ENV, "").strip() or os.environ.get(OAUTH_ENV, "").strip()
                    or self._key_path())

    def _key_path(self) -> str | None:
        path = os.environ.get(KEY_ENV, "").strip() or os.path.expanduser(self.key_file() or "")
        return path if path and os.path.isfile(path) else None

    def token(self) -> str:
        direct = os.environ.get(IAM_ENV, "").strip()
        if direct:
            return direct
        with self._lock:
            if self._token and time.monotonic() < self._token[1]:
                return self._token[0]
            oauth = os.environ.get(OAUTH_ENV, "").strip()
            if oauth:
                body = {"yandexPassportOauthToken": oauth}
            else:
                path = self._key_path()
                if not path:
                    raise CredentialsError(NO_CREDENTIALS)
                try:
                    with open(path, encoding="utf-8") as f:
                        key = json.load(f)
                    body = {"jwt": service_account_jwt(key, HOSTS["iam"] + IAM_PATH)}
                except (OSError, ValueError, KeyError, TypeError) as err:
                    raise CredentialsError(f"the Yandex Cloud service account key file is not an authorized "
                                           f"key ({type(err).__name__})") from None
            reply = self.session.post(self.url("iam", IAM_PATH), json=body, timeout=self.timeout)
            data = self._answer(reply)
            lifetime = (epoch_of(data.get("expiresAt")) or time.time() + 3600) - time.time()
            self._token = (data["iamToken"], time.monotonic() + max(60.0, lifetime - 3600))
            return self._token[0]

    @staticmethod
    def _answer(reply) -> dict:
        try:
            data = reply.json()
        except ValueError:
            data = {}
        if reply.status_code >= 400:
            data = data if isinstance(data, dict) else {}
            code = data.get("code")
            raise YandexAPIError(reply.status_code, int(code) if str(code).isdigit() else 0,
                                 str(data.get("message") or reply.reason or "error"))
        return data if isinstance(data, dict) else {}

    def call(self, method: str, service: str, path: str, *, body: dict | None = None,
             params: dict | None = None, headers: dict | None = None) -> dict:
        reply = self.session.request(method, self.url(service, path), json=body, params=params,
                                     timeout=self.timeout,
                                     headers={"Authorization": f"Bearer {self.token()}", **(headers or {})})
        return self._answer(reply)

    def pages(self, service: str, path: str, field: str, params: dict) -> list[dict]:
        """Every item of a paged list (``nextPageToken``)."""
        out, token = [], None
        while True:
            data = self.call("GET", service, path, params={**params, "pageSize": PAGE,
                                                           **({"pageToken": token} if token else {})})
            out += data.get(field) or []
            token = data.get("nextPageToken")
            if not token:
                return out

    def wait(self, operation: dict, timeout: float, poll: float) -> dict:
        """Wait for an operation to finish; raises its error as :class:`YandexAPIError`."""
        deadline = time.monotonic() + timeout
        while not operation.get("done"):
            if time.monotonic() > deadline:
                raise YandexAPIError(0, UNAVAILABLE, f"operation {operation.get('id')} still running")
            time.sleep(poll)
            operation = self.call("GET", "operation", f"/operations/{operation['id']}")
        error = operation.get("error")
        if error:
            raise YandexAPIError(0, int(error.get("code") or 0), str(error.get("message") or "operation failed"))
        return operation


class YandexProvider(CloudProvider):
    """GPU VMs on Yandex Cloud. See :class:`~.base.Provider` for the contract."""

    name = "yandex"
    display_name = "Yandex Cloud"
    lists_everywhere = True  # one list covers the folder's zones; security groups are per folder

    folder_id = Unicode("", help=f"The folder VMs are made in. Empty: ${FOLDER_ENV}.").tag(config=True)

    service_account_key_file = Unicode(
        "~/.config/cloudhop/yandex-key.json",
        help=f"A service account's authorized key (JSON), read when ${IAM_ENV} and ${OAUTH_ENV} are unset.",
    ).tag(config=True)

    api_endpoint = Unicode(
        "", help="One base URL for every Yandex Cloud API (Compute, VPC, operations, IAM). "
        "Empty: Yandex's public hosts (compute.api.cloud.yandex.net, ...).",
    ).tag(config=True)

    subnet_ids = Dict(
        value_trait=Unicode(),
        help="Subnet per zone, e.g. {'ru-central1-a': 'e9b...'}. A zone not listed: the folder's "
        "subnet in that zone (of ``network_id`` when set).",
    ).tag(config=True)

    network_id = Unicode("", help="Network whose subnets are picked when subnet_ids has no entry.").tag(config=True)

    image_family = Unicode(
        "ubuntu-2204-lts-gpu", help="Image family (in ``image_folder_id``) every VM boots when ``image_id`` "
        "is empty: Yandex's GPU images carry the NVIDIA driver.",
    ).tag(config=True)

    image_folder_id = Unicode("standard-images", help="Folder of ``image_family``.").tag(config=True)

    image_id = Unicode("", help="Image every VM boots (overrides image_family).").tag(config=True)

    disk_gb = Integer(100, help="Boot disk size (GB).").tag(config=True)

    disk_type = Unicode("network-ssd", help="Boot disk type.").tag(config=True)

    operation_timeout = Float(600.0, help="Seconds a create waits for its operation.").tag(config=True)

    poll_seconds = Float(2.0, help="Seconds between reads of a running operation.").tag(config=True)

    @validate("disk_gb")
    def _valid_disk(self, proposal):
        return check_number(proposal, minimum=1, integer=True, unit="GB")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._api: YandexAPI | None = None
        self._subnets: dict[str, dict] = {}

    def api(self) -> YandexAPI:
        if self._api is None:
            self._api = YandexAPI(self.api_endpoint, lambda: self.service_account_key_file)
        return self._api

    def folder(self) -> str:
        folder = self.folder_id or os.environ.get(FOLDER_ENV, "").strip()
        if not folder:
            raise ProviderError(NO_FOLDER)
        return folder

    # -- errors --------------------------------------------------------------------------
    def _classify(self, err):
        import requests

        if isinstance(err, (requests.ConnectionError, requests.Timeout)):
            return Retry(err)
        if not isinstance(err, YandexAPIError):
            return err
        text = f"Yandex Cloud {err.code or err.status}: {err.message}"
        low = err.message.lower()
        if "quota" in low or ("limit" in low and err.code == RESOURCE_EXHAUSTED):
            return QuotaError(text)
        if err.code == RESOURCE_EXHAUSTED or "not enough resources" in low or "insufficient" in low:
            return CapacityError(text)
        if err.code in (UNAUTHENTICATED, PERMISSION_DENIED) or err.status in (401, 403):
            return CredentialsError(f"Yandex Cloud refused the hub's credentials ({err.code or err.status})")
        if err.status == 429 or err.status >= 500 or err.code == UNAVAILABLE:
            return Retry(err)
        return ProviderError(text)

    # -- instances ---------------------------------------------------------------------------
    def _region_of(self, where: str) -> str:
        return zone_region(where)

    def _where(self, spec: LaunchSpec) -> str:
        return self.zones_for(spec)[0]

    def zones_for(self, spec: LaunchSpec) -> list[str]:
        if spec.zone:
            return [spec.zone]
        return list(spec.offer.zones) or [f"{spec.offer.region}-a"]

    def subnet(self, zone: str) -> dict:
        """The subnet a VM in ``zone`` joins: ``subnet_ids[zone]``, else the folder's subnet
        in that zone (of ``network_id`` when set)."""
        if zone not in self._subnets:
            wanted = self.subnet_ids.get(zone)
            if wanted:
                found = self.api().call("GET", "vpc", f"/vpc/v1/subnets/{wanted}")
            else:
                found = next((s for s in self.api().pages("vpc", "/vpc/v1/subnets", "subnets",
                                                          {"folderId": self.folder()})
                              if s.get("zoneId") == zone and (not self.network_id
                                                              or s.get("networkId") == self.network_id)), None)
                if found is None:
                    raise ProviderError(f"Yandex Cloud: the folder has no subnet in {zone}: add one or set "
                                        "c.YandexProvider.subnet_ids")
            self._subnets[zone] = found
        return self._subnets[zone]

    def image(self) -> str:
        if self.image_id:
            return self.image_id
        found = self.api().call("GET", "compute", "/compute/v1/images:latestByFamily",
                                params={"folderId": self.image_folder_id, "family": self.image_family})
        return found["id"]

    def instance_body(self, spec: LaunchSpec, tags: dict, user_data: str, zone: str, rule: str | None) -> dict:
        shape = parse_type(spec.offer.instance_type)
        nic = {"subnetId": self.subnet(zone)["id"], "primaryV4AddressSpec": {}}
        if self.public_ip:
            nic["primaryV4AddressSpec"]["oneToOneNatSpec"] = {"ipVersion": "IPV4"}
        if rule is not None:
            nic["securityGroupIds"] = [rule]
        return {
            "folderId": self.folder(),
            "name": instance_name(spec.request_id),
            "description": "Cloudhop server node",
            "labels": {k: label_value(v) for k, v in tags.items()},
            "zoneId": zone,
            "platformId": shape["platform"],
            "resourcesSpec": {"memory": str(shape["memory"] * GB), "cores": str(shape["cores"]),
                              "coreFraction": "100", "gpus": str(shape["gpus"])},
            "metadata": {"user-data": user_data, TAGS_METADATA: json.dumps(tags, sort_keys=True)},
            "bootDiskSpec": {"autoDelete": True, "diskSpec": {"size": str(self.disk_gb * GB),
                                                              "typeId": self.disk_type, "imageId": self.image()}},
            "networkInterfaceSpecs": [nic],
            "schedulingPolicy": {"preemptible": bool(spec.spot)},
        }

    def _node(self, inst: dict) -> Node:
        state = _STATES.get(inst.get("status"), FAILED)
        try:
            tags = json.loads((inst.get("metadata") or {}).get(TAGS_METADATA) or "")
        except ValueError:
            tags = dict(inst.get("labels") or {})
        nics = inst.get("networkInterfaces") or [{}]
        address = nics[0].get("primaryV4Address") or {}
        private = address.get("address")
        public = (address.get("oneToOneNat") or {}).get("address")
        zone = inst.get("zoneId", "")
        return self.vm_node(
            where=zone,
            native_id=inst["id"],
            region=zone_region(zone),
            state=state,
            tags=tags,
            private=private,
            public=public,
            info={"instance_type": inst.get("platformId"), "zone": zone, "name": inst.get("name"),
                  "spot": bool((inst.get("schedulingPolicy") or {}).get("preemptible")),
                  "launched_at": epoch_of(inst.get("createdAt"))},
            creating="Yandex Cloud is creating the VM",
            status=inst.get("status", ""),
        )

    def _instances(self) -> list[dict]:
        """The folder's Cloudhop instances (every page)."""
        return [i for i in self.api().pages("compute", "/compute/v1/instances", "instances",
                                            {"folderId": self.folder(), "view": "FULL"})
                if TAG_REQUEST in (i.get("labels") or {})]

    def _blocking_find(self, where, tags):
        out = []
        for inst in self._instances():
            labels = inst.get("labels") or {}
            if all(labels.get(k) == label_value(v) for k, v in tags.items()):
                node = self._node(inst)
                # labels may be hashes: confirm against the exact tags
                if all(node.tags.get(k) == str(v) for k, v in tags.items()) and \
                        where in ("*", None, node.id.partition("/")[0], node.region):
                    out.append(node)
        return out

    def _blocking_describe(self, where):
        return {n.id: n for n in map(self._node, self._instances())}

    def _by_name(self, name: str) -> dict | None:
        found = self.api().pages("compute", "/compute/v1/instances", "instances",
                                 {"folderId": self.folder(), "filter": f'name="{name}"', "view": "FULL"})
        return next((i for i in found if i.get("name") == name), None)

    def _blocking_create_node(self, spec, tags, user_data, rule):
        """Create the instance in the offer's first zone with capacity (a zone out of
        resources moves on to the next); a retry finds the instance an earlier try made."""
        name = instance_name(spec.request_id)
        found = self._by_name(name)
        if found is not None:
            return self._node(found)
        exhausted = []
        for zone in self.zones_for(spec):
            try:
                return self._create_in(spec, tags, user_data, zone, rule)
            except YandexAPIError as err:
                if not isinstance(self._classify(err), CapacityError):
                    raise
                self.log.info("yandex: %s has no capacity for %s (%s)", zone, spec.offer.instance_type, err.message)
                exhausted.append((zone, err))
        zones = ", ".join(z for z, _ in exhausted)
        raise YandexAPIError(0, RESOURCE_EXHAUSTED, f"no capacity in {zones}: {exhausted[-1][1].message}")

    def _create_in(self, spec, tags, user_data, zone, rule) -> Node:
        key = str(uuid.uuid5(uuid.NAMESPACE_URL, f"cloudhop:{spec.request_id}:{zone}"))
        operation = self.api().call("POST", "compute", "/compute/v1/instances",
                                    body=self.instance_body(spec, tags, user_data, zone, rule),
                                    headers={"Idempotency-Key": key})
        instance_id = (operation.get("metadata") or {}).get("instanceId")
        self.api().wait(operation, self.operation_timeout, self.poll_seconds)
        try:
            return self._node(self.api().call("GET", "compute", f"/compute/v1/instances/{instance_id}",
                                              params={"view": "FULL"}))
        except YandexAPIError as err:
            if err.code != NOT_FOUND and err.status != 404:
                raise
            return Node(f"{zone}/{instance_id}", self.name, zone_region(zone), PENDING, port=spec.port,
                        tags=dict(tags), info={"zone": zone})

    def _blocking_terminate(self, node_id):
        _, instance_id = split_id(node_id)
        try:
            self.api().call("DELETE", "compute", f"/compute/v1/instances/{instance_id}")
            return self._node(self.api().call("GET", "compute", f"/compute/v1/instances/{instance_id}",
                                              params={"view": "FULL"}))
        except YandexAPIError as err:
            if err.code == NOT_FOUND or err.status == 404:
                return None
            raise

    # -- availability ----------------------------------------------------------------------
    def _blocking_check(self):
        if not self.api().has_credentials():
            return NO_CREDENTIALS
        if not (self.folder_id or os.environ.get(FOLDER_ENV, "").strip()):
            return NO_FOLDER
        try:
            self.api().call("GET", "compute", "/compute/v1/instances",
                            params={"folderId": self.folder(), "pageSize": 1})
        except Exception as err:  # noqa: BLE001 - a reason, never a crash
            return self._reason(err)
        return None

    def _blocking_check_catalog(self, offers):
        """The offers in zones that are up (``/compute/v1/zones``); Yandex Cloud lists no
        platforms per zone, so a platform's zones are the catalog's."""
        up = {z["id"] for z in self.api().pages("compute", "/compute/v1/zones", "zones", {})
              if z.get("status") == "UP"}
        out = []
        for o in offers:
            zones = tuple(z for z in o.zones if z in up)
            if zones:
                out.append((o.instance_type, o.region, zones))
        return out

    # -- Ray firewall --------------------------------------------------------------------------
    def _rule_store(self):
        return YandexRuleStore(provider=self)


class YandexRuleStore(RuleStore):
    """A Ray cluster's rule on Yandex Cloud (see :class:`~.ray_firewall.RuleStore`): a VPC
    security group in the network of the zone's subnet, named
    ``<rule_name(cluster)>-<hub hash>``, admitting Ray's ports from itself only
    (``self_security_group``), the server port from anywhere (as a VM without a group
    has it) and all outbound traffic. The owner hub and cluster are in its description
    (JSON); its labels say it is Cloudhop's."""

    def __init__(self, *, provider: YandexProvider):
        self.provider = provider

    @staticmethod
    def name(cluster: str, hub: str) -> str:
        return f"{rule_name(cluster)}-{hashlib.sha256(hub.encode()).hexdigest()[:12]}"

    def _groups(self) -> list[dict]:
        api = self.provider.api()
        return [g for g in api.pages("vpc", "/vpc/v1/securityGroups", "securityGroups",
                                     {"folderId": self.provider.folder()})
                if str(g.get("name", "")).startswith("cloudhop-ray-")]

    @staticmethod
    def _owner(group: dict) -> dict:
        try:
            owner = json.loads(group.get("description") or "{}")
        except ValueError:
            return {}
        return owner if isinstance(owner, dict) else {}

    def ensure(self, where, tags):
        cluster = cluster_of(tags)
        hub = str(tags.get(TAG_HUB, ""))
        name = self.name(cluster, hub)
        for group in self._groups():
            if group.get("name") == name:
                return group["id"]
        anywhere = {"v4CidrBlocks": ["0.0.0.0/0"]}
        port = str(tags.get(TAG_PORT, "8888"))
        body = {
            "folderId": self.provider.folder(),
            "name": name,
            "description": json.dumps({TAG_HUB: hub, CLUSTER_TAG: cluster}, sort_keys=True),
            "labels": {"cloudhop-ray": "true"},
            "networkId": self.provider.subnet(where)["networkId"],
            "ruleSpecs": [
                {"direction": "INGRESS", "protocolName": "TCP", "description": DESCRIPTION[:256],
                 "ports": {"fromPort": str(PORTS[0]), "toPort": str(PORTS[1])},
                 "predefinedTarget": "self_security_group"},
                {"direction": "INGRESS", "protocolName": "TCP", "description": "Cloudhop: the server port",
                 "ports": {"fromPort": port, "toPort": port}, "cidrBlocks": anywhere},
                {"direction": "EGRESS", "protocolName": "ANY", "description": "Cloudhop: all outbound",
                 "cidrBlocks": anywhere},
            ],
        }
        api = self.provider.api()
        operation = api.call("POST", "vpc", "/vpc/v1/securityGroups", body=body)
        api.wait(operation, self.provider.operation_timeout, self.provider.poll_seconds)
        group_id = (operation.get("metadata") or {}).get("securityGroupId")
        self.provider.log.info("yandex: made security group %s for Ray cluster %s", group_id, cluster)
        return group_id

    def list(self, where, hub):
        out = []
        for group in self._groups():
            owner = self._owner(group)
            if owner.get(TAG_HUB) == hub and owner.get(CLUSTER_TAG):
                out.append(RayRule(group["id"], owner[CLUSTER_TAG], epoch_of(group.get("createdAt"))))
        return out

    def delete(self, where, rule):
        api = self.provider.api()
        try:
            operation = api.call("DELETE", "vpc", f"/vpc/v1/securityGroups/{rule.id}")
            api.wait(operation, self.provider.operation_timeout, self.provider.poll_seconds)
        except YandexAPIError as err:
            if err.code == NOT_FOUND or err.status == 404:
                return
            if err.code == FAILED_PRECONDITION:  # a VM (one still deleting) uses it
                raise RuleInUse(rule.id) from err
            raise


__all__ = ["YandexProvider", "YandexRuleStore", "instance_name", "parse_type", "service_account_jwt",
           "type_name", "zone_region"]
