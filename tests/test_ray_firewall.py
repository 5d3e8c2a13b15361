"""What the VM providers' Ray firewall rules rest on: every node of one server's Ray
cluster carries one cluster tag (the head's notebook node and each worker, across a hub
restart), and the choice of rules a terminate may remove. The providers' own rules are
tested against their clouds' doubles in test_aws.py, test_gcp.py and test_oci.py."""

from __future__ import annotations

import re
from types import SimpleNamespace

from cloudhop.spawner.offers import Offer
from cloudhop.spawner.options import LaunchRequest, RayRequest
from cloudhop.spawner.providers.base import PENDING, RUNNING, STOPPING, TAG_ROLE, Node, Provider
from cloudhop.spawner.ray import CLUSTER_TAG, WORKER_ROLE
from cloudhop.spawner.providers.ray_firewall import PORTS, RayRule, cluster_of, removable, rule_name
from cloudhop.spawner.ray.ports import VM_PORT_RANGE
from tests.cloudkit import spec_for
import ray_calls as hooks

A10G = Offer("aws", "us-east-1", "g5.xlarge", "A10G", 1, vcpus=4, memory_gib=16, price_hour=1.0,
             zones=("use1-az1",))


class RecordingCloud(Provider, partial=True):
    """Launches nothing: remembers each spec and answers a running node."""

    name = "aws"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.specs = []

    async def launch(self, spec):
        self.specs.append(spec)
        return Node(f"us-east-1/i-{len(self.specs)}", "aws", "us-east-1", RUNNING, ip="10.0.0.9",
                    tags={**spec.tags, "cloudhop-request": spec.request_id})


def new_spawner(cloud):
    from cloudhop.spawner import CloudhopSpawner

    s = CloudhopSpawner(user=SimpleNamespace(name="ada", url="/user/ada/", escaped_name="ada"))
    s.provider = lambda name: cloud
    return s


async def test_the_head_and_its_workers_carry_one_cluster_tag_across_a_restart():
    cloud = RecordingCloud()
    s = new_spawner(cloud)
    request = LaunchRequest(provider="aws", region="us-east-1", gpu="A10G", gpu_count=1,
                            ray=RayRequest(workers=2, gpu="A10G", gpu_count=1))
    notebook = hooks.wrap_notebook_spec(s, spec_for(A10G, request_id="spawn1-0123456789"), request)
    cluster = notebook.tags[CLUSTER_TAG]
    assert cluster == "spawn1-0123456789"
    head = await cloud.launch(notebook)
    await hooks.start_workers(s, request, A10G, head, [A10G], "spawn1")
    workers = cloud.specs[1:]
    assert len(workers) == 2 and all(w.role == WORKER_ROLE for w in workers)
    assert {w.tags[CLUSTER_TAG] for w in workers} == {cluster}
    # a restarted hub launches further workers into the same cluster
    state = {}
    hooks.save_state(s, state)
    t = new_spawner(cloud)
    hooks.load_state(t, state)
    assert t.ray_cluster.tags[CLUSTER_TAG] == cluster and t.ray_cluster.tags[TAG_ROLE] == WORKER_ROLE


def test_a_server_without_ray_gets_no_cluster_tag():
    s = new_spawner(RecordingCloud())
    spec = hooks.wrap_notebook_spec(s, spec_for(A10G), LaunchRequest(provider="aws", region="us-east-1"))
    assert CLUSTER_TAG not in spec.tags and cluster_of(spec.tags) is None


def test_the_rule_opens_exactly_the_vm_port_block_under_a_name_every_cloud_takes():
    assert PORTS == VM_PORT_RANGE == (6379, 6506)
    name = rule_name("0123456789abcdef0123456789abcdef-0123456789")
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name)  # GCP names and network tags
    assert name == rule_name("0123456789abcdef0123456789abcdef-0123456789") != rule_name("other")


def node(cluster, state, node_id=None):
    return Node(node_id or f"r/{cluster}-{state}", "aws", "r", state, tags={CLUSTER_TAG: cluster})


def test_a_rule_goes_once_no_node_of_its_cluster_is_pending_or_running():
    rules = [RayRule("sg-a", "a", created=1000.0), RayRule("sg-b", "b", created=1000.0)]
    nodes = [node("a", STOPPING), node("b", PENDING), node("a", RUNNING, "r/just-terminated")]
    # "a"'s last running node is the one just terminated (the describe may lag behind)
    assert removable(rules, nodes, cluster="a", exclude={"r/just-terminated"}, now=1001.0) == [rules[0]]
    assert removable(rules, nodes, cluster="a", now=1001.0) == []  # still running
    # "b" has a node starting; "a" is not the cluster asked about, and is young
    assert removable(rules, nodes, cluster="b", exclude={"r/just-terminated"}, now=1001.0) == []


def test_another_clusters_rule_without_nodes_goes_only_once_old():
    orphan = RayRule("fw-c", "c", created=1000.0)
    unknown_age = RayRule("fw-d", "d", created=None)
    assert removable([orphan, unknown_age], [], cluster="a", now=1000.0 + 60, grace=900) == []
    assert removable([orphan, unknown_age], [], cluster="a", now=1000.0 + 900, grace=900) == [orphan]
