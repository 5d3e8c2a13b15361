"""The Helm values and RBAC in hub/helm: the config runs, and the RBAC grants every
Kubernetes API call the provider makes (recorded against the API double)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from traitlets.config import Config

from cloudhop.hub.reaper import SERVICE_NAME as REAPER, SETTINGS_ENV, Reaper, build
from cloudhop.spawner.options import RayRequest
from cloudhop.spawner.providers.base import TAG_HUB, TAG_ROLE, TAG_SERVER, TAG_USER, LaunchSpec
from cloudhop.spawner.providers.kubernetes import KubernetesProvider
from fakes.k8s_api import FakeKubernetes

HELM = Path(__file__).parent.parent / "hub" / "helm"


def chart_config(values: dict) -> Config:
    """What the z2jh chart's jupyterhub_config.py does with these values, for the
    parts Cloudhop reads: singleuser.image and profileList, then hub.extraConfig."""
    c = Config()
    # the chart's own services and roles come first (the idle culler when cull.enabled)
    c.JupyterHub.services, c.JupyterHub.load_roles = [], []
    if values.get("cull", {}).get("enabled"):
        c.JupyterHub.services.append({"name": "jupyterhub-idle-culler", "command": ["python3", "-m", "jupyterhub_idle_culler"]})
        c.JupyterHub.load_roles.append({"name": "jupyterhub-idle-culler", "services": ["jupyterhub-idle-culler"],
                                        "scopes": ["list:users", "delete:servers"]})
    image = values["singleuser"]["image"]
    c.KubeSpawner.image = f"{image['name']}:{image['tag']}"
    c.KubeSpawner.profile_list = values["singleuser"].get("profileList") or []
    for _, snippet in sorted(values["hub"]["extraConfig"].items()):
        exec(compile(snippet, "extraConfig", "exec"), {"c": c})
    return c


def test_values_install_cloudhop_with_the_kubernetes_provider():
    values = yaml.safe_load((HELM / "values.yaml").read_text())
    c = chart_config(values)
    assert c.JupyterHub.spawner_class == "cloudhop"
    assert c.CloudhopSpawner.providers == ["kubernetes"]
    provider = KubernetesProvider(config=c)
    assert provider.default_image == "cloudhop/singleuser:0.1.0"
    offers = {o.instance_type: o for o in provider.offers()}  # config only, no cluster read
    assert offers["l4-pool-x1"].available == 8
    assert offers["a100-pool-x8"].gpu == "A100-80GB"
    assert offers["t4-notebook"].gpu == "T4" and offers["t4-notebook"].gpu_count == 1
    assert provider.extra_labels["hub.jupyter.org/network-access-hub"] == "true"


def helm_values(**site_snippets) -> dict:
    values = yaml.safe_load((HELM / "values.yaml").read_text())
    values["hub"]["extraConfig"].update(site_snippets)
    return values


def reaper_settings(c: Config) -> dict:
    [service] = [s for s in c.JupyterHub.services if s["name"] == REAPER]
    assert service["command"][-2:] == ["-m", "cloudhop.hub.reaper"]
    return json.loads(service["environment"][SETTINGS_ENV])


def test_values_add_the_reaper_after_the_sites_own_config():
    # a site's snippet sorts between Cloudhop's two, so the reaper sees its providers
    c = chart_config(helm_values(**{"50-site": 'c.CloudhopSpawner.providers = ["kubernetes", "gcp"]\n'
                                               'c.GCPProvider.project = "site-project"\n'}))
    assert [s["name"] for s in c.JupyterHub.services] == ["jupyterhub-idle-culler", REAPER]
    [role] = [r for r in c.JupyterHub.load_roles if r["name"] == REAPER]
    assert role["services"] == [REAPER] and "admin:users" not in role["scopes"]
    assert "jupyterhub-idle-culler" in {r["name"] for r in c.JupyterHub.load_roles}
    settings = reaper_settings(c)
    assert settings["hub_id"] == "z2jh-cloudhop-cloudhop" == c.CloudhopSpawner.hub_id
    assert settings["providers"] == ["kubernetes", "gcp"]
    assert settings["config"]["GCPProvider"]["project"] == "site-project"
    assert settings["config"]["KubernetesProvider"]["clusters"]["this-cluster"]["in_cluster"] is True
    assert settings["report"] == "/srv/jupyterhub/reaper-report.json"  # the hub's volume


def test_a_site_can_turn_the_reaper_off():
    c = chart_config(helm_values(**{"50-site": "c.CloudhopReaper.enabled = False\n"}))
    assert REAPER not in {s["name"] for s in c.JupyterHub.services}


class _NoServers:
    async def users(self):
        return []


async def test_the_helm_reaper_reaps_a_pod_no_server_owns(tmp_path):
    settings = reaper_settings(chart_config(helm_values()))
    fake = FakeKubernetes().start()
    try:
        # this cluster as the reaper in the hub pod sees it, reached through the API double
        cluster = settings["config"]["KubernetesProvider"]["clusters"]["this-cluster"]
        del cluster["in_cluster"]
        cluster.update(kubeconfig=fake.kubeconfig(tmp_path / "kc"), namespace="cloudhop")
        settings["report"] = str(tmp_path / "reaper-report.json")
        built, interval = build(settings, "http://127.0.0.1:9/hub/api", "t")
        provider = built.providers["kubernetes"]
        assert interval == 300
        offer = next(o for o in provider.offers() if o.gpu == "L4")
        tags = {TAG_HUB: settings["hub_id"], TAG_USER: "ada", TAG_SERVER: "", TAG_ROLE: "notebook"}
        node = await provider.launch(LaunchSpec(request_id="leaked", offer=offer, cmd=["x"], env={}, tags=tags))
        report = await Reaper(built.providers, _NoServers(), settings["hub_id"], grace=0,
                              report=settings["report"]).sweep()
        assert report["providers"]["kubernetes"]["terminated"] == [node.id]
        assert fake.names("pods", "cloudhop") == []
        await provider.close()
    finally:
        fake.stop()


def _rules(docs: list, kind: str) -> set:
    out = set()
    for doc in docs:
        if doc["kind"] == kind:
            for rule in doc["rules"]:
                for group in rule["apiGroups"]:
                    for res in rule["resources"]:
                        for verb in rule["verbs"]:
                            out.add((group, res, verb))
    return out


def _needed(method: str, path: str) -> tuple[str, str, str, bool]:
    """(apiGroup, resource, verb, cluster_scoped) for one API request."""
    m = re.match(r"^/(?:api/v1|apis/(?P<group>[^/]+)/v1)(?:/namespaces/[^/]+)?/(?P<res>[a-z]+)(?P<name>/[^/]+)?$", path)
    assert m, path
    verb = {"POST": "create", "DELETE": "delete"}.get(method) or ("get" if m.group("name") else "list")
    return m.group("group") or "", m.group("res"), verb, "/namespaces/" not in path


async def test_rbac_grants_every_call_the_provider_makes(tmp_path):
    docs = list(yaml.safe_load_all((HELM / "rbac.yaml").read_text()))
    role, cluster_role = _rules(docs, "Role"), _rules(docs, "ClusterRole")
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert all(d["subjects"] == [{"kind": "ServiceAccount", "name": "hub", "namespace": "cloudhop"}] for d in bindings)

    fake = FakeKubernetes().start()
    try:
        fake.add_node("gpu-1", gpus=1, labels={"cloud.google.com/gke-accelerator": "nvidia-l4"})
        config = Config()
        config.KubernetesProvider.clusters = {"c": {"kubeconfig": fake.kubeconfig(tmp_path / "kc"),
                                                    "namespace": "cloudhop", "flavour": "gke"}}
        config.KubernetesProvider.refresh_interval = 0
        config.KubernetesProvider.delete_workspace_on_stop = True
        provider = KubernetesProvider(config=config)
        assert await provider.check_available() is None
        offer = next(o for o in provider.offers() if o.gpu == "L4")
        tags = {TAG_HUB: "h", TAG_USER: "u", TAG_SERVER: "", TAG_ROLE: "notebook"}
        node = await provider.launch(LaunchSpec(request_id="r", offer=offer, cmd=["x"], env={}, tags=tags,
                                                ray=RayRequest(workers=1)))
        pod = fake.names("pods", "cloudhop")[0]
        fake.set_phase("cloudhop", pod, "Pending", conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "no node"}])
        await provider.status(node.id)
        await provider.list_nodes({TAG_HUB: "h"})
        await provider.terminate(node.id)
        assert fake.names("persistentvolumeclaims", "cloudhop") == []  # delete_workspace_on_stop
        await provider.close()
    finally:
        fake.stop()
    needed = {_needed(m, p) for m, p in fake.requests}
    assert {n[1] for n in needed} >= {"nodes", "pods", "persistentvolumeclaims", "rayclusters", "events",
                                      "secrets", "networkpolicies"}
    for group, resource, verb, cluster_scoped in needed:
        granted = cluster_role if cluster_scoped else role
        assert (group, resource, verb) in granted, f"rbac.yaml lacks {verb} {resource} ({group or 'core'})"


def test_notebooks_may_reach_only_ray_heads_client_and_dashboard_ports():
    """The chart's one opening for notebooks into the cluster: Ray heads' client and
    dashboard ports (whose head admits them is the head's NetworkPolicy and token)."""
    from cloudhop.spawner.kube import manifests

    values = yaml.safe_load((HELM / "values.yaml").read_text())
    (rule,) = values["singleuser"]["networkPolicy"]["egress"]
    (peer,) = rule["to"]
    assert peer == {"podSelector": {"matchLabels": {"app.kubernetes.io/managed-by": "cloudhop",
                                                    "cloudhop-role": "ray-worker", "ray.io/node-type": "head"}}}
    assert sorted((p["port"], p["protocol"]) for p in rule["ports"]) == sorted(
        [(manifests.RAY_CLIENT_PORT, "TCP"), (manifests.RAY_DASHBOARD_PORT, "TCP")])
