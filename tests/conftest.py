"""Shared fixtures. ``hub_factory`` starts real ``cloudhop up`` hubs (see hubfixture)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests import their helpers by name

from hubfixture import HubProcess  # noqa: E402

#: test files that must run on one worker, one after the other, when the suite runs in
#: parallel (pytest-xdist): those sharing the session's fresh install, and those starting
#: real Ray clusters (a Ray node takes most of a small machine's CPU while it starts)
SERIAL_GROUPS = {
    "test_one_install.py": "fresh-venv",
    "test_lab_extension.py": "fresh-venv",
    "test_ray_e2e.py": "ray",
    "test_ray_access_e2e.py": "ray",
    "test_ray_auth.py": "ray",
}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """With ``--dist loadgroup`` (the suite's default, see pyproject.toml) every test file
    runs whole on one worker, so a module's hub fixture starts once; the files named in
    :data:`SERIAL_GROUPS` share a worker with the others of their group. (A scheduler of
    our own: pytest-xdist 3.8 groups by ``xdist_group`` marks through a node-id field that
    pytest 9 no longer reads.)"""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::")[0]
            return SERIAL_GROUPS.get(Path(path).name, path)

    return FileGroups(config, log)


@pytest.fixture
def hub_factory(tmp_path):
    """Start hubs with ``hub_factory(extra_config="...")``; all are stopped, and their
    users' servers deleted, at the end of the test."""
    hubs: list[HubProcess] = []

    def make(extra_config: str = "", **kw) -> HubProcess:
        hub = HubProcess(tmp_path, extra_config=extra_config, name=f"hub{len(hubs)}", **kw)
        hubs.append(hub)
        return hub.start()

    yield make
    for hub in hubs:
        _stop_all_servers(hub)
        hub.stop()


@pytest.fixture
def compute():
    """A local double of the Compute REST API (``tests/fakes/gcp_compute.py``) that the
    real google-cloud-compute client talks to; ``compute.url`` is its endpoint."""
    from tests.fakes.gcp_compute import FakeCompute

    fake = FakeCompute()
    fake.url = fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def oci_config(tmp_path_factory):
    """An OCI SDK config file with a real (throwaway) signing key, as ~/.oci/config has;
    the directory holding it (``oci_config / "config"``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    d = tmp_path_factory.mktemp("oci")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (d / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (d / "config").write_text(
        "[DEFAULT]\n"
        "user=ocid1.user.oc1..aaaatest\n"
        "fingerprint=11:22:33:44:55:66:77:88:99:00:aa:bb:cc:dd:ee:ff\n"
        "tenancy=ocid1.tenancy.oc1..aaaatest\n"
        "region=eu-amsterdam-1\n"
        f"key_file={d / 'key.pem'}\n"
    )
    return d


@pytest.fixture
def kube_api():
    """A local double of the Kubernetes API (``tests/fakes/k8s_api.py``) with three
    nodes: four L4s (zone us-central1-a), one T4, and one without GPUs."""
    from fakes.k8s_api import FakeKubernetes

    api = FakeKubernetes().start()
    api.add_node("l4-node-1", gpus=4, labels={"cloud.google.com/gke-accelerator": "nvidia-l4",
                                              "cloud.google.com/gke-nodepool": "l4-pool",
                                              "topology.kubernetes.io/zone": "us-central1-a"})
    api.add_node("t4-node-1", gpus=1, labels={"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"})
    api.add_node("system-1")
    yield api
    api.stop()


@pytest.fixture
async def make_kube_provider(kube_api, tmp_path):
    """``make(**cluster_settings)``: a KubernetesProvider on ``kube_api`` with one cluster,
    ``gke-us`` (namespace ``jhub``, an H100 pool that can scale up), no background
    refresh and fast retries. Providers are closed on the test's event loop."""
    from traitlets.config import Config

    from cloudhop.spawner.providers.kubernetes import KubernetesProvider

    made = []

    def make(**cluster):
        config = Config()
        settings = {"kubeconfig": kube_api.kubeconfig(tmp_path / "kubeconfig"), "namespace": "jhub",
                    "flavour": "gke",
                    "pools": [{"name": "h100-pool", "gpu": "H100", "gpus_per_node": 8, "max_nodes": 2,
                               "price_per_gpu_hour": 3.0}]}
        settings.update(cluster)
        config.KubernetesProvider.clusters = {"gke-us": settings}
        config.KubernetesProvider.refresh_interval = 0
        config.KubernetesProvider.refresh_min_interval = 0
        config.KubernetesProvider.retry_delay = 0.01
        config.KubernetesProvider.default_image = "example/cloudhop-singleuser:1"
        provider = KubernetesProvider(config=config)
        made.append(provider)
        return provider

    yield make
    # providers hold aiohttp sessions bound to the test's loop; close them there
    for provider in made:
        await provider.close()


def _stop_all_servers(hub: HubProcess) -> None:
    if not hub.proc or hub.proc.poll() is not None:
        return
    try:
        users = hub.api("GET", "/users").json()
    except Exception:
        return
    for user in users:
        for name in list(user.get("servers", {})):
            try:
                hub.stop_server(user["name"], name)
            except Exception:
                pass


@pytest.fixture
def snapshot_store(tmp_path):
    """The real snapshot store service on a local directory (``store_double``), for the
    user ``alice`` with token ``tok-alice``; yields ``(harness, alice's StoreClient)``."""
    from cloudhop.extensions.snapshot import StoreClient
    from cloudhop.hub.store_backends import LocalBackend
    from store_double import ACCESS, StoreHarness

    with StoreHarness(LocalBackend(str(tmp_path / "store")), {"tok-alice": ("alice", [ACCESS])}) as harness:
        client = StoreClient(harness.url, "alice", "tok-alice")
        try:
            yield harness, client
        finally:
            client.close()


@pytest.fixture(scope="session")
def fresh_venv(tmp_path_factory):
    """The README's install in a new virtual environment (:mod:`fresh_install`), once per session."""
    from fresh_install import make_fresh_venv

    return make_fresh_venv(tmp_path_factory.mktemp("fresh"))
