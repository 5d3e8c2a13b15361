"""Attacks on a server's Ray cluster: its ports and its token.

* On this machine a head listens on loopback only, every port of it (GCS, raylet,
  object manager, client server, dashboard, agents, metrics): nothing on 0.0.0.0 or ::.
* Another user's kernel reaching those ports without the cluster's token (or with a
  wrong one) is refused by Ray: GCS and raylet calls, the dashboard's API, a job.
* The owner's kernel is a driver with ``ray.init()`` and no argument; the server's
  dashboard proxy works, and never hands the token to the browser.
* The token is in no command line, no kernel's environment, no hub or node log, and
  on a VM only inside the root-only env file of the user-data.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from cloudhop.spawner.options import LaunchRequest, RayRequest
from cloudhop.spawner.providers.base import TAG_ROLE, TAG_USER
from cloudhop.spawner.ray import WORKER_ROLE
from cloudhop.spawner.ray.auth import MODE_VAR, PATH_VAR, TOKEN_VAR, new_token, take_token
from cloudhop.spawner.ray.launcher import RayLauncher
from cloudhop.spawner.ray.node import PrivateRootError, private_root
from isolation import TEST_ISOLATION
from test_ray_e2e import session_procs, wait_for
from tests.cloudkit import OFFERS, cheapest, spec_for

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
ENV_FILE = "/etc/cloudhop/env"


# -- the node's launcher: the token goes into a private file ----------------------------


def test_a_launcher_moves_the_token_into_a_private_file(tmp_path):
    root = private_root(str(tmp_path))
    assert (os.stat(root).st_mode & 0o777) == 0o700
    token = new_token()
    env = {TOKEN_VAR: token, "KEEP": "1"}
    path = take_token(env, os.path.join(root, "ray-24064.token"))
    assert TOKEN_VAR not in env, "what the launcher starts inherits the path, never the token"
    assert env[PATH_VAR] == path and env[MODE_VAR] == "token" and env["KEEP"] == "1"
    st = os.stat(path)
    assert (st.st_mode & 0o777) == 0o600 and st.st_uid == os.getuid()
    assert Path(path).read_text() == token


def test_a_squatted_private_folder_is_refused(tmp_path):
    """Another account cannot make a node's folder first (to read or plant files): a
    link, or a folder this account does not own, in its place is refused."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o777)
    (tmp_path / f"cloudhop-u{os.getuid()}").symlink_to(elsewhere)
    with pytest.raises(PrivateRootError, match="not a folder of this account"):
        private_root(str(tmp_path))
    if os.geteuid() == 0:
        other = tmp_path / "other"
        other.mkdir()
        squatted = other / "cloudhop-u0"
        squatted.mkdir(mode=0o777)
        os.chown(squatted, 65534, 65534)
        with pytest.raises(PrivateRootError, match="not a folder of this account"):
            private_root(str(other))


def test_a_token_file_planted_as_a_link_is_not_followed(tmp_path):
    root = private_root(str(tmp_path))
    target = tmp_path / "victim"
    target.write_text("precious")
    os.symlink(target, os.path.join(root, "ray-24064.token"))
    take_token({TOKEN_VAR: "t0ken"}, os.path.join(root, "ray-24064.token"))
    assert target.read_text() == "precious"
    assert not os.path.islink(os.path.join(root, "ray-24064.token"))


def test_the_proxy_knows_rays_token_cookie_route_however_it_is_spelled():
    from cloudhop.extensions.ray_api import RAY_AUTHENTICATE, dashboard_path

    for spelled in ("api/authenticate", "/api//authenticate/", "api%2Fauthenticate", "api/%61uthenticate"):
        assert dashboard_path(spelled) == RAY_AUTHENTICATE, spelled
    assert dashboard_path("api/v0/nodes") != RAY_AUTHENTICATE


# -- a VM's user-data: the token only in the root-only env file --------------------------


@pytest.fixture
def aws(monkeypatch):
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEHUBKEY000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake/hub/secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        yield


async def test_a_vm_node_gets_the_token_only_in_its_root_only_env_file(aws):
    import boto3

    from cloudhop.spawner.providers.aws import AWSProvider

    cloud = AWSProvider(image_ssm_parameter="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64",
                        retry_base_delay=0.01, regions=["us-east-1"])
    offer = cheapest("aws", "us-east-1", "T4", 1)
    request = LaunchRequest(provider="aws", region="us-east-1", gpu="T4", gpu_count=1,
                            ray=RayRequest(workers=1, gpu="T4", gpu_count=1))
    ray = RayLauncher(lambda name: cloud)
    head = ray.wrap_notebook_spec(spec_for(offer, user="ada"), request)
    notebook = await cloud.launch(head.spec)
    await ray.start_workers(request, offer, notebook, OFFERS, "spawn1", head=head,
                            tags={TAG_USER: "ada", TAG_ROLE: WORKER_ROLE})
    assert len(ray.cluster.live()) == 1
    token = ray.cluster.token
    assert token and token == head.token

    ec2 = boto3.client("ec2", region_name="us-east-1")
    reservations = ec2.describe_instances()["Reservations"]
    nodes = [i for r in reservations for i in r["Instances"]]
    assert len(nodes) == 2  # the head's notebook node and the worker
    for inst in nodes:
        attr = ec2.describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="userData")
        text = base64.b64decode(attr["UserData"]["Value"]).decode()
        doc = yaml.safe_load(text)
        holders = [f for f in doc["write_files"] if token in f["content"]]
        assert [f["path"] for f in holders] == [ENV_FILE], "the token is in the env file and nowhere else"
        assert holders[0]["permissions"] == "0600" and holders[0]["owner"] == "root:root"
        assert f"{TOKEN_VAR}={token}" in holders[0]["content"].splitlines()
        assert f"{MODE_VAR}=token" in holders[0]["content"].splitlines()
        assert text.count(token) == 1
    assert token not in json.dumps(ray.cluster.status()), "what users see never holds the token"
    await ray.stop()


# -- a real cluster on this machine: ports, refusals, the owner's kernel -----------------


def _listeners(procs: list[psutil.Process]) -> dict[int, set[str]]:
    """port -> addresses listened on, by the processes ``procs``."""
    out: dict[int, set[str]] = {}
    for p in procs:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.setdefault(c.laddr.port, set()).add(c.laddr.ip)
        except psutil.Error:
            continue
    return out


def _head_launcher(base: int) -> psutil.Process:
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "cloudhop.spawner.ray.head" in cmd and f"--port-base={base}" in cmd:
            return p
    raise AssertionError(f"no head launcher on block {base}")


ATTACK = """
import grpc, json, urllib.request, urllib.error
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc, node_manager_pb2, node_manager_pb2_grpc

def rpc(port, stub, method, request, metadata):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        getattr(stub(channel), method)(request, timeout=15, metadata=metadata)
        return "OK"
    except grpc.RpcError as err:
        return err.code().name
    finally:
        channel.close()

def http(url, method="GET", body=None):
    req = urllib.request.Request(url, method=method, data=body, headers={"Content-Type": "application/json"})
    try:
        return urllib.request.urlopen(req, timeout=15).status
    except urllib.error.HTTPError as err:
        return err.code

out = {}
for name, md in (("none", []), ("wrong", [("authorization", "Bearer not-the-token")])):
    out["gcs-" + name] = rpc(BASE, gcs_service_pb2_grpc.NodeInfoGcsServiceStub, "GetClusterId",
                             gcs_service_pb2.GetClusterIdRequest(), md)
    out["raylet-" + name] = rpc(BASE + 1, node_manager_pb2_grpc.NodeManagerServiceStub, "GetNodeStats",
                                node_manager_pb2.GetNodeStatsRequest(), md)
out["dashboard"] = http(f"http://127.0.0.1:{BASE + 3}/api/v0/nodes")
out["job"] = http(f"http://127.0.0.1:{BASE + 3}/api/jobs/", "POST",
                  json.dumps({"entrypoint": "touch /tmp/pwned-by-eve"}).encode())
print(json.dumps(out))
"""


@pytest.mark.e2e
def test_another_users_kernel_cannot_reach_a_ray_cluster_without_its_token(hub_factory):
    hub = hub_factory()
    model = hub.spawn("ada", {"provider": "local", "gpu": "none", "ray": {"workers": 0}}, timeout=180)
    ray_state = model["state"]["ray"]
    base = ray_state["port_base"]
    wait_for(lambda: hub.server_api("GET", "ada", "cloudhop/ray").json().get("alive") == 1, 180,
             "the head in the server's Ray status", hub=hub)

    # (a) every port of the head's node listens on loopback only
    launcher = _head_launcher(base)
    ray_ports = {base + i for i in (0, 1, 2, 3, 4)}  # GCS, raylet, object manager, dashboard, client
    listening = wait_for(lambda: (seen := _listeners(session_procs(launcher.pid))) and ray_ports <= set(seen)
                         and seen, 60, "the head's ports")
    exposed = {port: addrs - LOOPBACK for port, addrs in listening.items() if addrs - LOOPBACK}
    assert not exposed, f"Ray ports reachable from outside this machine: {exposed}"

    # (b) another user's kernel, on the same machine, is refused without the token
    hub.spawn("eve", {"provider": "local", "gpu": "none"}, timeout=120)
    eve = hub.kernel("eve")
    seen = json.loads(eve.execute(ATTACK.replace("BASE", str(base)), timeout=120).strip().splitlines()[-1])
    assert seen == {"gcs-none": "UNAUTHENTICATED", "raylet-none": "UNAUTHENTICATED",
                    "gcs-wrong": "UNAUTHENTICATED", "raylet-wrong": "UNAUTHENTICATED",
                    "dashboard": 401, "job": 401}, seen
    token = ray_state.get("token")
    assert token, "the cluster has a token"
    if TEST_ISOLATION == "users":  # eve's account cannot read ada's token file either
        token_file = f"/tmp/cloudhop-u{launcher.uids().real}/ray-{base}.token"
        out = eve.execute(f"try:\n    open({token_file!r}).read()\n    print('read')\n"
                          "except PermissionError:\n    print('refused')\n")
        assert out.strip() == "refused"
    eve.close()

    # (c) the owner's kernel drives the cluster with no argument; it holds the path, not the token
    ada = hub.kernel("ada")
    out = ada.execute(
        "import hashlib, json, os, ray\n"
        "ray.init()\n"
        "path = os.environ['RAY_AUTH_TOKEN_PATH']\n"
        "st = os.stat(path)\n"
        "secret = open(path).read()\n"
        "print(json.dumps({'nodes': len([n for n in ray.nodes() if n['Alive']]),\n"
        "                  'token_in_env': any(secret in v for v in os.environ.values()),\n"
        "                  'sha': hashlib.sha256(secret.encode()).hexdigest(),\n"
        "                  'mode': oct(st.st_mode & 0o777), 'mine': st.st_uid == os.getuid()}))\n",
        timeout=180)
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen == {"nodes": 1, "token_in_env": False, "sha": hashlib.sha256(token.encode()).hexdigest(),
                    "mode": "0o600", "mine": True}, seen
    ada.close()

    # the dashboard through the server's proxy works, and never hands the token out
    r = hub.server_api("GET", "ada", "ray-dashboard/api/v0/nodes")
    assert r.status_code == 200 and len(r.json()["data"]["result"]["result"]) == 1, r.text[:300]
    direct = requests.get(f"http://127.0.0.1:{base + 3}/api/v0/nodes", timeout=30)
    assert direct.status_code == 401
    for path in ("ray-dashboard/api/authenticate", "ray-dashboard//api/authenticate/",
                 "ray-dashboard/api%2Fauthenticate"):
        r = hub.server_api("POST", "ada", path, allow_redirects=False)
        assert r.status_code == 404, (path, r.status_code, r.text[:200])
        assert token not in json.dumps(dict(r.headers)) and token not in r.text

    # (d) the token is in no command line and no log
    for p in psutil.process_iter(["cmdline"]):
        assert token not in " ".join(p.info["cmdline"] or []), f"the token is in the command line of {p.pid}"
    leaks = []
    for path in Path(hub.tmp_path).rglob("*"):
        if path.is_file() and not re.search(r"\.sqlite", path.name) and token in path.read_text(errors="replace"):
            leaks.append(str(path))
    assert not leaks, f"the token was written to {leaks}"
