"""End to end on the Kubernetes provider: a real `cloudhop up` hub spawns through the
Kubernetes API double (tests/fakes/k8s_api.py). A small kubelet double in this test runs
each created pod's container command as a local process with the pod's environment and
reports the pod Running, so the hub proxies to a real single-user server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest
import requests

from fakes.k8s_api import FakeKubernetes
from hubfixture import HubProcess, free_port

pytestmark = pytest.mark.e2e

NS = "cloudhop"
DATA = os.path.join(os.path.dirname(__file__), "data", "z2jh", "runai-gpu-profiles.yaml")


def login(hub: HubProcess, name: str) -> requests.Session:
    """A browser-like session logged in with the hub's shared user password."""
    session = requests.Session()
    session.get(f"{hub.url}/hub/login", timeout=30)
    password = (hub.data_dir / "user_password").read_text().strip()
    r = session.post(f"{hub.url}/hub/login", data={
        "username": name, "password": password, "_xsrf": session.cookies.get("_xsrf", ""),
    }, allow_redirects=False, timeout=30)
    assert r.status_code == 302, r.text[:500]
    return session


class KubeletDouble:
    """Starts a process per new pod (its args and env), marks it Running on 127.0.0.1,
    and kills the process when the pod is deleted."""

    def __init__(self, api: FakeKubernetes, workdir):
        self.api, self.workdir = api, workdir
        self.procs: dict[str, subprocess.Popen] = {}
        self.envs: dict[str, dict] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            pods = self.api.pods(NS)
            for name, pod in pods.items():
                if name in self.procs or pod["metadata"].get("deletionTimestamp"):
                    continue
                (container,) = pod["spec"]["containers"]
                env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
                args = list(container["args"])
                if args[0] == "jupyterhub-singleuser":  # the image's entry point, here in this venv
                    args = [sys.executable, "-m", "jupyterhub.singleuser", *args[1:]]
                if os.geteuid() == 0:  # a pod runs as the image's user; this test may run as root
                    args.append("--allow-root")
                home = self.workdir / name
                home.mkdir(exist_ok=True)
                self.envs[name] = env
                self.procs[name] = subprocess.Popen(
                    args, cwd=home, env={"PATH": os.environ["PATH"], "HOME": str(home), **env},
                    stdout=open(self.workdir / f"{name}.log", "ab"), stderr=subprocess.STDOUT,
                    start_new_session=True)
                self.api.set_phase(NS, name, "Running", ip="127.0.0.1", node="gpu-node-1")
            for name in [n for n in self.procs if n not in pods]:
                self._kill(name)
            time.sleep(0.2)

    def _kill(self, name):
        proc = self.procs.pop(name)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self._stop.set()
        self.thread.join(5)
        for name in list(self.procs):
            self._kill(name)


@pytest.fixture
def cluster(tmp_path):
    api = FakeKubernetes().start()
    api.add_node("gpu-node-1", gpus=4, labels={"cloud.google.com/gke-accelerator": "nvidia-l4"})
    kubelet = KubeletDouble(api, tmp_path).start()
    yield api, kubelet
    kubelet.stop()
    api.stop()


def test_spawn_on_kubernetes_with_a_ray_cluster(cluster, tmp_path):
    api, kubelet = cluster
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
    hub = HubProcess(tmp_path, extra_config=f"""
        c.CloudhopSpawner.providers = ["kubernetes"]
        c.KubernetesProvider.clusters = {{"fake-gke": {{
            "kubeconfig": {kubeconfig!r}, "namespace": {NS!r}, "flavour": "gke", "profile_list": {DATA!r},
            "pools": [{{"name": "h100-pool", "gpu": "H100", "gpus_per_node": 8, "max_nodes": 1}}]}}}}
        c.KubernetesProvider.node_port = {free_port()}
        c.KubernetesProvider.refresh_interval = 0
    """)
    hub.start()
    try:
        # the spawn form lists the cluster's GPUs, the scalable pool and the z2jh profiles
        form = login(hub, "ana").get(f"{hub.url}/hub/spawn", timeout=30)
        assert form.status_code == 200, form.text[:500]
        data = re.search(r'<script type="application/json" id="ch-offers-data">(.*?)</script>', form.text, re.S)
        offers = {o["instance_type"]: o for o in json.loads(data.group(1))}
        assert offers["l4-x1"]["available"] == 4 and offers["l4-x1"]["gpu"] == "L4"
        assert offers["h100-pool-x8"]["available"] == 1 and "scales up" in offers["h100-pool-x8"]["note"]
        assert offers["ra-2"]["gpu_count"] == 2 and "Run:AI with 2 GPU" in offers["ra-2"]["note"]

        model = hub.spawn("ana", {"provider": "kubernetes", "region": "fake-gke", "gpu": "L4", "gpu_count": 2,
                                  "ray": {"workers": 1, "gpu": "H100", "gpu_count": 8}})
        state = model["state"]
        (pod_name,) = api.names("pods", NS)
        assert state["nodes"] == [{"provider": "kubernetes", "id": f"fake-gke/{NS}/{pod_name}",
                                   "role": "notebook", "region": "fake-gke"}]
        pod = api.get("pods", NS, pod_name)
        assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "2"}
        assert pod["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
        (ray_name,) = api.names("rayclusters", NS)
        rc = api.get("rayclusters", NS, ray_name)
        assert rc["metadata"]["ownerReferences"][0]["name"] == pod_name
        assert rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"][
            "nvidia.com/gpu"] == "8"
        env = kubelet.envs[pod_name]
        assert env["RAY_ADDRESS"].startswith(f"ray://{ray_name}-head-svc.{NS}.svc")
        assert env["CLOUDHOP_GPU"] == "L4"

        # the hub proxies to the real server the pod runs
        status = hub.server_api("GET", "ana", "api/status")
        assert status.status_code == 200, status.text

        # the hub restarts: it finds the pod through the provider and keeps the server
        hub.stop()
        hub.start()
        model = hub.wait_ready("ana")
        assert model["state"]["node"]["id"] == f"fake-gke/{NS}/{pod_name}"
        assert hub.server_api("GET", "ana", "api/status").status_code == 200
        assert api.names("pods", NS) == [pod_name]

        hub.stop_server("ana")
        assert api.names("pods", NS) == [] and api.names("rayclusters", NS) == []
        assert len(api.names("persistentvolumeclaims", NS)) == 1  # the workspace stays
    finally:
        hub.stop()
