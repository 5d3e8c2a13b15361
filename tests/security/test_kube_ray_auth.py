"""Attacks on a Kubernetes server's Ray cluster (KubeRay), through the Kubernetes API
double (tests/fakes/k8s_api.py) and, once, a real Ray head run with a Ray pod's own
environment and mounted token.

* The cluster's token is only in its Secret: no pod spec, RayCluster, NetworkPolicy,
  environment variable or log holds it, in clear or base64; a token in the spawn's
  environment never reaches the pod.
* Two servers get different tokens, and each server's pods mount only their own.
* The namespace's network: a cluster's pods admit only the pods of the same server
  (its notebook and the cluster's own pods), not another user's notebook or Ray pods,
  nor the same user's other server; the chart lets notebooks reach only Ray heads'
  client and dashboard ports.
* A Ray head started as KubeRay starts it (the head container's environment, the
  Secret mounted where the pod mounts it) refuses a caller without the token, or with
  another server's, and answers the owner's notebook.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cloudhop.spawner.options import RayRequest
from cloudhop.spawner.providers.base import TAG_HUB, TAG_ROLE, TAG_SERVER, TAG_USER, LaunchSpec

NS = "jhub"
HELM = Path(__file__).parent.parent.parent / "hub" / "helm"


def _spec(offer, user: str, server: str = "", request_id: str | None = None, ray=RayRequest(workers=1), env=None):
    tags = {TAG_HUB: "hub-a1", TAG_USER: user, TAG_SERVER: server, TAG_ROLE: "notebook"}
    return LaunchSpec(request_id=request_id or f"req-{user}-{server}", offer=offer, cmd=["jupyterhub-singleuser"],
                      env={"JUPYTERHUB_API_TOKEN": f"{user}-server-token", **(env or {})}, tags=tags, ray=ray)


async def _launch(provider, fake, user: str, server: str = "", **kw) -> dict:
    """Launch ``user``'s server; returns its pods and objects as the API holds them."""
    assert await provider.check_available() is None
    offer = next(o for o in provider.offers() if o.gpu == "L4" and o.gpu_count == 1)
    before = set(fake.names("pods", NS))
    node = await provider.launch(_spec(offer, user, server, **kw))
    (pod_name,) = set(fake.names("pods", NS)) - before
    pod = fake.get("pods", NS, pod_name)
    out = {"node": node, "pod": pod, "token": None, "ray": None}
    ray_name = (pod["metadata"].get("annotations") or {}).get("cloudhop.io/ray-cluster")
    if ray_name:
        out["ray"] = fake.get("rayclusters", NS, ray_name)
        out["secret"] = f"{ray_name}-token"
        out["token"] = fake.secret_data(NS, out["secret"])["token"]
    return out


def _ray_pods(ray: dict) -> dict[str, dict]:
    """The pods KubeRay makes from a RayCluster (a head and one worker): the template's
    spec and labels plus the labels KubeRay adds."""
    name = ray["metadata"]["name"]
    head = ray["spec"]["headGroupSpec"]["template"]
    (group,) = ray["spec"]["workerGroupSpecs"]
    worker = group["template"]
    return {
        "head": {"spec": head["spec"], "labels": {**head["metadata"]["labels"], "ray.io/cluster": name,
                                                  "ray.io/node-type": "head", "ray.io/is-ray-node": "yes"}},
        "worker": {"spec": worker["spec"], "labels": {**worker["metadata"]["labels"], "ray.io/cluster": name,
                                                      "ray.io/node-type": "worker", "ray.io/group": "workers",
                                                      "ray.io/is-ray-node": "yes"}},
    }


# -- the token is only in its Secret ------------------------------------------------------


async def test_no_manifest_environment_or_log_holds_the_token(kube_api, make_kube_provider, caplog):
    caplog.set_level(logging.DEBUG)
    provider = make_kube_provider()
    # a token in the spawn's environment (a bug upstream, a careless env_keep) stays out of the pod
    ana = await _launch(provider, kube_api, "ana", env={"RAY_AUTH_TOKEN": "planted-in-the-env",
                                                       "RAY_AUTH_MODE": "disabled"})
    token = ana["token"]
    assert token, "the server's Ray cluster has a token in its Secret"
    encoded = base64.b64encode(token.encode()).decode()
    for (resource, namespace, name), obj in list(kube_api.objects.items()):
        if (resource, name) == ("secrets", ana["secret"]):
            continue
        text = json.dumps(obj)
        assert token not in text and encoded not in text, f"{resource}/{name} holds the token"
        assert "planted-in-the-env" not in text, f"{resource}/{name} holds a token from the spawn's environment"
    for spec in [ana["pod"]["spec"]] + [p["spec"] for p in _ray_pods(ana["ray"]).values()]:
        (container,) = spec["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert "RAY_AUTH_TOKEN" not in env and env["RAY_AUTH_MODE"]["value"] == "token"
        assert not any("valueFrom" in e for e in env.values()), "the token is a file, never an env value"
    assert token not in caplog.text and encoded not in caplog.text
    await provider.terminate(ana["node"].id)
    assert token not in caplog.text


async def test_two_servers_get_different_tokens_and_mount_only_their_own(kube_api, make_kube_provider):
    provider = make_kube_provider()
    ana = await _launch(provider, kube_api, "ana")
    bob = await _launch(provider, kube_api, "bob")
    ana2 = await _launch(provider, kube_api, "ana", "second")
    assert len({ana["token"], bob["token"], ana2["token"]}) == 3
    for server in (ana, bob, ana2):
        specs = [server["pod"]["spec"]] + [p["spec"] for p in _ray_pods(server["ray"]).values()]
        for spec in specs:
            assert {v["secret"]["secretName"] for v in spec["volumes"] if v.get("secret")} == {server["secret"]}
    # a server without Ray mounts no token at all
    eve = await _launch(provider, kube_api, "eve", ray=None)
    assert not [v for v in eve["pod"]["spec"]["volumes"] if v.get("secret")]
    assert "RAY_AUTH_TOKEN_PATH" not in {e["name"] for e in eve["pod"]["spec"]["containers"][0]["env"]}


# -- the namespace's network ---------------------------------------------------------------


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # what Cloudhop's policies use
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _admits(policies: list[dict], source: dict, target: dict) -> bool:
    """NetworkPolicy semantics for two pods of one namespace: a pod no Ingress policy
    selects takes every connection; a selected one only those some rule allows."""
    applying = [p["spec"] for p in policies if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                and _selects(p["spec"]["podSelector"], target)]
    if not applying:
        return True
    for spec in applying:
        for rule in spec.get("ingress") or []:
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                assert set(peer) == {"podSelector"}, peer  # same namespace only
                if _selects(peer["podSelector"], source):
                    return True
    return False


async def test_a_ray_cluster_admits_only_the_pods_of_its_own_server(kube_api, make_kube_provider):
    provider = make_kube_provider()
    ana = await _launch(provider, kube_api, "ana")
    bob = await _launch(provider, kube_api, "bob")
    ana2 = await _launch(provider, kube_api, "ana", "second")
    eve = await _launch(provider, kube_api, "eve", ray=None)
    policies = [kube_api.get("networkpolicies", NS, n) for n in kube_api.names("networkpolicies", NS)]
    labels = lambda server: server["pod"]["metadata"]["labels"]  # noqa: E731
    mine, bobs, other = _ray_pods(ana["ray"]), _ray_pods(bob["ray"]), _ray_pods(ana2["ray"])
    z2jh_notebook = {"app": "jupyterhub", "component": "singleuser-server", "release": "cloudhop"}

    for target in ("head", "worker"):
        to = mine[target]["labels"]
        # the owner's notebook and the cluster's own pods get in
        assert _admits(policies, labels(ana), to)
        assert _admits(policies, mine["head"]["labels"], to) and _admits(policies, mine["worker"]["labels"], to)
        # nobody else in the namespace does
        for who, source in [("eve's notebook", labels(eve)), ("bob's notebook", labels(bob)),
                            ("bob's Ray head", bobs["head"]["labels"]), ("bob's Ray worker", bobs["worker"]["labels"]),
                            ("ana's other server", labels(ana2)), ("its Ray head", other["head"]["labels"]),
                            ("a plain z2jh notebook", z2jh_notebook), ("an unlabelled pod", {})]:
            assert not _admits(policies, source, to), f"{who} reaches ana's Ray {target}"


def _egress_allows(rules: list[dict], target: dict, port: int) -> bool:
    for rule in rules:
        if any(_selects(peer["podSelector"], target) for peer in rule["to"]) and \
                any(p["port"] == port for p in rule.get("ports") or [{"port": port}]):
            return True
    return False


async def test_the_chart_lets_notebooks_reach_only_ray_heads_client_and_dashboard(kube_api, make_kube_provider):
    values = yaml.safe_load((HELM / "values.yaml").read_text())
    rules = values["singleuser"]["networkPolicy"]["egress"]
    provider = make_kube_provider()
    pods = _ray_pods((await _launch(provider, kube_api, "ana"))["ray"])
    assert _egress_allows(rules, pods["head"]["labels"], 10001) and _egress_allows(rules, pods["head"]["labels"], 8265)
    for port in (6379, 8076, 52365):  # GCS, the object manager, the dashboard agent
        assert not _egress_allows(rules, pods["head"]["labels"], port), port
    assert not _egress_allows(rules, pods["worker"]["labels"], 10001)


# -- a real Ray head, as KubeRay runs it ---------------------------------------------------


def _pod_env(fake, spec: dict, root: Path) -> dict:
    """The first container's environment as it runs in the pod, its Secret volumes
    made as the kubelet makes them (each item a file of the volume's mode) under
    ``root``, and the paths in the environment pointed there."""
    (container,) = spec["containers"]
    env = {e["name"]: e["value"] for e in container.get("env") or []}
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        secret = volumes[mount["name"]].get("secret")
        if not secret:
            continue
        folder = root / mount["mountPath"].lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        data = fake.secret_data(NS, secret["secretName"])
        for item in secret["items"]:
            path = folder / item["path"]
            path.write_text(data[item["key"]])
            os.chmod(path, secret["defaultMode"])
        env = {k: v.replace(mount["mountPath"], str(folder)) for k, v in env.items()}
    return env


CALLER = """
import json, os, urllib.error, urllib.request
import grpc
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
from cloudhop.spawner.ray.auth import auth_headers, read_token

token = read_token(os.environ)
channel = grpc.insecure_channel("127.0.0.1:GCS")
try:
    gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
        gcs_service_pb2.GetClusterIdRequest(), timeout=30,
        metadata=[("authorization", f"Bearer {token}")] if token else [])
    gcs = "OK"
except grpc.RpcError as err:
    gcs = err.code().name
req = urllib.request.Request("http://127.0.0.1:DASHBOARD/api/v0/nodes", headers=auth_headers(os.environ))
try:
    dashboard = urllib.request.urlopen(req, timeout=30).status
except urllib.error.HTTPError as err:
    dashboard = err.code
print(json.dumps({"gcs": gcs, "dashboard": dashboard}))
"""


def _call(env: dict, gcs: int, dashboard: int) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
    out = subprocess.run([sys.executable, "-c", CALLER.replace("GCS", str(gcs)).replace("DASHBOARD", str(dashboard))],
                         env={**base, **env}, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.e2e
async def test_a_head_run_as_kuberay_runs_it_refuses_callers_without_its_token(kube_api, make_kube_provider, tmp_path):
    from cloudhop.spawner.ray.commands import head_start_args, temp_dir_for
    from cloudhop.spawner.ray.node import RayNode, private_root
    from cloudhop.spawner.ray.ports import claim_free_block

    provider = make_kube_provider()
    ana = await _launch(provider, kube_api, "ana")
    bob = await _launch(provider, kube_api, "bob")
    eve = await _launch(provider, kube_api, "eve", ray=None)
    head_env = _pod_env(kube_api, _ray_pods(ana["ray"])["head"]["spec"], tmp_path / "head")
    callers = {
        "ana's notebook": _pod_env(kube_api, ana["pod"]["spec"], tmp_path / "ana"),
        "bob's notebook": _pod_env(kube_api, bob["pod"]["spec"], tmp_path / "bob"),
        "eve's notebook": _pod_env(kube_api, eve["pod"]["spec"], tmp_path / "eve"),
    }
    assert head_env["RAY_AUTH_MODE"] == "token" and Path(head_env["RAY_AUTH_TOKEN_PATH"]).read_text() == ana["token"]

    lock = claim_free_block()
    block = lock.block
    lock.release()  # ray start binds the ports itself
    node = RayNode(head_start_args(block, temp_dir=temp_dir_for(block.base, private_root()), loopback=True),
                   temp_dir_for(block.base, private_root()), loopback=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
    node.start({**base, **head_env})
    try:
        assert node.started.wait(240), "the head did not start"
        seen = {who: _call(env, block.port, block.dashboard_port) for who, env in callers.items()}
    finally:
        node.stop()
    # the dashboard answers a wrong token 403, none 401
    assert seen == {"ana's notebook": {"gcs": "OK", "dashboard": 200},
                    "bob's notebook": {"gcs": "UNAUTHENTICATED", "dashboard": 403},
                    "eve's notebook": {"gcs": "UNAUTHENTICATED", "dashboard": 401}}, seen
