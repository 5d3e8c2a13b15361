"""The AWS provider against moto: real boto3 calls, in-process EC2/SSM."""

from __future__ import annotations

import asyncio
import dataclasses
import base64
import sys

import boto3
import pytest
import traitlets
from moto import mock_aws

from cloudhop.spawner.providers.aws import AWSProvider
from cloudhop.spawner.providers.base import (
    RUNNING,
    TAG_HUB,
    TAG_REQUEST,
    TAG_ROLE,
    TAG_SERVER,
    TAG_USER,
    TERMINATED,
    CapacityError,
    CredentialsError,
    QuotaError,
    TransientError,
)
from cloudhop.spawner.ray import CLUSTER_TAG, WORKER_ROLE
from tests.cloudkit import HUB_ID, cheapest, spec_for

# a public parameter moto serves, standing in for the GPU image's parameter
SSM_IMAGE = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64"
FAKE_KEY = "AKIAFAKEHUBKEY000001"
FAKE_SECRET = "fake/hub/secret/key/that/must/not/leak+0001"


@pytest.fixture
def aws(monkeypatch):
    # the hub's own credentials: present in its environment, never on a node
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "fake-session-token-0001")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield


@pytest.fixture
def provider(aws):
    p = AWSProvider(image_ssm_parameter=SSM_IMAGE, retry_base_delay=0.01, regions=["us-east-1"])
    yield p


def ec2():
    return boto3.client("ec2", region_name="us-east-1")


def instances(**filters):
    f = [{"Name": k, "Values": v} for k, v in filters.items()]
    out = []
    for r in ec2().describe_instances(Filters=f)["Reservations"]:
        out += r["Instances"]
    return out


class _Raw:
    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **_):
        yield self.body


def _status(code):
    return 503 if code == "RequestLimitExceeded" else (400 if "Limit" in code else 500)


def inject(provider, operation, codes, *, retries=False, on_the_wire=False):
    """Answer the next ``len(codes)`` calls of ``operation`` on the provider's client
    with EC2 errors (None: let the call through). Returns the list of calls seen.

    The launch client (``retries=False``) is hooked at ``before-call``, which answers
    before moto sees the request (so a refused launch makes nothing); the describe
    client at ``before-send``, below botocore's retry loop, so its retries show
    (``on_the_wire`` hooks the launch client there too: an HTTP answer as EC2 sends it)."""
    from botocore.awsrequest import AWSResponse

    calls = []
    queue = list(codes)

    def before_call(**kw):
        calls.append(kw)
        code = queue.pop(0) if queue else None
        if code is None:
            return None
        error = {"Code": code, "Message": f"injected {code}"}
        http = AWSResponse("https://ec2.invalid/", _status(code), {}, _Raw(b""))
        return http, {"Error": error, "ResponseMetadata": {"HTTPStatusCode": _status(code)}}

    def before_send(request, **_):
        calls.append(request)
        code = queue.pop(0) if queue else None
        if code is None:
            return None
        body = (
            f"<Response><Errors><Error><Code>{code}</Code><Message>injected {code}</Message>"
            "</Error></Errors><RequestID>r-1</RequestID></Response>"
        ).encode()
        return AWSResponse(request.url, _status(code), {}, _Raw(body))

    client = provider.client("us-east-1", retries=retries)
    if retries or on_the_wire:
        client.meta.events.register_first(f"before-send.ec2.{operation}", before_send)
    else:
        client.meta.events.register_first(f"before-call.ec2.{operation}", before_call)
    return calls


async def test_launch_cheapest_t4_in_us_east_1(provider):
    offer = cheapest("aws", "us-east-1", "T4", 1)
    assert offer.instance_type == "g4dn.xlarge"
    spec = spec_for(offer, user="alice", server="gpu")
    node = await provider.launch(spec)

    [inst] = instances()
    assert inst["InstanceType"] == "g4dn.xlarge"
    assert node.id == f"us-east-1/{inst['InstanceId']}"
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags[TAG_USER] == "alice" and tags[TAG_SERVER] == "gpu"
    assert tags[TAG_HUB] == HUB_ID and tags[TAG_REQUEST] == spec.request_id
    assert tags[TAG_ROLE] == "notebook"
    image = boto3.client("ssm", region_name="us-east-1").get_parameter(Name=SSM_IMAGE)
    assert inst["ImageId"] == image["Parameter"]["Value"]
    assert inst.get("InstanceLifecycle") != "spot"

    attr = ec2().describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="userData")
    user_data = base64.b64decode(attr["UserData"]["Value"]).decode()
    assert user_data.startswith("#cloud-config")
    assert "jupyterhub-singleuser" in user_data and "--gpus all" in user_data
    assert "JUPYTERHUB_API_TOKEN=server-own-token-123" in user_data
    for secret in (FAKE_KEY, FAKE_SECRET, "fake-session-token-0001", "AWS_"):
        assert secret not in user_data


async def test_spot_request_uses_the_spot_market(provider):
    node = await provider.launch(spec_for(cheapest("aws", "us-east-1", "T4", 1, spot=True), spot=True))
    [inst] = instances()
    assert inst["InstanceLifecycle"] == "spot"
    assert node.info["spot"] is True


async def test_launch_is_idempotent_on_the_request_id(provider):
    spec = spec_for(cheapest("aws", "us-east-1", "T4", 1))
    first = await provider.launch(spec)
    again = await provider.launch(spec)
    assert again.id == first.id
    assert len(instances()) == 1


async def test_status_polls_share_one_describe_call(provider):
    nodes = [await provider.launch(spec_for(cheapest("aws", "us-east-1", "T4", 1), user=u))
             for u in ("a", "b", "c")]
    calls = []
    provider.client("us-east-1").meta.events.register(
        "after-call.ec2.DescribeInstances", lambda **kw: calls.append(1)
    )
    seen = await asyncio.gather(*[provider.status(n.id) for n in nodes for _ in range(5)])
    assert len(calls) == 1
    assert {n.state for n in seen} == {RUNNING}
    assert all(n.ip and n.port == 8888 for n in seen)
    assert seen[0].ip == instances()[0]["PrivateIpAddress"] or seen[0].ip in {
        i["PrivateIpAddress"] for i in instances()
    }


async def test_public_ip_when_configured(aws):
    p = AWSProvider(image_ssm_parameter=SSM_IMAGE, connect_ip="public")
    node = await p.launch(spec_for(cheapest("aws", "us-east-1", "T4", 1)))
    status = await p.status(node.id)
    assert status.ip == instances()[0]["PublicIpAddress"]


async def test_terminate_is_confirmed_and_idempotent(provider):
    spec = spec_for(cheapest("aws", "us-east-1", "T4", 1))
    node = await provider.launch(spec)
    await provider.terminate(node.id)
    [inst] = instances()
    assert inst["State"]["Name"] in ("shutting-down", "terminated")
    await provider.terminate(node.id)  # again: no error
    assert (await provider.status(node.id)).state in ("stopping", TERMINATED)
    assert await provider.list_nodes({TAG_REQUEST: spec.request_id}) == []


async def test_status_of_an_unknown_node_is_terminated(provider):
    node = await provider.status("us-east-1/i-0123456789abcdef0")
    assert node.state == TERMINATED


async def test_list_nodes_by_tags(provider):
    offer = cheapest("aws", "us-east-1", "T4", 1)
    a = await provider.launch(spec_for(offer, user="alice"))
    await provider.launch(spec_for(offer, user="bob"))
    mine = await provider.list_nodes({TAG_HUB: HUB_ID, TAG_USER: "alice"})
    assert [n.id for n in mine] == [a.id]
    assert len(await provider.list_nodes({TAG_HUB: HUB_ID})) == 2
    assert await provider.list_nodes({TAG_HUB: "another-hub"}) == []


async def test_capacity_error_fails_fast_without_retries(provider):
    offer = cheapest("aws", "us-east-1", "T4", 1)
    assert offer.zones == ("use1-az1", "use1-az2")
    calls = inject(provider, "RunInstances", ["InsufficientInstanceCapacity"] * 2)
    with pytest.raises(CapacityError) as info:
        await provider.launch(spec_for(offer))
    assert len(calls) == 2  # one per zone of the offer, none retried: failover moves on
    assert info.value.failover and info.value.offer == offer
    assert type(info.value.__cause__).__name__ == "ClientError"
    assert "InsufficientInstanceCapacity" in str(info.value)
    assert instances() == []


async def test_capacity_as_ec2_sends_it_http_500_is_not_retried_by_botocore(provider):
    # EC2 answers InsufficientInstanceCapacity with HTTP 500, which botocore's standard
    # mode would retry three times per zone; the launch client must send it once
    calls = inject(provider, "RunInstances", ["InsufficientInstanceCapacity"] * 6, on_the_wire=True)
    with pytest.raises(CapacityError):
        await provider.launch(spec_for(cheapest("aws", "us-east-1", "T4", 1)))
    assert len(calls) == 2, "one request per zone of the offer"
    # (moto still sees a request hooked this low, so no claim about instances here)


async def test_a_zone_without_capacity_moves_to_the_offers_next_zone(provider):
    offer = cheapest("aws", "us-east-1", "T4", 1)
    calls = inject(provider, "RunInstances", ["InsufficientInstanceCapacity"])
    node = await provider.launch(spec_for(offer))
    names = {z["ZoneId"]: z["ZoneName"] for z in ec2().describe_availability_zones()["AvailabilityZones"]}
    # the wire request (EC2's query form) names each zone in turn
    assert [c["params"]["body"]["Placement.AvailabilityZone"] for c in calls] == [
        names["use1-az1"], names["use1-az2"]]
    assert node.info["zone"] == names["use1-az2"]
    assert len(instances()) == 1


async def test_a_subnet_fixes_the_zone(provider):
    vpc = ec2().create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2().create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    provider.subnet_id = subnet
    calls = inject(provider, "RunInstances", ["InsufficientInstanceCapacity"])
    with pytest.raises(CapacityError):
        await provider.launch(spec_for(cheapest("aws", "us-east-1", "T4", 1)))
    assert len(calls) == 1 and "Placement.AvailabilityZone" not in calls[0]["params"]["body"]
    node = await provider.launch(spec_for(cheapest("aws", "us-east-1", "T4", 1)))
    [inst] = instances()
    assert inst["SubnetId"] == subnet and node.id.endswith(inst["InstanceId"])


async def test_quota_error_fails_fast(provider):
    calls = inject(provider, "RunInstances", ["VcpuLimitExceeded"])
    with pytest.raises(QuotaError):
        await provider.launch(spec_for(cheapest("aws", "us-east-1", "T4", 1)))
    assert len(calls) == 1


async def test_throttling_is_retried_then_succeeds(provider):
    calls = inject(provider, "RunInstances", ["RequestLimitExceeded", "InternalError", None])
    node = await provider.launch(spec_for(cheapest("aws", "us-east-1", "T4", 1)))
    assert len(calls) == 3
    assert [i["InstanceId"] for i in instances()] == [node.id.split("/")[1]]


async def test_throttling_that_never_stops_is_a_transient_error(provider):
    provider.launch_attempts = 3
    calls = inject(provider, "RunInstances", ["RequestLimitExceeded"] * 10)
    with pytest.raises(TransientError) as info:
        await provider.launch(spec_for(cheapest("aws", "us-east-1", "T4", 1)))
    assert len(calls) == 3
    assert info.value.__cause__ is not None


async def test_describe_throttling_is_retried_by_standard_mode(provider):
    node = await provider.launch(spec_for(cheapest("aws", "us-east-1", "T4", 1)))
    provider._cache.clear()
    calls = inject(provider, "DescribeInstances", ["RequestLimitExceeded", None], retries=True)
    assert (await provider.status(node.id)).state == RUNNING
    assert len(calls) == 2


async def test_no_credentials_is_a_reason_not_a_crash(monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    reason = await AWSProvider().check_available()
    assert reason and "credentials" in reason


async def test_available_with_credentials(provider):
    assert await provider.check_available() is None


def test_bad_connect_ip_names_the_option():
    with pytest.raises(traitlets.TraitError, match="connect_ip"):
        AWSProvider(connect_ip="elastic")


async def test_catalog_check_asks_instance_type_offerings(provider):
    offers = [cheapest("aws", "us-east-1", "T4", 1), cheapest("aws", "us-east-1", "A10G", 1),
              dataclasses.replace(cheapest("aws", "us-east-1", "T4", 1), instance_type="g99.nonexistent")]
    got = await provider.check_catalog(offers)
    types = {t for t, region, zones in got}
    assert {"g4dn.xlarge", "g5.xlarge"} <= types and "g99.nonexistent" not in types
    zones = dict((t, z) for t, _, z in got)["g4dn.xlarge"]
    assert zones and all(z.startswith("use1-az") for z in zones)  # zone ids, as the catalog has them


async def test_list_nodes_skips_a_region_it_cannot_read(provider):
    node = await provider.launch(spec_for(cheapest("aws", "us-east-1", "T4", 1)))
    provider.regions = ["us-east-1", "ap-east-1"]
    provider.client("ap-east-1").meta.events.register_first(
        "before-call.ec2.DescribeInstances",
        lambda **kw: (type("R", (), {"status_code": 401})(),
                      {"Error": {"Code": "OptInRequired", "Message": "not subscribed"},
                       "ResponseMetadata": {"HTTPStatusCode": 401}}))
    assert [n.id for n in await provider.list_nodes({TAG_HUB: HUB_ID})] == [node.id]
    provider.regions = ["ap-east-1"]
    with pytest.raises(Exception, match="credentials"):
        await provider.list_nodes({TAG_HUB: HUB_ID})


async def test_missing_sdk_is_a_reason_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if boto3 were not installed
    reason = await AWSProvider().check_available()
    assert "pip install 'cloudhop[aws]'" in reason


def test_offers_come_from_the_catalog():
    from cloudhop.spawner.offers import matching

    offers = AWSProvider().offers()
    t4 = matching(offers, provider="aws", region="us-east-1", gpu="T4", gpu_count=1)
    assert min(t4, key=lambda o: o.price_hour).instance_type == "g4dn.xlarge"


# -- Ray clusters: a security group per cluster -----------------------------------------


def ray_spec(offer, cluster, **kw):
    """A spec of one node of Ray cluster ``cluster`` (the head's notebook node by default)."""
    spec = spec_for(offer, **kw)
    return dataclasses.replace(spec, tags={**spec.tags, CLUSTER_TAG: cluster})


def refuse(client, operation, code, times=1, status=400):
    """Answer the next ``times`` calls of ``operation`` on ``client`` with EC2 error ``code``."""
    left = [times]

    def before_call(**kw):
        if left[0] <= 0:
            return None
        left[0] -= 1
        return (type("R", (), {"status_code": status})(),
                {"Error": {"Code": code, "Message": f"injected {code}"},
                 "ResponseMetadata": {"HTTPStatusCode": status}})

    client.meta.events.register_first(f"before-call.ec2.{operation}", before_call)


def ray_groups(**tags):
    filters = [{"Name": "tag-key", "Values": [CLUSTER_TAG]}]
    filters += [{"Name": f"tag:{k}", "Values": [v]} for k, v in tags.items()]
    return ec2().describe_security_groups(Filters=filters)["SecurityGroups"]


def groups_of(node_id):
    [inst] = [i for i in instances() if i["InstanceId"] == node_id.split("/")[1]]
    return {g["GroupId"] for nic in inst["NetworkInterfaces"] for g in nic["Groups"]}


def default_group():
    vpc = ec2().describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    return ec2().describe_security_groups(Filters=[
        {"Name": "vpc-id", "Values": [vpc]}, {"Name": "group-name", "Values": ["default"]}])["SecurityGroups"][0]["GroupId"]


async def test_a_ray_clusters_nodes_share_a_group_open_to_rays_ports_from_itself(provider):
    offer = cheapest("aws", "us-east-1", "T4", 1)
    head = await provider.launch(ray_spec(offer, "spawn1-aws", user="ada", server="gpu"))
    workers = await asyncio.gather(*[
        provider.launch(ray_spec(offer, "spawn1-aws", user="ada", server="gpu", role=WORKER_ROLE))
        for _ in range(3)])  # launched at once, as the cluster launches them
    [group] = ray_groups()
    tags = {t["Key"]: t["Value"] for t in group["Tags"]}
    assert tags[CLUSTER_TAG] == "spawn1-aws" and tags[TAG_HUB] == HUB_ID
    assert tags[TAG_USER] == "ada" and tags[TAG_SERVER] == "gpu"
    [rule] = group["IpPermissions"]
    assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 6379, 6506)
    assert [p["GroupId"] for p in rule["UserIdGroupPairs"]] == [group["GroupId"]]
    assert not rule.get("IpRanges")  # nothing from outside the cluster
    for node in [head, *workers]:
        # the cluster's group besides the VPC's default one (which admits the hub)
        assert groups_of(node.id) == {group["GroupId"], default_group()}
    text = repr(group)
    for secret in (FAKE_KEY, FAKE_SECRET, "fake-session-token-0001", "server-own-token-123"):
        assert secret not in text


async def test_a_plain_notebook_gets_no_ray_group(provider):
    node = await provider.launch(spec_for(cheapest("aws", "us-east-1", "T4", 1)))
    assert ray_groups() == []
    assert groups_of(node.id) == {default_group()}


async def test_configured_groups_stay_beside_the_clusters(provider):
    vpc = ec2().describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    mine = ec2().create_security_group(GroupName="hub-access", Description="hub", VpcId=vpc)["GroupId"]
    provider.security_group_ids = [mine]
    node = await provider.launch(ray_spec(cheapest("aws", "us-east-1", "T4", 1), "spawn2-aws"))
    [group] = ray_groups()
    assert groups_of(node.id) == {mine, group["GroupId"]}


async def test_the_group_goes_with_the_clusters_last_node(provider):
    offer = cheapest("aws", "us-east-1", "T4", 1)
    head = await provider.launch(ray_spec(offer, "spawn3-aws"))
    worker = await provider.launch(ray_spec(offer, "spawn3-aws", role=WORKER_ROLE))
    other = await provider.launch(ray_spec(offer, "other-aws", user="bob"))
    await provider.terminate(worker.id)
    assert len(ray_groups(**{CLUSTER_TAG: "spawn3-aws"})) == 1  # the head still uses it
    await provider.terminate(head.id)
    assert ray_groups(**{CLUSTER_TAG: "spawn3-aws"}) == []
    await provider.terminate(head.id)  # again: nothing left to do, no error
    assert len(ray_groups(**{CLUSTER_TAG: "other-aws"})) == 1  # another server's cluster stays
    assert groups_of(other.id) >= {ray_groups()[0]["GroupId"]}


async def test_a_group_still_in_use_is_deleted_once_ec2_lets_go(provider):
    provider.ray_rules.retry_delay = 0.01
    node = await provider.launch(ray_spec(cheapest("aws", "us-east-1", "T4", 1), "spawn4-aws"))
    # EC2 refuses while the instance is shutting down
    refuse(provider.client("us-east-1"), "DeleteSecurityGroup", "DependencyViolation", times=2)
    await provider.terminate(node.id)
    assert len(ray_groups()) == 1
    await provider.ray_rules.settle()
    assert ray_groups() == []


async def test_a_group_a_crashed_hub_left_goes_with_the_next_terminate(provider):
    offer = cheapest("aws", "us-east-1", "T4", 1)
    node = await provider.launch(ray_spec(offer, "spawn5-aws"))
    eve = await provider.launch(ray_spec(offer, "another-hubs", user="eve"))
    foreign = ec2().describe_security_groups(Filters=[{"Name": f"tag:{CLUSTER_TAG}", "Values": ["another-hubs"]}])
    ec2().create_tags(Resources=[foreign["SecurityGroups"][0]["GroupId"]], Tags=[{"Key": TAG_HUB, "Value": "hub-2"}])
    # the hubs die after their instances went, before they deleted their groups
    ec2().terminate_instances(InstanceIds=[node.id.split("/")[1], eve.id.split("/")[1]])
    assert len(ray_groups(**{CLUSTER_TAG: "spawn5-aws"})) == 1
    provider.ray_rules.grace = 0  # old enough not to belong to a launch in flight
    plain = await provider.launch(spec_for(offer))
    await provider.terminate(plain.id)  # any terminate of this hub (the reaper's too) sweeps
    assert ray_groups(**{CLUSTER_TAG: "spawn5-aws"}) == []
    assert len(ray_groups(**{CLUSTER_TAG: "another-hubs"})) == 1  # not this hub's: untouched


async def test_a_ray_launch_without_capacity_leaves_no_group(provider):
    inject(provider, "RunInstances", ["InsufficientInstanceCapacity"] * 2)
    with pytest.raises(CapacityError):
        await provider.launch(ray_spec(cheapest("aws", "us-east-1", "T4", 1), "spawn6-aws"))
    assert ray_groups() == [] and instances() == []


async def test_a_group_the_credentials_may_not_make_is_a_credentials_error(provider):
    refuse(provider.client("us-east-1"), "CreateSecurityGroup", "UnauthorizedOperation", status=403)
    with pytest.raises(CredentialsError, match="CreateSecurityGroup"):
        await provider.launch(ray_spec(cheapest("aws", "us-east-1", "T4", 1), "spawn7-aws"))
    assert instances() == []


# -- catalog check: a disabled region is skipped, bad credentials are not --------------


def catalog_offers():
    t4 = cheapest("aws", "us-east-1", "T4", 1)
    return [t4, dataclasses.replace(t4, region="ap-east-1"), dataclasses.replace(t4, region="eu-west-1")]


@pytest.mark.parametrize("region, code", [
    ("eu-west-1", "OptInRequired"),   # the account is not subscribed there
    ("ap-east-1", "AuthFailure"),    # an opt-in region not enabled (EC2 says not-opted-in)
])
async def test_catalog_check_skips_a_region_the_account_has_not_enabled(provider, region, code):
    refuse(provider.client(region), "DescribeInstanceTypeOfferings", code, status=401)
    got = await provider.check_catalog(catalog_offers())
    assert {r for _, r, _ in got} == {"us-east-1", "eu-west-1", "ap-east-1"} - {region}


@pytest.mark.parametrize("code", ["AuthFailure", "ExpiredToken", "InvalidClientTokenId", "UnauthorizedOperation"])
async def test_catalog_check_with_refused_credentials_is_a_credentials_error(provider, code):
    # us-east-1 needs no opt-in: an AuthFailure there is the credentials, not the region
    refuse(provider.client("us-east-1"), "DescribeInstanceTypeOfferings", code,
           status=403 if code == "UnauthorizedOperation" else 401)
    with pytest.raises(CredentialsError) as info:
        await provider.check_catalog(catalog_offers())
    message = str(info.value)
    assert code in message and "us-east-1" in message and "credentials" in message
    for secret in (FAKE_KEY, FAKE_SECRET, "fake-session-token-0001"):
        assert secret not in message


async def test_catalog_check_outage_is_not_zero_offers(provider):
    refuse(provider.client("eu-west-1"), "DescribeInstanceTypeOfferings", "InvalidParameterValue", status=400)
    with pytest.raises(Exception, match="InvalidParameterValue"):
        await provider.check_catalog(catalog_offers())


# -- clients: one per region and kind, made under a lock --------------------------------


def test_clients_made_from_threads_at_once_are_one_per_region(provider):
    import threading
    import time

    session = provider.session()
    made = []
    real = session.client

    def slow_client(*args, **kw):  # widen the window two threads could both create in
        made.append(kw.get("region_name"))
        time.sleep(0.01)
        return real(*args, **kw)

    session.client = slow_client
    got, start = [], threading.Barrier(8)

    def ask(region):
        start.wait()
        got.append((region, provider.client(region)))

    threads = [threading.Thread(target=ask, args=(r,)) for r in ["us-east-1", "eu-west-1"] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(made) == ["eu-west-1", "us-east-1"]
    assert len({id(c) for r, c in got if r == "us-east-1"}) == 1
    assert provider.client("us-east-1") is provider.client("us-east-1")
    assert provider.client("us-east-1", retries=False) is not provider.client("us-east-1")


# -- settings refuse nonsense ------------------------------------------------------------


@pytest.mark.parametrize("name, value", [
    ("subnet_id", "vpc-0abc"), ("image_id", "ubuntu"), ("security_group_ids", ["default"]),
    ("endpoint_url", "localhost:5000"),
])
def test_bad_settings_name_the_option(name, value):
    with pytest.raises(traitlets.TraitError, match=rf"^c\.AWSProvider\.{name} must be"):
        AWSProvider(**{name: value})
    assert AWSProvider(subnet_id="subnet-0abc", image_id="", security_group_ids=["sg-1"]).subnet_id == "subnet-0abc"


async def test_a_group_made_by_an_attempt_describe_missed_is_reused(provider):
    offer = cheapest("aws", "us-east-1", "T4", 1)
    await provider.launch(ray_spec(offer, "spawn8-aws"))
    # EC2's describe lags behind: the next node does not see the group and makes it again
    real = provider.client("us-east-1").describe_security_groups
    calls = []

    def lagging(**kw):
        calls.append(kw)
        return {"SecurityGroups": []} if len(calls) == 1 else real(**kw)

    provider.client("us-east-1").describe_security_groups = lagging
    node = await provider.launch(ray_spec(offer, "spawn8-aws", role=WORKER_ROLE))
    [group] = ray_groups()
    assert group["GroupId"] in groups_of(node.id)
