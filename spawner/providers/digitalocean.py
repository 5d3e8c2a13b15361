"""DigitalOcean: GPU droplets through ``pydo``, DigitalOcean's own client (the only
module that imports it).

Credentials: an API token from ``$DIGITALOCEAN_TOKEN`` (or ``$DIGITALOCEAN_ACCESS_TOKEN``,
as ``doctl`` names it) or the file ``c.DigitalOceanProvider.token_file``; it is sent as a
bearer token and appears in no message, log line or node. Node ids are
``"<region>/<droplet id>"``.

Droplet tags are plain words (letters, digits, ``:``, ``-``, ``_``), so a Cloudhop tag
is the word ``<key>:<value>``; a value with other characters (a user ``ada@example.org``)
is written ``b32-<base32 of the value>`` and read back exactly (:func:`tag_word`,
:func:`read_tags`). Listing filters by one tag on the server (``tag_name``) and the
rest here. Droplets have no idempotency token: a launch (and each retry) first looks
for a droplet carrying its request's tag. A size without capacity in the region is a
:class:`~.base.CapacityError`, a droplet or GPU limit a :class:`~.base.QuotaError`, a
refused token a :class:`~.base.CredentialsError`; 429 and 5xx are retried.
DigitalOcean has no spot droplets.

The droplets of a Ray cluster carry the cluster's tag, and a cloud firewall of the
cluster applies to that tag (:class:`DigitalOceanRuleStore`): Ray's ports from the tag
only, the server port as before, all outbound. A DigitalOcean firewall allows only what
it lists, so it closes every other port of those droplets; it is deleted after the
cluster's last droplet. Firewalls are account-wide: the owner hub is in the name.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from types import SimpleNamespace

from traitlets import Unicode

from .base import (
    FAILED,
    PENDING,
    RUNNING,
    STOPPING,
    TAG_HUB,
    TAG_RAY_CLUSTER,
    TAG_REQUEST,
    CapacityError,
    CredentialsError,
    Node,
    ProviderError,
    QuotaError,
)
from .cloud import TAG_PORT, CloudProvider, Retry, epoch_of, split_id
from .ray_firewall import PORTS, RayRule, RuleStore, cluster_of, rule_name

INSTALL_HINT = "the DigitalOcean provider needs pydo"
TOKEN_ENVS = ("DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN")
DEFAULT_ENDPOINT = "https://api.digitalocean.com"
_WORD = re.compile(r"^[A-Za-z0-9_-]*$")
PAGE = 200
NO_TOKEN = ("no DigitalOcean credentials: no API token found (set $DIGITALOCEAN_TOKEN or "
            "c.DigitalOceanProvider.token_file)")

_STATES = {"new": PENDING, "active": RUNNING, "off": STOPPING, "archive": STOPPING}


def _sdk():
    """pydo and azure-core's errors, imported on first use."""
    try:
        import pydo
        from azure.core import exceptions
        from azure.core.pipeline.policies import SansIOHTTPPolicy
    except ImportError as err:  # pragma: no cover - depends on the install
        raise CredentialsError(INSTALL_HINT) from err

    class PlainBearer(SansIOHTTPPolicy):
        """The token as a bearer header on a plain-HTTP endpoint (a local test server),
        which azure-core's own bearer policy refuses."""

        def __init__(self, token: str):
            self._token = token

        def on_request(self, request):
            request.http_request.headers["Authorization"] = f"Bearer {self._token}"

    return SimpleNamespace(pydo=pydo, errors=exceptions, PlainBearer=PlainBearer)


def tag_word(key: str, value) -> str:
    """A Cloudhop tag as one droplet tag: ``key:value``, the value base32-coded when it
    is not a plain word."""
    value = str(value)
    if not _WORD.match(value) or value.startswith("b32-"):
        value = "b32-" + base64.b32encode(value.encode()).decode().rstrip("=").lower()
    return f"{key}:{value}"


def read_tags(words) -> dict:
    """The Cloudhop tags among a droplet's tag words (others are ignored)."""
    out = {}
    for word in words or ():
        key, sep, value = str(word).partition(":")
        if not sep or not key.startswith("cloudhop-"):
            continue
        if value.startswith("b32-"):
            coded = value[4:].upper()
            try:
                value = base64.b32decode(coded + "=" * (-len(coded) % 8)).decode()
            except (ValueError, UnicodeDecodeError):
                continue
        out[key] = value
    return out


def droplet_name(request_id: str) -> str:
    return "cloudhop-" + hashlib.sha256(request_id.encode()).hexdigest()[:20]


def read_token(path: str) -> str | None:
    for env in TOKEN_ENVS:
        if os.environ.get(env, "").strip():
            return os.environ[env].strip()
    try:
        text = open(os.path.expanduser(path), encoding="utf-8").read().strip()
    except OSError:
        return None
    return text or None


class DigitalOceanProvider(CloudProvider):
    """GPU droplets on DigitalOcean. See :class:`~.base.Provider` for the contract."""

    name = "digitalocean"
    display_name = "DigitalOcean"
    lists_everywhere = True  # one list covers every region; firewalls are account-wide

    token_file = Unicode(
        "~/.config/cloudhop/digitalocean-token",
        help="File holding the API token, read when $DIGITALOCEAN_TOKEN is unset.",
    ).tag(config=True)

    api_endpoint = Unicode("", help=f"API base URL. Empty: {DEFAULT_ENDPOINT}.").tag(config=True)

    image = Unicode(
        "", help="Image slug or id every droplet boots. Empty: DigitalOcean's AI/ML-ready GPU "
        "image for the size (``gpu-h100x1-base``, ``gpu-h100x8-base``), which has the NVIDIA "
        "driver and Docker.",
    ).tag(config=True)

    vpc_uuid = Unicode("", help="VPC the droplets join. Empty: the region's default VPC.").tag(config=True)

    ssh_key_ids = Unicode(
        "", help="Comma-separated SSH key ids or fingerprints to add (Cloudhop itself never logs in)."
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._client = None

    # -- client --------------------------------------------------------------------------
    def client(self):
        if self._client is None:
            sdk = _sdk()
            token = read_token(self.token_file)
            if not token:
                raise CredentialsError(NO_TOKEN)
            endpoint = self.api_endpoint or DEFAULT_ENDPOINT
            extra = {}
            if endpoint.startswith("http://"):  # a local test server: the token goes without TLS
                extra["authentication_policy"] = sdk.PlainBearer(token)
            self._client = sdk.pydo.Client(token, endpoint=endpoint, retry_total=3,
                                           retry_backoff_factor=self.retry_base_delay, **extra)
        return self._client

    # -- errors --------------------------------------------------------------------------
    def _classify(self, err):
        exceptions = _sdk().errors
        if isinstance(err, exceptions.ClientAuthenticationError):
            return CredentialsError("DigitalOcean refused the hub's token")
        if isinstance(err, exceptions.ServiceRequestError):
            return Retry(err)
        if not isinstance(err, exceptions.HttpResponseError):
            return err
        body = {}
        try:
            body = err.response.json() or {}
        except Exception:  # noqa: BLE001 - the status then
            pass
        message = str(body.get("message") or err.reason or err.status_code)
        code = str(body.get("id") or err.status_code)
        text = f"DigitalOcean {code}: {message}"
        low = message.lower()
        if err.status_code == 422 and ("capacity" in low or "not available" in low or "unavailable" in low):
            return CapacityError(text)
        if err.status_code == 429 or err.status_code >= 500:
            return Retry(err)
        if "limit" in low or "quota" in low:
            return QuotaError(text)
        if err.status_code in (401, 403):
            return CredentialsError(f"DigitalOcean {code}: the hub's token was refused")
        return ProviderError(text)

    # -- droplets ------------------------------------------------------------------------
    def image_for(self, size: str) -> str:
        if self.image:
            return self.image
        return re.sub(r"-\d+gb$", "", size) + "-base"

    def droplet_body(self, spec, tags: dict, user_data: str) -> dict:
        body = {
            "name": droplet_name(spec.request_id),
            "region": spec.offer.region,
            "size": spec.offer.instance_type,
            "image": self.image_for(spec.offer.instance_type),
            "tags": [tag_word(k, v) for k, v in sorted(tags.items())],
            "user_data": user_data,
            "monitoring": False,
        }
        if self.vpc_uuid:
            body["vpc_uuid"] = self.vpc_uuid
        if self.ssh_key_ids:
            body["ssh_keys"] = [k.strip() for k in self.ssh_key_ids.split(",") if k.strip()]
        return body

    def _node(self, d: dict) -> Node:
        state = _STATES.get(d.get("status"), FAILED)
        tags = read_tags(d.get("tags"))
        v4 = (d.get("networks") or {}).get("v4") or []
        private = next((n["ip_address"] for n in v4 if n.get("type") == "private"), None)
        public = next((n["ip_address"] for n in v4 if n.get("type") == "public"), None)
        return self.vm_node(
            where=(d.get("region") or {}).get("slug", ""),
            native_id=d["id"],
            state=state,
            tags=tags,
            private=private,
            public=public,
            info={"instance_type": d.get("size_slug"), "spot": False, "launched_at": epoch_of(d.get("created_at"))},
            creating="DigitalOcean is creating the droplet",
            running="the droplet is up; the server starts from cloud-init",
            status=d.get("status", ""),
        )

    def _droplets(self, tags: dict) -> list[dict]:
        """Droplets carrying all ``tags``: one tag asked of the API (all pages), the rest
        checked here."""
        first = (TAG_REQUEST if TAG_REQUEST in tags else TAG_HUB if TAG_HUB in tags else None)
        out, page = [], 1
        while True:
            kwargs = {"per_page": PAGE, "page": page}
            if first:
                kwargs["tag_name"] = tag_word(first, tags[first])
            reply = self.client().droplets.list(**kwargs)
            out += reply.get("droplets") or []
            if not ((reply.get("links") or {}).get("pages") or {}).get("next"):
                break
            page += 1
        return [d for d in out if all(read_tags(d.get("tags")).get(k) == str(v) for k, v in tags.items())]

    def _blocking_find(self, where, tags):
        nodes = [self._node(d) for d in self._droplets(dict(tags))]
        return [n for n in nodes if where in ("*", None) or n.region == where]

    def _blocking_describe(self, where):
        nodes = [self._node(d) for d in self._droplets({}) if TAG_REQUEST in read_tags(d.get("tags"))]
        return {n.id: n for n in nodes}

    def _blocking_create_node(self, spec, tags, user_data, rule):
        """Create the droplet (a Ray cluster's one carries its cluster's tag, which its
        firewall ``rule`` applies to); a retry finds the droplet an earlier try made."""
        if spec.spot:
            raise ProviderError("DigitalOcean has no spot droplets", offer=spec.offer)
        found = self._droplets({TAG_REQUEST: spec.request_id})
        if found:
            return self._node(found[0])
        # no SDK retries: a create is not idempotent; launch() retries, looking first
        reply = self.client().droplets.create(body=self.droplet_body(spec, tags, user_data), retry_total=0)
        return self._node(reply["droplet"])

    def _blocking_terminate(self, node_id):
        exceptions = _sdk().errors
        _, droplet = split_id(node_id)
        try:
            self.client().droplets.destroy(int(droplet))
        except exceptions.ResourceNotFoundError:
            return None
        return None  # a destroyed droplet is gone from the API at once

    def _blocking_check(self):
        if not read_token(self.token_file):
            return NO_TOKEN
        try:
            self.client().account.get()
        except Exception as err:  # noqa: BLE001 - a reason, never a crash
            return self._reason(err)
        return None

    def _blocking_check_catalog(self, offers):
        """The sizes the account may create, in the regions each is offered (``/v2/sizes``)."""
        where: dict[str, set] = {}
        page = 1
        while True:
            reply = self.client().sizes.list(per_page=PAGE, page=page)
            for size in reply.get("sizes") or []:
                if size.get("available", True):
                    where[size["slug"]] = set(size.get("regions") or [])
            if not ((reply.get("links") or {}).get("pages") or {}).get("next"):
                break
            page += 1
        return [(o.instance_type, o.region, ()) for o in offers if o.region in where.get(o.instance_type, ())]

    # -- Ray firewall ------------------------------------------------------------------------
    def _rule_store(self):
        return DigitalOceanRuleStore(client=self.client, log=self.log)


class DigitalOceanRuleStore(RuleStore):
    """A Ray cluster's rule on DigitalOcean (see :class:`~.ray_firewall.RuleStore`): a
    cloud firewall applied to the droplets with the cluster's tag word, named
    ``<rule_name(cluster)>.<hub hash>``, admitting Ray's ports from that tag, the server
    port from anywhere (as a droplet without a firewall is) and all outbound traffic.
    Firewalls are account-wide, so ``where`` is not used."""

    def __init__(self, *, client, log):
        self.client = client
        self.log = log

    @staticmethod
    def name(cluster: str, hub: str) -> str:
        return f"{rule_name(cluster)}.{hashlib.sha256(hub.encode()).hexdigest()[:12]}"

    def _firewalls(self) -> list[dict]:
        out, page = [], 1
        while True:
            reply = self.client().firewalls.list(per_page=PAGE, page=page)
            out += [f for f in reply.get("firewalls") or [] if str(f.get("name", "")).startswith("cloudhop-ray-")]
            if not ((reply.get("links") or {}).get("pages") or {}).get("next"):
                return out
            page += 1

    def ensure(self, where, tags):
        cluster = cluster_of(tags)
        name = self.name(cluster, str(tags.get(TAG_HUB, "")))
        for fw in self._firewalls():
            if fw.get("name") == name:
                return fw["id"]
        word = tag_word(TAG_RAY_CLUSTER, cluster)
        anywhere = {"addresses": ["0.0.0.0/0", "::/0"]}
        server_port = str(tags.get(TAG_PORT, "8888"))
        body = {
            "name": name,
            "tags": [word],
            "inbound_rules": [
                {"protocol": "tcp", "ports": f"{PORTS[0]}-{PORTS[1]}", "sources": {"tags": [word]}},
                {"protocol": "tcp", "ports": server_port, "sources": anywhere},
            ],
            "outbound_rules": [{"protocol": p, "ports": "all" if p != "icmp" else "0", "destinations": anywhere}
                               for p in ("tcp", "udp", "icmp")],
        }
        made = self.client().firewalls.create(body=body)["firewall"]
        self.log.info("digitalocean: made firewall %s for Ray cluster %s", made["id"], cluster)
        return made["id"]

    def list(self, where, hub):
        suffix = "." + hashlib.sha256(hub.encode()).hexdigest()[:12]
        out = []
        for fw in self._firewalls():
            if not fw.get("name", "").endswith(suffix):
                continue
            cluster = read_tags(fw.get("tags")).get(TAG_RAY_CLUSTER)
            if cluster:
                out.append(RayRule(fw["id"], cluster, epoch_of(fw.get("created_at"))))
        return out

    def delete(self, where, rule):
        exceptions = _sdk().errors
        try:
            self.client().firewalls.delete(rule.id)
        except exceptions.ResourceNotFoundError:
            return


__all__ = ["DigitalOceanProvider", "DigitalOceanRuleStore", "droplet_name", "read_tags", "tag_word"]
