"""OCI: GPU shape VMs on Oracle Cloud Infrastructure through the ``oci`` SDK (the only
module that imports it).

Credentials: the SDK's config file (``~/.oci/config``, profile ``DEFAULT``) or, on an
OCI VM, instance principals (``c.OCIProvider.auth = "instance_principal"``). Node ids
are ``"<region>/<instance OCID>"``; tags are freeform tags. OCI reports missing capacity
as a server error (500 "Out of host capacity."), which the SDK's retry strategy would
retry for minutes, so ``LaunchInstance`` goes out without it (with an
``opc-retry-token``, so OCI drops duplicates) and :meth:`CloudProvider.launch` retries
only throttling and other server errors; every other call uses an OCI retry strategy
(429 and any 5xx, exponential backoff with jitter).

The nodes of a Ray cluster (:data:`~cloudhop.spawner.providers.base.TAG_RAY_CLUSTER`) join a network
security group of their own in the subnet's VCN (through the VNIC's ``nsgIds``), tagged
like the nodes, whose rules admit Ray's ports from the group itself only; it is deleted
once the cluster's last instance is gone (:class:`OCIRuleStore`, driven as
:mod:`cloudhop.spawner.providers.ray_firewall` says).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re

from traitlets import Enum, Integer, TraitError, Unicode, validate

from .base import (
    FAILED,
    PENDING,
    RUNNING,
    STOPPING,
    TAG_HUB,
    TAG_REQUEST,
    TAG_SERVER,
    TAG_USER,
    TERMINATED,
    CapacityError,
    CredentialsError,
    LaunchSpec,
    Node,
    ProviderError,
    QuotaError,
)
from .ray_firewall import (
    CLUSTER_TAG, PORTS, RayRule, RuleInUse, RuleStore, cluster_of, rule_name,
)
from ..validate import check_number
from .aliases import Renamed
from .cloud import CloudProvider, Retry, split_id

INSTALL_HINT = "the OCI provider needs the oci SDK: pip install 'cloudhop[oci]'"

_STATES = {
    "PROVISIONING": PENDING,
    "STARTING": PENDING,
    "MOVING": PENDING,
    "CREATING_IMAGE": PENDING,
    "RUNNING": RUNNING,
    "STOPPING": STOPPING,
    "STOPPED": STOPPING,
    "TERMINATING": STOPPING,
    "TERMINATED": TERMINATED,
}
QUOTA_CODES = {"LimitExceeded", "QuotaExceeded"}
CREDENTIAL_STATUS = {401}
_AD = re.compile(r"^(?:[^:]+:)?(?P<region>.+)-(?P<ad>AD-\d+)$", re.IGNORECASE)
#: OCI's boot volume sizes (GB)
BOOT_VOLUME_GB = (50, 32768)
#: an NSG in these states is gone or going
_NSG_GONE = {"TERMINATING", "TERMINATED"}


def _sdk():
    """The SDK, imported on first use (a missing SDK is a reason, not a crash)."""
    try:
        import oci
    except ImportError as err:  # pragma: no cover - depends on the install
        raise CredentialsError(INSTALL_HINT) from err
    return oci


def catalog_ad(name: str) -> str:
    """An availability domain as the catalog spells it: ``"Uocm:EU-AMSTERDAM-1-AD-1"``
    -> ``"eu-amsterdam-1-AD-1"``."""
    m = _AD.match(name)
    if not m:
        return name
    return f"{m['region'].lower()}-{m['ad'].upper()}"


class OCIProvider(CloudProvider):
    """GPU VMs on OCI. See :class:`~.base.Provider` for the contract."""

    name = "oci"
    display_name = "OCI"

    auth = Enum(
        ["config_file", "instance_principal"], default_value="config_file",
        help="How the hub authenticates: the SDK config file (config_file, profile) or "
        "the instance principal of the OCI VM the hub runs on.",
    ).tag(config=True)

    config_file = Unicode(
        "~/.oci/config", help="OCI SDK config file (used when auth is config_file)."
    ).tag(config=True)

    profile = Unicode("DEFAULT", help="Profile in config_file.").tag(config=True)

    compartment_id = Unicode(
        "", help="Compartment OCID nodes are created in. Empty: the tenancy (root compartment)."
    ).tag(config=True)

    subnet_id = Unicode(
        "", help="Subnet OCID of the nodes (required: OCI has no default network). Its "
        "security list must admit the hub on the server port."
    ).tag(config=True)

    image_id = Unicode(
        "", help="Image OCID every node boots. Empty: the newest platform GPU image "
        "(display name with 'GPU') of image_operating_system compatible with the shape."
    ).tag(config=True)

    image_operating_system = Unicode(
        "Oracle Linux", help="Operating system the default image is chosen from."
    ).tag(config=True)

    assign_public_ip = Renamed("public_ip")

    disk_gb = Integer(100, help="Boot volume size (GB) of every node.").tag(config=True)
    boot_volume_gb = Renamed("disk_gb")

    api_endpoint = Unicode(
        "", help="Endpoint override for the Core and Identity APIs (a local test server). "
        "Empty: the region's public endpoints."
    ).tag(config=True)
    service_endpoint = Renamed("api_endpoint")

    api_attempts = Integer(
        6, help="Attempts (OCI retry strategy) for read and terminate calls."
    ).tag(config=True)

    @validate("disk_gb", "boot_volume_gb")
    def _valid_boot_volume(self, proposal):
        value = check_number(proposal, minimum=BOOT_VOLUME_GB[0], integer=True, unit="GB")
        if value > BOOT_VOLUME_GB[1]:
            raise TraitError(f"c.OCIProvider.{proposal['trait'].name} must be a whole number of GB from "
                             f"{BOOT_VOLUME_GB[0]} to {BOOT_VOLUME_GB[1]}, not {value!r}")
        return value

    @validate("subnet_id", "compartment_id", "image_id")
    def _valid_ocid(self, proposal):
        name, value = proposal["trait"].name, proposal["value"].strip()
        kind = {"subnet_id": "subnet", "compartment_id": "", "image_id": "image"}[name]
        prefix = f"ocid1.{kind}." if kind else "ocid1."
        if value and not value.startswith(prefix):
            raise TraitError(f"c.OCIProvider.{name} must be an OCID ('{prefix}...') or empty, not {value!r}")
        return value

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._vcns: dict[str, str] = {}
        self._clients: dict[tuple[str, str], object] = {}
        self._base_config = None
        self._ips: dict[str, tuple[str | None, str | None]] = {}
        self._ads: dict[str, list[str]] = {}
        self._images: dict[tuple[str, str], str] = {}

    # -- clients -------------------------------------------------------------------------
    def _config(self, region: str) -> tuple[dict, dict]:
        """(config, extra client kwargs) for ``region``; never logged."""
        oci = _sdk()
        if self.auth == "instance_principal":
            signer = oci.auth.signers.InstancePrincipalsSecurityTokenSigner()
            return {"region": region, "tenancy": signer.tenancy_id}, {"signer": signer}
        if self._base_config is None:
            cfg = oci.config.from_file(os.path.expanduser(self.config_file), self.profile)
            oci.config.validate_config(cfg)
            self._base_config = cfg
        return dict(self._base_config, region=region), {}

    def tenancy(self) -> str:
        cfg, _ = self._config(self.regions[0] if self.regions else "us-ashburn-1")
        return cfg["tenancy"]

    def compartment(self) -> str:
        return self.compartment_id or self.tenancy()

    def retry_strategy(self):
        oci = _sdk()
        return oci.retry.RetryStrategyBuilder(
            max_attempts_check=True,
            max_attempts=self.api_attempts,
            total_elapsed_time_check=True,
            total_elapsed_time_seconds=120,
            retry_max_wait_between_calls_seconds=10,
            retry_base_sleep_time_seconds=self.retry_base_delay,
            service_error_check=True,
            service_error_retry_on_any_5xx=True,
            service_error_retry_config={429: []},
            backoff_type=oci.retry.BACKOFF_FULL_JITTER_EQUAL_ON_THROTTLE_VALUE,
        ).get_retry_strategy()

    def client(self, region: str, kind: str = "compute"):
        """The region's ``compute``, ``network`` or ``identity`` client."""
        key = (kind, region)
        if key not in self._clients:
            oci = _sdk()
            cls = {
                "compute": oci.core.ComputeClient,
                "network": oci.core.VirtualNetworkClient,
                "identity": oci.identity.IdentityClient,
            }[kind]
            config, extra = self._config(region)
            kwargs = dict(extra, retry_strategy=self.retry_strategy(), timeout=(10, 60))
            if self.api_endpoint:
                kwargs["service_endpoint"] = self.api_endpoint
            self._clients[key] = cls(config, **kwargs)
        return self._clients[key]

    # -- errors --------------------------------------------------------------------------
    def _classify(self, err):
        oci = _sdk()
        exc = oci.exceptions
        if isinstance(err, (exc.ConfigFileNotFound, exc.InvalidConfig, exc.InvalidPrivateKey,
                            exc.MissingPrivateKeyPassphrase, exc.ProfileNotFound)):
            return CredentialsError(f"no usable OCI credentials ({type(err).__name__}; "
                                    f"see c.OCIProvider.config_file / auth)")
        if isinstance(err, (exc.RequestException, exc.ConnectTimeout)):
            return Retry(err)
        if not isinstance(err, exc.ServiceError):
            return err
        text = f"OCI {err.code}: {err.message}"
        if "out of host capacity" in (err.message or "").lower() or err.code == "OutOfHostCapacity":
            return CapacityError(text)
        if err.code in QUOTA_CODES or "service limits were exceeded" in (err.message or ""):
            return QuotaError(text)
        if err.status in CREDENTIAL_STATUS:
            return CredentialsError(f"OCI {err.code}: the hub's credentials were refused")
        if err.status == 429 or err.status >= 500:
            return Retry(err)
        return ProviderError(text)

    # -- lookups -------------------------------------------------------------------------
    def availability_domains(self, region: str) -> list[str]:
        if region not in self._ads:
            reply = self.client(region, "identity").list_availability_domains(self.tenancy())
            self._ads[region] = [ad.name for ad in reply.data]
        return self._ads[region]

    def ads_for(self, spec: LaunchSpec) -> list[str]:
        """Availability domains a launch tries in turn: the requested one, else the
        offer's (as the region names them), else the region's first."""
        ads = self.availability_domains(spec.offer.region)
        wanted = [spec.zone] if spec.zone else list(spec.offer.zones)
        found = [ad for want in wanted for ad in ads if catalog_ad(ad).lower() == catalog_ad(want).lower()]
        if found:
            return list(dict.fromkeys(found))
        if not ads:
            raise ProviderError(f"OCI region {spec.offer.region} lists no availability domain")
        return ads[:1]

    def _image(self, region: str, shape: str) -> str:
        if self.image_id:
            return self.image_id
        key = (region, shape)
        if key not in self._images:
            oci = _sdk()
            images = oci.pagination.list_call_get_all_results(
                self.client(region).list_images, self.compartment(),
                operating_system=self.image_operating_system, shape=shape,
                sort_by="TIMECREATED", sort_order="DESC",
            ).data
            gpu = [i for i in images if "GPU" in (i.display_name or "")]
            if not gpu:
                raise ProviderError(f"OCI: no {self.image_operating_system} GPU image for {shape} "
                                    f"in {region}; set c.OCIProvider.image_id")
            self._images[key] = gpu[0].id
        return self._images[key]

    def _addresses(self, region: str, instance_id: str) -> tuple[str | None, str | None]:
        """(private, public) IP of a running instance: two calls once, then remembered."""
        if instance_id not in self._ips:
            oci = _sdk()
            attachments = oci.pagination.list_call_get_all_results(
                self.client(region).list_vnic_attachments, self.compartment(), instance_id=instance_id
            ).data
            attached = [a for a in attachments if a.lifecycle_state == "ATTACHED"]
            if not attached:
                return None, None
            vnic = self.client(region, "network").get_vnic(attached[0].vnic_id).data
            self._ips[instance_id] = (vnic.private_ip, vnic.public_ip)
        return self._ips[instance_id]

    # -- payloads ------------------------------------------------------------------------
    def launch_details(self, spec: LaunchSpec, tags: dict, user_data: str, ad: str, image: str,
                       nsg_ids: list | None = None):
        """The ``LaunchInstanceDetails`` for a spec, its VNIC in ``nsg_ids`` (pure)."""
        models = _sdk().core.models
        details = models.LaunchInstanceDetails(
            availability_domain=ad,
            compartment_id=self.compartment(),
            shape=spec.offer.instance_type,
            display_name=f"cloudhop-{spec.role}-{hashlib.sha256(spec.request_id.encode()).hexdigest()[:12]}",
            freeform_tags=dict(tags),
            metadata={"user_data": base64.b64encode(user_data.encode()).decode()},
            source_details=models.InstanceSourceViaImageDetails(
                image_id=image, boot_volume_size_in_gbs=self.disk_gb
            ),
            create_vnic_details=models.CreateVnicDetails(
                subnet_id=self.subnet_id, assign_public_ip=self.public_ip,
                nsg_ids=list(nsg_ids) if nsg_ids else None,
            ),
        )
        if spec.spot:
            details.preemptible_instance_config = models.PreemptibleInstanceConfigDetails(
                preemption_action=models.TerminatePreemptionAction(preserve_boot_volume=False)
            )
        return details

    # -- blocking calls ------------------------------------------------------------------
    def _node(self, region: str, inst) -> Node:
        state = _STATES.get(inst.lifecycle_state, FAILED)
        tags = dict(inst.freeform_tags or {})
        private = public = None
        if state == RUNNING:
            private, public = self._addresses(region, inst.id)
        return self.vm_node(
            where=region,
            native_id=inst.id,
            state=state,
            tags=tags,
            private=private,
            public=public,
            info={
                "instance_type": inst.shape,
                "zone": catalog_ad(inst.availability_domain or ""),
                "spot": inst.preemptible_instance_config is not None,
                "launched_at": inst.time_created.timestamp() if inst.time_created else None,
            },
            creating="OCI is provisioning the instance",
            status=inst.lifecycle_state,
        )

    def _instances(self, region: str) -> list:
        oci = _sdk()
        return oci.pagination.list_call_get_all_results(
            self.client(region).list_instances, self.compartment()
        ).data

    def _blocking_find(self, where, tags):
        out = []
        for inst in self._instances(where):
            ff = inst.freeform_tags or {}
            if inst.lifecycle_state != "TERMINATED" and all(ff.get(k) == str(v) for k, v in tags.items()):
                out.append(self._node(where, inst))
        return out

    def _blocking_describe(self, where):
        nodes = [self._node(where, i) for i in self._instances(where) if TAG_REQUEST in (i.freeform_tags or {})]
        return {n.id: n for n in nodes}

    def _blocking_create_node(self, spec, tags, user_data, rule):
        """Launch the instance (a Ray cluster's node in its cluster's NSG ``rule`` too) in
        the first of the offer's availability domains with capacity: "Out of host
        capacity" in one moves on to the next at once; when none has any, the last one's
        error stands for the offer."""
        oci = _sdk()
        region = spec.offer.region
        nsg_ids = None if rule is None else [rule]
        image = self._image(region, spec.offer.instance_type)
        last = None
        for ad in self.ads_for(spec):
            details = self.launch_details(spec, tags, user_data, ad, image, nsg_ids)
            try:
                reply = self.client(region).launch_instance(
                    details,
                    # one token per domain: a retry in the same domain finds its instance
                    opc_retry_token=hashlib.sha256(f"{spec.request_id}/{ad}".encode()).hexdigest()[:64],
                    retry_strategy=oci.retry.NoneRetryStrategy(),
                )
            except oci.exceptions.ServiceError as err:
                if not isinstance(self._classify(err), CapacityError):
                    raise
                self.log.info("oci: no %s capacity in %s", spec.offer.instance_type, ad)
                last = err
                continue
            return self._node(region, reply.data)
        raise last

    def _blocking_terminate(self, node_id):
        oci = _sdk()
        region, instance_id = split_id(node_id)
        compute = self.client(region)
        try:
            compute.terminate_instance(instance_id, preserve_boot_volume=False)
            inst = compute.get_instance(instance_id).data
        except oci.exceptions.ServiceError as err:
            if err.status == 404:
                return None
            raise
        self._ips.pop(instance_id, None)
        return self._node(region, inst)

    # -- Ray firewall: a network security group per cluster (OCIRuleStore) -----------------
    def _rule_store(self):
        return OCIRuleStore(client=self.client, compartment=self.compartment, vcn=self._vcn, log=self.log)

    def _vcn(self, region: str) -> str:
        if region not in self._vcns:
            self._vcns[region] = self.client(region, "network").get_subnet(self.subnet_id).data.vcn_id
        return self._vcns[region]

    def _blocking_check(self):
        try:
            self._config(self.regions[0] if self.regions else "us-ashburn-1")
        except Exception as err:  # noqa: BLE001 - reported as a reason
            mapped = self._classify(err)
            return mapped.message if isinstance(mapped, CredentialsError) else f"OCI: {type(err).__name__}"
        if not self.subnet_id:
            return "OCI needs a subnet: set c.OCIProvider.subnet_id"
        return None

    def _blocking_check_catalog(self, offers):
        """Which shapes each availability domain offers (ListShapes per AD)."""
        oci = _sdk()
        out = []
        for region in sorted({o.region for o in offers}):
            try:
                ads = self.availability_domains(region)
            except oci.exceptions.ServiceError:
                continue  # region not subscribed: nothing there is launchable
            shapes = {}
            for ad in ads:
                listed = oci.pagination.list_call_get_all_results(
                    self.client(region).list_shapes, self.compartment(), availability_domain=ad
                ).data
                shapes[catalog_ad(ad)] = {s.shape for s in listed}
            for offer in (o for o in offers if o.region == region):
                spelled = {z.lower(): z for z in offer.zones}  # keep the catalog's spelling
                zones = sorted(spelled.get(z.lower(), z) for z, names in shapes.items()
                               if offer.instance_type in names)
                if zones:
                    out.append((offer.instance_type, region, tuple(zones)))
        return out


class OCIRuleStore(RuleStore):
    """A Ray cluster's rule on OCI (see :class:`~.ray_firewall.RuleStore`): a network
    security group in the nodes' VCN, named :func:`~.ray_firewall.rule_name` and tagged
    like the nodes, whose rules admit Ray's ports from and to its own members only.
    ``where`` is the region; the provider hands over its ``client(region, kind)``, the
    ``compartment()`` and the ``vcn(region)`` of its subnet."""

    def __init__(self, *, client, compartment, vcn, log):
        self.client = client
        self.compartment = compartment
        self.vcn = vcn
        self.log = log

    def _nsgs(self, region: str) -> list:
        oci = _sdk()
        return [g for g in oci.pagination.list_call_get_all_results(
            self.client(region, "network").list_network_security_groups,
            compartment_id=self.compartment(), vcn_id=self.vcn(region),
        ).data if g.lifecycle_state not in _NSG_GONE]

    @staticmethod
    def security_rules(nsg_id: str) -> list:
        """The NSG's rules: Ray's ports from and to the group's own members (stateful)."""
        models = _sdk().core.models
        ports = models.TcpOptions(destination_port_range=models.PortRange(min=PORTS[0], max=PORTS[1]))
        return [
            models.AddSecurityRuleDetails(direction="INGRESS", protocol="6", source=nsg_id,
                                          source_type="NETWORK_SECURITY_GROUP", tcp_options=ports,
                                          description="Ray between the cluster's nodes"),
            models.AddSecurityRuleDetails(direction="EGRESS", protocol="6", destination=nsg_id,
                                          destination_type="NETWORK_SECURITY_GROUP", tcp_options=ports,
                                          description="Ray between the cluster's nodes"),
        ]

    def ensure(self, where, tags):
        oci = _sdk()
        models = oci.core.models
        cluster = cluster_of(tags)
        network = self.client(where, "network")
        found = [g for g in self._nsgs(where) if (g.freeform_tags or {}).get(CLUSTER_TAG) == cluster]
        if found:
            nsg_id = found[0].id
        else:
            owner = {k: str(v) for k, v in tags.items() if k in (TAG_HUB, TAG_USER, TAG_SERVER, CLUSTER_TAG)}
            nsg_id = network.create_network_security_group(
                models.CreateNetworkSecurityGroupDetails(
                    compartment_id=self.compartment(), vcn_id=self.vcn(where),
                    display_name=rule_name(cluster), freeform_tags=owner,
                ),
                opc_retry_token=hashlib.sha256(f"nsg/{cluster}".encode()).hexdigest()[:64],
            ).data.id
            self.log.info("oci: made network security group %s for Ray cluster %s", nsg_id, cluster)
        rules = oci.pagination.list_call_get_all_results(
            network.list_network_security_group_security_rules, nsg_id).data
        if not any(r.direction == "INGRESS" and r.source == nsg_id and r.tcp_options is not None
                   and r.tcp_options.destination_port_range is not None
                   and (r.tcp_options.destination_port_range.min,
                        r.tcp_options.destination_port_range.max) == PORTS for r in rules):
            network.add_network_security_group_security_rules(
                nsg_id, models.AddNetworkSecurityGroupSecurityRulesDetails(
                    security_rules=self.security_rules(nsg_id)))
        return nsg_id

    def list(self, where, hub):
        return [RayRule(g.id, g.freeform_tags[CLUSTER_TAG],
                        g.time_created.timestamp() if g.time_created else None)
                for g in self._nsgs(where)
                if (g.freeform_tags or {}).get(TAG_HUB) == hub and (g.freeform_tags or {}).get(CLUSTER_TAG)]

    def delete(self, where, rule):
        oci = _sdk()
        try:
            self.client(where, "network").delete_network_security_group(rule.id)
        except oci.exceptions.ServiceError as err:
            if err.status == 404:
                return
            if err.status == 409:  # a VNIC (an instance still terminating) is in it
                raise RuleInUse(rule.id) from err
            raise


__all__ = ["OCIProvider", "OCIRuleStore", "catalog_ad"]
