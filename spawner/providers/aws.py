"""AWS: GPU VMs on EC2 through boto3 (the only module that imports it).

Credentials come from boto3's standard chain (environment, ``~/.aws`` profile, instance
role). Two clients per region: one in botocore's ``standard`` retry mode for describe
and terminate calls, and one with retries off for ``RunInstances`` — EC2 answers
``InsufficientInstanceCapacity`` as a server error, which standard mode would retry
for seconds; with retries off the error reaches failover at once, and throttling and
other server errors are retried by :meth:`CloudProvider.launch` instead. ``RunInstances``
also carries the request id as its ``ClientToken``, so EC2 itself refuses to double a
launch. Clients are made once per region and kind, under a lock: a boto3 session is
not thread-safe, and every blocking call runs in a worker thread.

The nodes of a Ray cluster (:data:`~cloudhop.spawner.providers.base.TAG_RAY_CLUSTER`) join a security
group of their own besides the configured ones, tagged like the nodes and admitting
Ray's ports from itself only; it is deleted once the cluster's last instance is gone
(:class:`AWSRuleStore`, driven as :mod:`cloudhop.spawner.providers.ray_firewall` says).
"""

from __future__ import annotations

import hashlib
import threading
import time

from traitlets import Integer, List, TraitError, Unicode, validate

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
    CLUSTER_TAG, DESCRIPTION, PORTS, RayRule, RuleInUse, RuleStore, cluster_of, rule_name,
)
from .aliases import Renamed
from .cloud import TAG_PORT, CloudProvider, Retry, split_id

INSTALL_HINT = "the AWS provider needs boto3: pip install 'cloudhop[aws]'"


def _sdk():
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
    except ImportError as err:  # pragma: no cover - depends on the install
        raise CredentialsError(INSTALL_HINT) from err
    return boto3, botocore


_STATES = {
    "pending": PENDING,
    "running": RUNNING,
    "shutting-down": STOPPING,
    "stopping": STOPPING,
    "stopped": STOPPING,
    "terminated": TERMINATED,
}
_LIVE = ["pending", "running", "shutting-down", "stopping", "stopped"]

CAPACITY_CODES = {
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity",
    "InsufficientCapacity",
    "InsufficientFreeAddressesInSubnet",
    "SpotMaxPriceTooLow",
    "Unsupported",  # the type is not offered in that zone
}
QUOTA_CODES = {
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "MaxSpotInstanceCountExceeded",
    "PendingVerification",
}
CREDENTIAL_CODES = {
    "AuthFailure",
    "UnauthorizedOperation",
    "InvalidClientTokenId",
    "ExpiredToken",
    "RequestExpired",
    "SignatureDoesNotMatch",
    "OptInRequired",
}
RETRY_CODES = {
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
}
NOT_FOUND_CODES = {"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"}
#: what EC2 answers in a region the account has not enabled: ``OptInRequired``, or for
#: opt-in regions ``AuthFailure`` (also what bad credentials get: see _region_disabled)
OPT_IN_CODES = {"OptInRequired"}
GROUP_GONE_CODES = {"InvalidGroup.NotFound", "InvalidGroupId.NotFound", "InvalidGroupId.Malformed"}
#: tag of a Ray cluster's security group: when it was made (epoch seconds; EC2 keeps no
#: creation time for groups), so a sweep spares a group whose launch is in flight
TAG_CREATED = "cloudhop-created"


class AWSProvider(CloudProvider):
    """GPU VMs on EC2. See :class:`~.base.Provider` for the contract."""

    name = "aws"
    display_name = "AWS"

    image_id = Unicode(
        "",
        help="""AMI every node boots. Empty: read per region from the public SSM parameter
        ``image_ssm_parameter`` (an Ubuntu GPU image with the NVIDIA driver, Docker and the
        NVIDIA container toolkit).""",
    ).tag(config=True)

    image_ssm_parameter = Unicode(
        "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id",
        help="Public SSM parameter naming the default AMI (used when image_id is empty).",
    ).tag(config=True)

    subnet_id = Unicode(
        "",
        help="Subnet nodes start in. Empty: the region's default VPC and a default subnet "
        "of the zone EC2 picks.",
    ).tag(config=True)

    security_group_ids = List(
        Unicode(),
        help="Security groups of the nodes; they must admit the hub on the server port "
        "(and Ray's ports between nodes). Empty: the VPC's default group.",
    ).tag(config=True)

    key_name = Unicode("", help="EC2 key pair for SSH to nodes (optional).").tag(config=True)

    associate_public_ip = Renamed("public_ip")

    api_endpoint = Unicode(
        "",
        help="EC2/SSM endpoint override (a VPC endpoint, or a local test server). "
        "Empty: the public regional endpoint.",
    ).tag(config=True)
    endpoint_url = Renamed("api_endpoint")

    api_attempts = Integer(
        5, help="Attempts (botocore standard retry mode) for describe/terminate calls."
    ).tag(config=True)

    @validate("subnet_id", "image_id", "security_group_ids")
    def _valid_ids(self, proposal):
        name, value = proposal["trait"].name, proposal["value"]
        prefix = {"subnet_id": "subnet-", "image_id": "ami-", "security_group_ids": "sg-"}[name]
        for item in value if isinstance(value, list) else [value]:
            if item and not item.startswith(prefix):
                raise TraitError(f"c.AWSProvider.{name} must be EC2 ids ('{prefix}...'), not {value!r}"
                                 if isinstance(value, list) else
                                 f"c.AWSProvider.{name} must be an EC2 id ('{prefix}...') or empty, not {value!r}")
        return value

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._clients: dict[tuple[str, bool], object] = {}
        self._images: dict[str, str] = {}
        self._zones: dict[str, dict[str, str]] = {}
        self._vpcs: dict[str, str] = {}
        self._default_groups: dict[str, list[str]] = {}
        self._session = None
        # a boto3 Session is not thread-safe: making clients from it is serialised
        self._session_lock = threading.RLock()

    # -- clients -------------------------------------------------------------------------
    def session(self):
        with self._session_lock:
            if self._session is None:
                boto3, _ = _sdk()
                self._session = boto3.session.Session()
            return self._session

    def client(self, region: str, *, retries: bool = True, service: str = "ec2"):
        """The region's client: ``retries=False`` is the launch client (no retries).
        Made once per region and kind (clients themselves are thread-safe)."""
        key = (f"{service}:{region}", retries)
        client = self._clients.get(key)
        if client is not None:
            return client
        with self._session_lock:
            if key not in self._clients:
                _, botocore = _sdk()
                config = botocore.config.Config(
                    retries={"mode": "standard", "total_max_attempts": self.api_attempts if retries else 1},
                    connect_timeout=5,
                    read_timeout=30,
                    user_agent_extra="cloudhop",
                )
                self._clients[key] = self.session().client(
                    service,
                    region_name=region,
                    config=config,
                    endpoint_url=self.api_endpoint or None,
                )
            return self._clients[key]

    # -- errors --------------------------------------------------------------------------
    def _classify(self, err):
        _, botocore = _sdk()
        exc = botocore.exceptions
        if isinstance(err, (exc.NoCredentialsError, exc.PartialCredentialsError)):
            return CredentialsError("no AWS credentials found (environment, ~/.aws or an instance role)")
        if isinstance(err, (exc.EndpointConnectionError, exc.ConnectTimeoutError, exc.ReadTimeoutError)):
            return Retry(err)
        if not isinstance(err, exc.ClientError):
            return err
        error = err.response.get("Error", {})
        code = error.get("Code", "")
        message = f"AWS {code}: {error.get('Message', '')}".strip()
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in CAPACITY_CODES:
            return CapacityError(message)
        if code in QUOTA_CODES:
            return QuotaError(message)
        if code == "UnauthorizedOperation":
            return CredentialsError(f"AWS {code}: the hub's credentials may not call "
                                    f"{getattr(err, 'operation_name', 'this operation')} "
                                    "(docs/clouds.md lists the IAM policy)")
        if code in CREDENTIAL_CODES:
            return CredentialsError(f"AWS {code}: the hub's credentials were refused")
        if code in RETRY_CODES or status in (500, 502, 503, 504):
            return Retry(err)
        return ProviderError(message)

    # -- images --------------------------------------------------------------------------
    def _image(self, region: str) -> str:
        if self.image_id:
            return self.image_id
        if region not in self._images:
            ssm = self.client(region, service="ssm")
            value = ssm.get_parameter(Name=self.image_ssm_parameter)["Parameter"]["Value"]
            self._images[region] = value
        return self._images[region]

    # -- blocking calls ------------------------------------------------------------------
    def _node(self, region: str, inst: dict) -> Node:
        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
        state = _STATES.get(inst["State"]["Name"], FAILED)
        ip = inst.get("PublicIpAddress") if self.connect_ip == "public" else inst.get("PrivateIpAddress")
        port = int(tags[TAG_PORT]) if tags.get(TAG_PORT, "").isdigit() else None
        reason = (inst.get("StateReason") or {}).get("Message", "")
        info = {
            "instance_type": inst.get("InstanceType"),
            "zone": (inst.get("Placement") or {}).get("AvailabilityZone"),
            "spot": inst.get("InstanceLifecycle") == "spot",
            "private_ip": inst.get("PrivateIpAddress"),
            "public_ip": inst.get("PublicIpAddress"),
            "launched_at": inst["LaunchTime"].timestamp() if inst.get("LaunchTime") else None,
        }
        detail = {
            PENDING: "EC2 is starting the instance",
            RUNNING: "the instance is up; the server starts from cloud-init",
        }.get(state, reason)
        return Node(
            id=f"{region}/{inst['InstanceId']}",
            provider=self.name,
            region=region,
            state=state,
            ip=ip if state == RUNNING else None,
            port=port,
            tags=tags,
            info=info,
            detail=detail,
        )

    def _describe(self, region: str, filters: list) -> list[Node]:
        paginator = self.client(region).get_paginator("describe_instances")
        out = []
        for page in paginator.paginate(Filters=filters):
            for reservation in page.get("Reservations", []):
                out += [self._node(region, inst) for inst in reservation.get("Instances", [])]
        return out

    def _blocking_find(self, where, tags):
        filters = [{"Name": f"tag:{k}", "Values": [str(v)]} for k, v in tags.items()]
        filters.append({"Name": "instance-state-name", "Values": _LIVE})
        return self._describe(where, filters)

    def _blocking_describe(self, where):
        nodes = self._describe(where, [{"Name": "tag-key", "Values": [TAG_REQUEST]}])
        return {n.id: n for n in nodes}

    def run_instances_params(self, spec: LaunchSpec, tags: dict, user_data: str,
                             zone: str | None = None, groups: list | None = None) -> dict:
        """The ``RunInstances`` request for a spec in availability zone ``zone`` (a zone
        name; None lets EC2 or the subnet decide), in security ``groups`` (None: the
        configured ones, or EC2's default). Pure apart from the image lookup."""
        tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
        params = {
            "ImageId": self._image(spec.offer.region),
            "InstanceType": spec.offer.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": user_data,
            # EC2's own idempotency: a retried RunInstances returns the same instance
            "ClientToken": hashlib.sha256(f"{spec.request_id}/{zone}".encode()).hexdigest()[:64],
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tag_list},
                {"ResourceType": "volume", "Tags": tag_list},
            ],
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        }
        network = {"DeviceIndex": 0, "AssociatePublicIpAddress": self.public_ip}
        if self.subnet_id:
            network["SubnetId"] = self.subnet_id
        groups = list(self.security_group_ids) if groups is None else list(groups)
        if groups:
            network["Groups"] = groups
        params["NetworkInterfaces"] = [network]
        if zone and not self.subnet_id:
            params["Placement"] = {"AvailabilityZone": zone}
        if self.key_name:
            params["KeyName"] = self.key_name
        if spec.spot:
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": "one-time",
                    "InstanceInterruptionBehavior": "terminate",
                },
            }
        return params

    def zones_for(self, spec: LaunchSpec) -> list[str | None]:
        """Zone names a launch tries in turn: the requested zone, else the offer's zones
        (the catalog's zone ids, named for this account), else EC2's choice. A subnet
        fixes the zone."""
        if self.subnet_id:
            return [None]
        region = spec.offer.region
        if spec.zone:
            return [self._zone_names(region).get(spec.zone, spec.zone)]
        names = self._zone_names(region)
        return [names[z] for z in spec.offer.zones if z in names] or [None]

    def _zone_names(self, region: str) -> dict[str, str]:
        """Zone id -> zone name for a region (names differ per account; ids do not)."""
        if region not in self._zones:
            zones = self.client(region).describe_availability_zones()["AvailabilityZones"]
            self._zones[region] = {z["ZoneId"]: z["ZoneName"] for z in zones}
        return self._zones[region]

    def _blocking_create_node(self, spec, tags, user_data, rule):
        """Run the instance (a Ray cluster's node in its cluster's security group ``rule``
        too) in the first of the offer's zones with capacity: a zone without capacity
        moves on to the next at once; when none has any, the last zone's error stands for
        the offer."""
        _, botocore = _sdk()
        region = spec.offer.region
        groups = None if rule is None else self._base_groups(region) + [rule]
        last = None
        for zone in self.zones_for(spec):
            params = self.run_instances_params(spec, tags, user_data, zone, groups)
            try:
                reply = self.client(region, retries=False).run_instances(**params)
            except botocore.exceptions.ClientError as err:
                if err.response.get("Error", {}).get("Code") not in CAPACITY_CODES:
                    raise
                self.log.info("aws: no %s capacity in %s (%s)", spec.offer.instance_type, zone or region,
                              err.response["Error"]["Code"])
                last = err
                continue
            return self._node(region, reply["Instances"][0])
        raise last

    def _blocking_terminate(self, node_id):
        region, instance = split_id(node_id)
        _, botocore = _sdk()
        try:
            reply = self.client(region).terminate_instances(InstanceIds=[instance])
        except botocore.exceptions.ClientError as err:
            if err.response.get("Error", {}).get("Code") in NOT_FOUND_CODES:
                return None
            raise
        changes = reply.get("TerminatingInstances") or []
        if not changes:
            return None
        state = _STATES.get(changes[0]["CurrentState"]["Name"], FAILED)
        return Node(node_id, self.name, region, state)

    # -- Ray firewall: a security group per cluster (AWSRuleStore) -----------------------
    def _rule_store(self):
        return AWSRuleStore(client=self.client, vpc=self._vpc, log=self.log)

    def _vpc(self, region: str) -> str:
        """The VPC nodes start in: the subnet's, else the region's default VPC."""
        if region not in self._vpcs:
            ec2 = self.client(region)
            if self.subnet_id:
                vpc = ec2.describe_subnets(SubnetIds=[self.subnet_id])["Subnets"][0]["VpcId"]
            else:
                vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
                if not vpcs:
                    raise ProviderError(f"AWS: {region} has no default VPC; set c.AWSProvider.subnet_id")
                vpc = vpcs[0]["VpcId"]
            self._vpcs[region] = vpc
        return self._vpcs[region]

    def _base_groups(self, region: str) -> list[str]:
        """The groups a Ray node is in besides its cluster's: the configured ones, else
        the VPC's default group (naming any group in RunInstances drops EC2's default)."""
        if self.security_group_ids:
            return list(self.security_group_ids)
        if region not in self._default_groups:
            found = self.client(region).describe_security_groups(Filters=[
                {"Name": "vpc-id", "Values": [self._vpc(region)]},
                {"Name": "group-name", "Values": ["default"]},
            ])["SecurityGroups"]
            self._default_groups[region] = [g["GroupId"] for g in found[:1]]
        return self._default_groups[region]

    # -- catalog -------------------------------------------------------------------------
    def _region_disabled(self, region: str, err) -> bool:
        """True when ``err`` (from ``region``) means the account has not enabled the
        region. ``OptInRequired`` says so; ``AuthFailure`` is also what EC2 answers in an
        opt-in region that is not enabled, so the region's opt-in status is asked of a
        region that is always enabled, and only ``not-opted-in`` counts."""
        _, botocore = _sdk()
        code = err.response.get("Error", {}).get("Code", "")
        if code in OPT_IN_CODES:
            return True
        if code != "AuthFailure":
            return False
        home = self.session().region_name or "us-east-1"
        if home == region:
            home = "us-east-1" if region != "us-east-1" else "us-west-2"
        try:
            found = self.client(home).describe_regions(AllRegions=True, RegionNames=[region])["Regions"]
        except botocore.exceptions.ClientError:
            return False  # the credentials fail there too: they are the problem
        return any(r.get("OptInStatus") == "not-opted-in" for r in found)

    def _blocking_check_catalog(self, offers):
        """Which catalog types each region offers in which zones (zone ids, as the
        catalog spells them), from ``DescribeInstanceTypeOfferings``."""
        _, botocore = _sdk()
        out = []
        for region in sorted({o.region for o in offers}):
            wanted = sorted({o.instance_type for o in offers if o.region == region})
            zones: dict[str, set] = {}
            try:
                pages = self.client(region).get_paginator("describe_instance_type_offerings")
                for i in range(0, len(wanted), 100):  # the filter takes a bounded list
                    for page in pages.paginate(
                        LocationType="availability-zone-id",
                        Filters=[{"Name": "instance-type", "Values": wanted[i:i + 100]}],
                    ):
                        for item in page.get("InstanceTypeOfferings", []):
                            zones.setdefault(item["InstanceType"], set()).add(item["Location"])
            except botocore.exceptions.ClientError as err:
                code = err.response.get("Error", {}).get("Code", "")
                if self._region_disabled(region, err):
                    # a region not enabled for the account: nothing there is launchable
                    self.log.info("aws: region %s is not enabled for this account (%s)", region, code)
                    continue
                mapped = self._classify(err)
                if isinstance(mapped, CredentialsError):
                    raise CredentialsError(
                        f"{mapped.message} (in {region}); the catalog check stops here instead of "
                        "recording no offers for the region: renew or fix the hub's AWS credentials"
                    ) from err
                raise
            out += [(t, region, tuple(sorted(z))) for t, z in sorted(zones.items())]
        return out

    def _blocking_check(self):
        creds = self.session().get_credentials()
        if creds is None:
            return "no AWS credentials found (environment, ~/.aws profile or an instance role)"
        return None


class AWSRuleStore(RuleStore):
    """A Ray cluster's rule on EC2 (see :class:`~.ray_firewall.RuleStore`): a security
    group in the VPC its nodes start in, named :func:`~.ray_firewall.rule_name`, tagged
    like the nodes and with its creation time (EC2 keeps none for groups), admitting
    Ray's ports from itself only. ``where`` is the region; ``client(region)`` is the
    provider's EC2 client there and ``vpc(region)`` the nodes' VPC."""

    def __init__(self, *, client, vpc, log):
        self.client = client
        self.vpc = vpc
        self.log = log

    @staticmethod
    def permission(group_id: str) -> dict:
        """The ingress rule of a cluster's group: Ray's ports from the group itself."""
        return {"IpProtocol": "tcp", "FromPort": PORTS[0], "ToPort": PORTS[1],
                "UserIdGroupPairs": [{"GroupId": group_id, "Description": "Ray between the cluster's nodes"}]}

    def ensure(self, where, tags):
        _, botocore = _sdk()
        cluster = cluster_of(tags)
        ec2 = self.client(where)
        vpc = self.vpc(where)
        found = ec2.describe_security_groups(Filters=[
            {"Name": "vpc-id", "Values": [vpc]},
            {"Name": f"tag:{CLUSTER_TAG}", "Values": [cluster]},
        ])["SecurityGroups"]
        if found:
            group_id, rules = found[0]["GroupId"], found[0].get("IpPermissions", [])
        else:
            owner = {k: v for k, v in tags.items() if k in (TAG_HUB, TAG_USER, TAG_SERVER, CLUSTER_TAG)}
            group_tags = dict(owner, Name=rule_name(cluster), **{TAG_CREATED: str(int(time.time()))})
            try:
                group_id = ec2.create_security_group(
                    GroupName=rule_name(cluster), Description=DESCRIPTION, VpcId=vpc,
                    TagSpecifications=[{"ResourceType": "security-group",
                                        "Tags": [{"Key": k, "Value": v} for k, v in group_tags.items()]}],
                )["GroupId"]
                rules = []
                self.log.info("aws: made security group %s for Ray cluster %s in %s", group_id, cluster, where)
            except botocore.exceptions.ClientError as err:
                if err.response.get("Error", {}).get("Code") != "InvalidGroup.Duplicate":
                    raise
                # made by a retried attempt that a describe did not show yet
                [group] = ec2.describe_security_groups(Filters=[
                    {"Name": "vpc-id", "Values": [vpc]},
                    {"Name": "group-name", "Values": [rule_name(cluster)]},
                ])["SecurityGroups"]
                group_id, rules = group["GroupId"], group.get("IpPermissions", [])
        if not any(r.get("IpProtocol") == "tcp" and r.get("FromPort") == PORTS[0]
                   and r.get("ToPort") == PORTS[1]
                   and any(p.get("GroupId") == group_id for p in r.get("UserIdGroupPairs", []))
                   for r in rules):
            try:
                ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[self.permission(group_id)])
            except botocore.exceptions.ClientError as err:
                if err.response.get("Error", {}).get("Code") != "InvalidPermission.Duplicate":
                    raise
        return group_id

    def list(self, where, hub):
        pages = self.client(where).get_paginator("describe_security_groups").paginate(Filters=[
            {"Name": f"tag:{TAG_HUB}", "Values": [hub]}, {"Name": "tag-key", "Values": [CLUSTER_TAG]},
        ])
        out = []
        for page in pages:
            for group in page.get("SecurityGroups", []):
                tags = {t["Key"]: t["Value"] for t in group.get("Tags", [])}
                created = tags.get(TAG_CREATED, "")
                out.append(RayRule(group["GroupId"], tags[CLUSTER_TAG],
                                   float(created) if created.isdigit() else None))
        return out

    def delete(self, where, rule):
        _, botocore = _sdk()
        try:
            self.client(where).delete_security_group(GroupId=rule.id)
        except botocore.exceptions.ClientError as err:
            code = err.response.get("Error", {}).get("Code")
            if code in GROUP_GONE_CODES:
                return
            if code == "DependencyViolation":  # an instance still shutting down is in it
                raise RuleInUse(rule.id) from err
            raise
