"""Lambda Cloud: GPU instances through Lambda's public REST API (``/api/v1``) with
``requests`` (Lambda ships no SDK); this is the only module that talks to it.

Credentials: an API key from ``$LAMBDA_API_KEY`` or the file ``c.LambdaProvider.api_key_file``
(``~/.lambda_cloud/lambda_keys``, a line ``api_key = <key>``, as Lambda's own tools
write it). The key is sent as a bearer token and appears in no message, log line or
node. Node ids are ``"<region>/<instance id>"``.

Lambda instances carry no tags. The tags the contract needs are kept in the
instance **name** instead, as short hashes of each value (:func:`instance_name`):
``cloudhop-<hub>-<user>-<server>-<role>-<cluster>-<request>``, so a restarted hub still
finds its nodes, a request's node (idempotent launch) and a user's nodes by name; the
reaper lists this hub's nodes by the name prefix ``cloudhop-<hub>-``. The tag values
themselves are known for nodes this process launched, and are otherwise in the hub's
state (the server's ``nodes``), which is what a restarted hub reads back.

``instance-operations/launch`` has no idempotency token, so a retried launch first
looks for an instance with the request's name. "Insufficient capacity" is a
:class:`~.base.CapacityError` (failover), a refused key a
:class:`~.base.CredentialsError`, a quota a :class:`~.base.QuotaError`; 429 and 5xx
are retried. Lambda has no spot market.

``check_available`` also reads ``instance-types``: the regions each type has capacity in
right now. Until it is read again, :meth:`LambdaProvider.offers` marks the catalog's
offers with no capacity ("Lambda has none free now"), so the form shows live availability.

The nodes of a Ray cluster share a firewall ruleset of their own
(``/firewall-rulesets``, :class:`LambdaRuleStore`): the account's inbound rules plus
Ray's ports from ``c.LambdaProvider.ray_network`` (the private network the nodes reach
each other on). Lambda rules admit address ranges, not members, so this is the
narrowest the API allows; it is deleted after the cluster's last node.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time

from traitlets import Float, Unicode

from .base import (
    FAILED,
    PENDING,
    RUNNING,
    STOPPING,
    TAG_HUB,
    TAG_RAY_CLUSTER,
    TAG_REQUEST,
    TAG_ROLE,
    TAG_SERVER,
    TAG_USER,
    TERMINATED,
    CapacityError,
    CredentialsError,
    Node,
    ProviderError,
    QuotaError,
)
from .cloud import CloudProvider, Retry, epoch_of, split_id
from .ray_firewall import CLUSTER_TAG, DESCRIPTION, PORTS, RayRule, RuleInUse, RuleStore, cluster_of, rule_name

DEFAULT_ENDPOINT = "https://cloud.lambda.ai/api/v1"
KEY_ENV = "LAMBDA_API_KEY"
NO_KEY = f"no Lambda Cloud credentials: no API key found (set ${KEY_ENV} or c.LambdaProvider.api_key_file)"

#: the tags an instance name holds, each as the first n hex digits of its value's hash
NAME_FIELDS = ((TAG_HUB, 8), (TAG_USER, 8), (TAG_SERVER, 6), (TAG_ROLE, 2), (TAG_RAY_CLUSTER, 6), (TAG_REQUEST, 16))
NAME_PREFIX = "cloudhop-"

_STATES = {
    "booting": PENDING,
    "active": RUNNING,
    "unhealthy": RUNNING,
    "terminating": STOPPING,
    "preempted": TERMINATED,
    "terminated": TERMINATED,
}


class LambdaAPIError(Exception):
    """An error answer of the Lambda API: HTTP ``status``, Lambda's ``code``
    (``instance-operations/launch/insufficient-capacity``) and message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code}: {message}" if code else message)
        self.status = status
        self.code = code
        self.message = message


def _hash(value) -> str:
    return hashlib.sha256(str(value if value is not None else "").encode()).hexdigest()


def instance_name(tags: dict) -> str:
    """The name a node with ``tags`` gets: :data:`NAME_PREFIX` then a hash per
    :data:`NAME_FIELDS` entry (60 characters; Lambda allows 64)."""
    return NAME_PREFIX + "-".join(_hash(tags.get(k, ""))[:n] for k, n in NAME_FIELDS)


def hub_prefix(hub: str) -> str:
    """The name prefix of every node of ``hub``: what the reaper matches."""
    return f"{NAME_PREFIX}{_hash(hub)[:NAME_FIELDS[0][1]]}-"


def name_matches(name: str, tags: dict, known: dict | None = None) -> bool:
    """Whether an instance called ``name`` carries every tag of ``tags``: a tag the name
    holds is compared by its hash, any other with the ``known`` tags (those this
    process launched it with; unknown: no match)."""
    if not name.startswith(NAME_PREFIX):
        return False
    parts = name[len(NAME_PREFIX):].split("-")
    if len(parts) != len(NAME_FIELDS):
        return False
    fields = {k: (p, n) for (k, n), p in zip(NAME_FIELDS, parts)}
    for key, value in tags.items():
        if key in fields:
            if _hash(value)[:fields[key][1]] != fields[key][0]:
                return False
        elif known is None or known.get(key) != str(value):
            return False
    return True


def read_api_key(path: str) -> str | None:
    """``$LAMBDA_API_KEY``, else the ``api_key = ...`` line of ``path`` (None: neither)."""
    key = os.environ.get(KEY_ENV, "").strip()
    if key:
        return key
    try:
        text = open(os.path.expanduser(path), encoding="utf-8").read()
    except OSError:
        return None
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == "api_key" and value.strip():
            return value.strip()
    return None


class LambdaAPI:
    """The few calls Cloudhop makes, over one ``requests`` session. ``key()`` is asked
    for the key on each call, so a rotated key file is picked up."""

    def __init__(self, endpoint: str, key, timeout: float = 30.0):
        import requests

        self.requests = requests
        self.endpoint = endpoint.rstrip("/")
        self.key = key
        self.timeout = timeout
        self.session = requests.Session()

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        key = self.key()
        if not key:
            raise CredentialsError(NO_KEY)
        reply = self.session.request(method, self.endpoint + path, json=body, timeout=self.timeout,
                                     headers={"Authorization": f"Bearer {key}", "Accept": "application/json"})
        try:
            data = reply.json()
        except ValueError:
            data = {}
        if reply.status_code >= 400:
            error = data.get("error") if isinstance(data, dict) else None
            error = error if isinstance(error, dict) else {}
            raise LambdaAPIError(reply.status_code, str(error.get("code", "")),
                                 str(error.get("message") or reply.reason or "error"))
        return data.get("data") if isinstance(data, dict) else data


class LambdaProvider(CloudProvider):
    """GPU instances on Lambda Cloud. See :class:`~.base.Provider` for the contract."""

    name = "lambda"
    display_name = "Lambda Cloud"
    lists_everywhere = True  # ``instances`` lists every region

    api_key_file = Unicode(
        "~/.lambda_cloud/lambda_keys",
        help=f"File with the API key (a line ``api_key = <key>``), read when ${KEY_ENV} is unset.",
    ).tag(config=True)

    api_endpoint = Unicode(
        "", help=f"Lambda Cloud API base URL. Empty: {DEFAULT_ENDPOINT}."
    ).tag(config=True)

    ssh_key_name = Unicode(
        "", help="Name of an SSH key registered with Lambda Cloud: Lambda requires one on "
        "every launch (Cloudhop itself never uses SSH)."
    ).tag(config=True)

    ray_network = Unicode(
        "10.0.0.0/8", help="Address range a Ray cluster's firewall ruleset admits Ray's ports "
        "from: the private network Lambda instances of a region reach each other on."
    ).tag(config=True)

    availability_seconds = Float(
        60.0, help="Seconds the capacity read from ``instance-types`` is shown before it is "
        "read again."
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._api: LambdaAPI | None = None
        self._tags: dict[str, dict] = {}  # instance name -> tags, for the nodes launched here
        self._tags_lock = threading.Lock()
        #: (read at, {instance type: regions with capacity}) from instance-types
        self._capacity: tuple[float, dict[str, set]] | None = None

    def api(self) -> LambdaAPI:
        if self._api is None:
            self._api = LambdaAPI(self.api_endpoint or DEFAULT_ENDPOINT,
                                  lambda: read_api_key(self.api_key_file))
        return self._api

    # -- errors --------------------------------------------------------------------------
    def _classify(self, err):
        import requests

        if isinstance(err, (requests.ConnectionError, requests.Timeout)):
            return Retry(err)
        if not isinstance(err, LambdaAPIError):
            return err
        text = f"Lambda Cloud {err.code or err.status}: {err.message}"
        low = f"{err.code} {err.message}".lower()
        if "insufficient-capacity" in low or "insufficient capacity" in low or "not enough capacity" in low:
            return CapacityError(text)
        if "quota" in low:
            return QuotaError(text)
        if err.status in (401, 403) or err.code in ("global/invalid-api-key", "global/account-inactive"):
            return CredentialsError(f"Lambda Cloud refused the hub's API key ({err.code or err.status})")
        if err.status == 429 or err.status >= 500:
            return Retry(err)
        return ProviderError(text)

    # -- nodes ---------------------------------------------------------------------------
    def _node(self, inst: dict) -> Node:
        state = _STATES.get(inst.get("status"), FAILED)
        name = inst.get("name") or ""
        with self._tags_lock:
            tags = dict(self._tags.get(name, {}))
        region = (inst.get("region") or {}).get("name", "")
        private, public = inst.get("private_ip"), inst.get("ip")
        return self.vm_node(
            where=region,
            native_id=inst["id"],
            state=state,
            tags=tags,
            private=private,
            public=public,
            default_port=self.node_port,
            info={"instance_type": (inst.get("instance_type") or {}).get("name"), "name": name, "spot": False},
            creating="Lambda Cloud is booting the instance",
            running="the instance is up; the server starts from cloud-init",
            status=inst.get("status", ""),
        )

    def _instances(self) -> list[dict]:
        return [i for i in self.api().call("GET", "/instances") or []
                if (i.get("name") or "").startswith(NAME_PREFIX)]

    def _blocking_find(self, where, tags):
        out = []
        for inst in self._instances():
            if _STATES.get(inst.get("status")) == TERMINATED:
                continue
            with self._tags_lock:
                known = self._tags.get(inst.get("name"))
            if name_matches(inst.get("name", ""), tags, known):
                node = self._node(inst)
                if where not in ("*", None) and node.region != where:
                    continue
                # a tag the name matched is the caller's value: show it
                out.append(node if node.tags else Node(**{**node.to_dict(), "tags": {
                    k: str(v) for k, v in tags.items() if k in dict(NAME_FIELDS)}}))
        return out

    def _blocking_describe(self, where):
        return {n.id: n for n in map(self._node, self._instances())}

    def _blocking_create_node(self, spec, tags, user_data, rule):
        if spec.spot:
            raise ProviderError("Lambda Cloud has no spot instances", offer=spec.offer)
        if not self.ssh_key_name:
            raise ProviderError("Lambda Cloud needs an SSH key name on every launch: set "
                                "c.LambdaProvider.ssh_key_name", offer=spec.offer)
        name = instance_name(tags)
        with self._tags_lock:
            self._tags[name] = dict(tags)
        # no idempotency token: an earlier attempt of this request may have made it
        for inst in self._instances():
            if inst.get("name") == name and _STATES.get(inst.get("status")) != TERMINATED:
                return self._node(inst)
        body = {
            "region_name": spec.offer.region,
            "instance_type_name": spec.offer.instance_type,
            "ssh_key_names": [self.ssh_key_name],
            "quantity": 1,
            "name": name,
            "user_data": user_data,
        }
        if rule is not None:
            body["firewall_rulesets"] = [{"id": rule}]
        data = self.api().call("POST", "/instance-operations/launch", body)
        [instance_id] = (data or {}).get("instance_ids") or [None]
        if not instance_id:
            raise LambdaAPIError(500, "", "the launch answer named no instance")
        try:
            return self._node(self.api().call("GET", f"/instances/{instance_id}"))
        except LambdaAPIError as err:
            if err.status != 404:
                raise
            # eventually consistent: the id is known, the details come with the next poll
            return Node(f"{spec.offer.region}/{instance_id}", self.name, spec.offer.region, PENDING,
                        port=spec.port, tags=dict(tags), info={"name": name})

    def _blocking_terminate(self, node_id):
        _, instance_id = split_id(node_id)
        try:
            data = self.api().call("POST", "/instance-operations/terminate", {"instance_ids": [instance_id]})
        except LambdaAPIError as err:
            if err.status == 404:
                return None
            raise
        for inst in (data or {}).get("terminated_instances") or []:
            if inst.get("id") == instance_id:
                return self._node(inst)
        return None

    # -- availability --------------------------------------------------------------------
    def _blocking_check(self):
        if not read_api_key(self.api_key_file):
            return NO_KEY
        try:
            self._read_capacity()
        except Exception as err:  # noqa: BLE001 - a reason, never a crash
            return self._reason(err)
        if not self.ssh_key_name:
            return "Lambda Cloud needs an SSH key name: set c.LambdaProvider.ssh_key_name"
        return None

    async def check_available(self):
        """See :meth:`CloudProvider.check_available`; also reads ``instance-types`` again
        once the last read is older than ``availability_seconds`` (the form asks on every
        render), so the offers' "none free now" stays live. A failed re-read is logged
        and leaves the offers unmarked."""
        hit = self._capacity
        if hit is not None and time.monotonic() - hit[0] > self.availability_seconds:
            try:
                await asyncio.to_thread(self._read_capacity)
            except Exception as err:  # noqa: BLE001 - the availability below says what is wrong
                self.log.debug("lambda: could not read instance-types: %s", type(err).__name__)
        return await super().check_available()

    def _read_capacity(self) -> dict[str, set]:
        types = self.api().call("GET", "/instance-types") or {}
        capacity = {name: {r.get("name") for r in entry.get("regions_with_capacity_available") or []}
                    for name, entry in types.items()}
        self._capacity = (time.monotonic(), capacity)
        return capacity

    def offers(self):
        """Catalog rows; while a recent ``instance-types`` read is known, those without
        capacity now say so in their note (and report 0 available)."""
        offers = super().offers()
        hit = self._capacity
        if not hit or time.monotonic() - hit[0] > self.availability_seconds:
            return offers
        import dataclasses

        out = []
        for o in offers:
            free = o.region in hit[1].get(o.instance_type, ())
            out.append(dataclasses.replace(o, available=None if free else 0,
                                           note=o.note if free else "Lambda has none free now"))
        return out

    def _blocking_check_catalog(self, offers):
        """The instance types the account can launch: every type ``instance-types`` lists,
        in the catalog's regions (Lambda does not say per region what it never has)."""
        types = self.api().call("GET", "/instance-types") or {}
        return [(o.instance_type, o.region, ()) for o in offers if o.instance_type in types]

    # -- Ray firewall: a ruleset per cluster ------------------------------------------------
    def _rule_store(self):
        return LambdaRuleStore(api=self.api, ray_network=lambda: self.ray_network, log=self.log)

    def _blocking_release_rules(self, where, hub, cluster=None, exclude=()):
        rules = self.ray_rules.store.list(where, hub)
        if not rules:
            return []
        nodes = [n for n in self._blocking_find("*", {TAG_HUB: hub}) if n.region == where]
        # a node launched by an earlier hub process: its cluster is only in its name
        known = {n.id: n for n in nodes}
        for n in list(nodes):
            if cluster_of(n.tags) is None:
                for r in rules:
                    if name_matches(n.info.get("name", ""), {TAG_RAY_CLUSTER: r.cluster}):
                        known[n.id] = Node(**{**n.to_dict(), "tags": {**n.tags, CLUSTER_TAG: r.cluster}})
        return self.ray_rules.sweep(where, rules, known.values(), cluster=cluster, exclude=exclude)


class LambdaRuleStore(RuleStore):
    """A Ray cluster's rule on Lambda Cloud (see :class:`~.ray_firewall.RuleStore`): a
    firewall ruleset in the cluster's region named :func:`~.ray_firewall.rule_name`,
    holding the account's inbound rules (so the node is reachable as any other) plus
    Ray's ports from the provider's ``ray_network``. Rulesets carry no labels: the hub and
    cluster are in the Ray rule's description (JSON), as on GCP."""

    def __init__(self, *, api, ray_network, log):
        self.api = api
        self.ray_network = ray_network
        self.log = log

    def _rulesets(self, region: str) -> list[dict]:
        return [r for r in self.api().call("GET", "/firewall-rulesets") or []
                if (r.get("region") or {}).get("name") == region
                and str(r.get("name", "")).startswith("cloudhop-ray-")]

    @staticmethod
    def _owner(ruleset: dict) -> dict:
        for rule in ruleset.get("rules") or []:
            text = rule.get("description") or ""
            if "{" in text:
                try:
                    return json.loads(text[text.index("{"):])
                except ValueError:
                    continue
        return {}

    def ensure(self, where, tags):
        cluster = cluster_of(tags)
        name = rule_name(cluster)
        for ruleset in self._rulesets(where):
            if ruleset.get("name") == name:
                return ruleset["id"]
        owner = json.dumps({TAG_HUB: str(tags.get(TAG_HUB, "")), CLUSTER_TAG: cluster}, sort_keys=True)
        account = [r for r in self.api().call("GET", "/firewall-rules") or []
                   if not str(r.get("description", "")).startswith("Cloudhop")]
        rules = account + [{"protocol": "tcp", "port_range": list(PORTS), "source_network": self.ray_network(),
                            "description": f"{DESCRIPTION} {owner}"}]
        made = self.api().call("POST", "/firewall-rulesets", {"name": name, "region": where, "rules": rules})
        self.log.info("lambda: made firewall ruleset %s for Ray cluster %s", made.get("id"), cluster)
        return made["id"]

    def list(self, where, hub):
        out = []
        for ruleset in self._rulesets(where):
            owner = self._owner(ruleset)
            if owner.get(TAG_HUB) == hub and owner.get(CLUSTER_TAG):
                created = ruleset.get("created")
                out.append(RayRule(ruleset["id"], owner[CLUSTER_TAG], epoch_of(created)))
        return out

    def delete(self, where, rule):
        try:
            self.api().call("DELETE", f"/firewall-rulesets/{rule.id}")
        except LambdaAPIError as err:
            if err.status == 404:
                return
            if err.status == 409:  # an instance (one still terminating) uses it
                raise RuleInUse(rule.id) from err
            raise


__all__ = ["LambdaProvider", "LambdaRuleStore", "instance_name", "hub_prefix", "name_matches", "read_api_key"]
