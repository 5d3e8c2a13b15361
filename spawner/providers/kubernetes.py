"""The ``kubernetes`` provider: user servers as pods on GPU node pools, Ray as KubeRay.

**Why KubeSpawner's pod builders and not a KubeSpawner per server.** The provider
interface is node-oriented (``launch(spec) -> Node``, ``status``, ``terminate``,
``list_nodes(tags)``) and one provider instance serves every server of the hub.
A KubeSpawner is a whole JupyterHub ``Spawner`` bound to one user and server, with
its own options form, profile handling, pod reflectors (watch threads per namespace)
and state; wrapping one per launch would run a second spawner inside ours and
duplicate the form, the options and the failover that Cloudhop already owns. What we
do want from KubeSpawner is its knowledge of what a notebook pod looks like, so the
pod and PVC come from ``kubespawner.objects.make_pod``/``make_pvc`` (same meaning for
every z2jh ``kubespawner_override`` key) and the API calls are our own few
``kubernetes_asyncio`` calls: create/get/delete/list pods by label, PVCs, RayCluster
custom objects, nodes, and a pod's events.

Clusters and offers (:mod:`cloudhop.spawner.kube.cluster`): each entry of
:attr:`KubernetesProvider.clusters` is a *region* — a kube context, a kubeconfig file
or the hub's in-cluster service account. ``offers()`` is synchronous in the provider
contract, so the cluster view (nodes with their allocatable GPUs, and the pods holding
GPUs) is read asynchronously by ``check_available()`` — which the spawner awaits before
every form and launch — and by a background refresh every ``refresh_interval``
seconds; ``offers()`` serves from that cache (declared pools and imported z2jh
profiles are offered even before the first read).

Nodes: a node is a pod; its id is ``"<cluster>/<namespace>/<pod>"``, its ``ip`` the pod
IP and its state follows the pod phase (Pending -> pending, Running with an IP ->
running, Succeeded -> terminated, Failed -> failed, being deleted -> stopping). A pod
that cannot be scheduled and that the cluster autoscaler says it cannot help
(``NotTriggerScaleUp``) is reported failed, so failover moves on. Labels carry the
Cloudhop tags (:mod:`cloudhop.spawner.kube.labels`), which is how ``list_nodes`` and a
restarted hub find pods. Status reads the pod each time (one GET; the hub polls every
30 s), so there is no cache to go stale.

Ray: with ``spec.ray`` a KubeRay ``RayCluster`` (``ray.io/v1``) is created after the
pod, owned by it (it goes when the pod goes, even without the hub), with a worker group
of the requested GPU; the notebook's ``RAY_ADDRESS`` points at its head service. Before
the RayCluster come what guards it, owned by the pod too:

* a Secret with the cluster's own Ray token (:func:`cloudhop.spawner.ray.auth.new_token`),
  which the head, the workers and the notebook pod mount as a file, with
  ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` in their environment
  (:mod:`cloudhop.spawner.kube.manifests`); the token is in no pod spec, RayCluster,
  environment variable or log. The Secret is the token's only record: KubeRay, not the
  hub, starts every Ray node, so the hub never needs it again, and a restarted hub (or a
  retried launch) finds the same Secret by name and keeps it;
* a NetworkPolicy (``ray_network_policy``) letting only the pods of the same server
  (the notebook pod and the cluster's own pods, by their hub, user, server and request
  labels) connect to the cluster's pods.

``terminate`` deletes the RayCluster, the Secret and the NetworkPolicy explicitly as
well.

Credentials: the hub's kubeconfig or service account stays in the hub; user pods get
no service-account token (``automountServiceAccountToken: false``) and error messages
carry only the API's status line and message.
"""

from __future__ import annotations

import asyncio
import datetime
import importlib.metadata
import os
import time
from dataclasses import replace

from traitlets import Bool, Dict, Float, Integer, Unicode, default, validate

from ..bootstrap import allowed_env
from ..kube import labels as kl
from ..kube import manifests
from ..kube import profiles as z2jh
from ..kube.cluster import CPU_OFFER, ClusterConfig, ClusterConfigError, cluster_offers, parse_cluster
from ..kube.plan import PodPlan
from ..offers import NO_GPU, Offer
from ..ray.auth import TOKEN_VAR, new_token
from .aliases import Renamed
from ..validate import check_number
from .base import (
    FAILED, PENDING, RUNNING, STOPPING, TAG_HUB, TAG_REQUEST, TAG_ROLE, TAG_SERVER, TAG_USER,
    TERMINATED, CapacityError,
    CredentialsError, LaunchSpec, Node, NodeNotFound, Provider, ProviderError, QuotaError,
    TransientError,
)

RAY_GROUP, RAY_VERSION, RAY_PLURAL = "ray.io", "v1", "rayclusters"
#: pod label naming the RayCluster's owner pod, so terminate finds it without state
LABEL_POD = "cloudhop.io/pod"
LABEL_OFFER = "cloudhop.io/offer"
ANNOTATION_RAY = "cloudhop.io/ray-cluster"
#: container waiting reasons that no amount of waiting fixes
_HOPELESS_WAITS = ("InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError")
SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def _ray_version() -> str:
    try:
        return importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        return "2.40.0"



#: trait name -> check_number rule for KubernetesProvider's numeric settings
_NUMBER_RULES = {
    "node_port": dict(minimum=1, integer=True, what="a port number"),
    "delete_grace_period": dict(minimum=0, integer=True),
    "refresh_interval": dict(minimum=0),
    "refresh_min_interval": dict(minimum=0),
    "api_attempts": dict(minimum=1, integer=True, unit="attempts"),
    "retry_base_delay": dict(minimum=0),
}
# the old names (:class:`.aliases.Renamed`) are checked as the new ones, naming themselves
_NUMBER_RULES.update(api_retries=_NUMBER_RULES["api_attempts"], retry_delay=_NUMBER_RULES["retry_base_delay"])

class KubernetesProvider(Provider):
    """GPU pods on one or more Kubernetes clusters (each a region); see the module
    docstring for how offers, nodes and Ray map onto the cluster."""

    name = "kubernetes"
    display_name = "Kubernetes"
    handles_ray = True

    clusters = Dict(
        help="""Clusters to launch on, name -> settings; each name is a region. Settings:
        ``context`` (kube context) and/or ``kubeconfig`` (file), or ``in_cluster: true``
        (the hub's service account); ``namespace`` (default: the hub's own in-cluster,
        else "default"); ``flavour``: "gke", "eks" (Karpenter) or "nvidia" (GPU feature
        discovery, the default) with optional ``gpu_label``/``gpu_values`` overrides;
        ``pools``: autoscaling pools [{"name", "gpu", "gpus_per_node", "max_nodes",
        "selector", "tolerations", "vcpus", "memory_gib", "price_per_gpu_hour",
        "spot"}]; ``gpu_tolerations``; ``price_per_gpu_hour`` and ``cpu_price_hour``
        (USD, default 0); ``cpu_offer`` (default true); ``node_offers`` (offer GPUs
        found on nodes outside any pool, default true); ``profile_list``: a z2jh
        ``singleuser.profileList`` (a list, a YAML file path, or "KubeSpawner" for the
        hub's ``c.KubeSpawner.profile_list``); ``storage_class`` for workspaces.""",
    ).tag(config=True)

    singleuser_image = Unicode(
        help="""Single-user image for pods when neither the user's ``image`` option nor
        an imported profile names one (the VM providers' setting of the same name).
        Default: ``c.KubeSpawner.image`` when set (a z2jh chart sets it from
        ``singleuser.image``), else the Cloudhop image.""",
    ).tag(config=True)
    default_image = Renamed("singleuser_image")

    workspace_size = Unicode("10Gi", help="Size of each server's workspace PVC.").tag(config=True)
    workspace_mount_path = Unicode(
        "/home/jovyan", help="Where the workspace PVC is mounted in the notebook pod.",
    ).tag(config=True)
    workspace_volume = Bool(
        True, help="Give each server a persistent workspace volume (PVC).",
    ).tag(config=True)
    delete_workspace_on_stop = Bool(
        False, help="Delete the workspace PVC when the server stops (default: keep it, like z2jh).",
    ).tag(config=True)
    extra_labels = Dict(
        help="""Labels added to every pod (e.g. z2jh's network-policy labels
        ``hub.jupyter.org/network-access-hub: "true"``).""",
    ).tag(config=True)
    node_port = Integer(
        8888, help="Port the single-user server listens on inside its pod.",
    ).tag(config=True)
    delete_grace_period = Integer(
        1, help="Seconds a deleted pod gets to stop before it is killed.",
    ).tag(config=True)

    ray_image = Unicode(
        help="Image of Ray head and worker pods (default: the notebook's image, so Ray and Python versions match).",
    ).tag(config=True)
    ray_version = Unicode(help="``spec.rayVersion`` of RayClusters (default: the hub's Ray).").tag(config=True)
    ray_head_resources = Dict(
        {"cpu": "1", "memory": "4Gi"}, help="CPU and memory of the Ray head pod.",
    ).tag(config=True)
    ray_worker_resources = Dict(
        {"cpu": "4", "memory": "16Gi"}, help="CPU and memory of each Ray worker pod (GPUs come from the request).",
    ).tag(config=True)
    ray_network_policy = Bool(
        True, help="""Give each Ray cluster a NetworkPolicy admitting only its own server's
        pods (the notebook and the cluster's pods). Needs the hub's rights to create and
        delete NetworkPolicies (hub/helm/rbac.yaml) and a network plugin that enforces
        them; the cluster's Ray token is required either way.""",
    ).tag(config=True)

    refresh_interval = Float(
        60.0, help="Seconds between background reads of each cluster's nodes for offers (0: only on check_available).",
    ).tag(config=True)
    refresh_min_interval = Float(
        5.0, help="Seconds a cluster read is reused by forms and launches before reading again.",
    ).tag(config=True)
    api_attempts = Integer(
        3, help="Attempts for an API call that fails with throttling, a 5xx or a connection error.",
    ).tag(config=True)
    api_retries = Renamed("api_attempts")
    retry_base_delay = Float(0.5, help="Seconds before the first retry; doubles each time.").tag(config=True)
    retry_delay = Renamed("retry_base_delay")

    @validate("node_port", "delete_grace_period", "refresh_interval", "refresh_min_interval",
              "api_attempts", "api_retries", "retry_base_delay", "retry_delay")
    def _valid_number(self, proposal):
        return check_number(proposal, **_NUMBER_RULES[proposal["trait"].name])

    @default("singleuser_image")
    def _default_image(self):
        image = self.config.get("KubeSpawner", {}).get("image") if self.config else None
        return str(image) if image else "cloudhop/singleuser:latest"

    @default("ray_version")
    def _default_ray_version(self):
        return _ray_version()

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._parsed: dict[str, ClusterConfig] | None = None
        self._config_error: str | None = None
        self._profiles: dict[str, list] = {}
        self._apis: dict = {}
        self._namespaces: dict[str, str] = {}
        self._views: dict[str, tuple[list, list]] = {}
        self._errors: dict[str, str] = {}
        self._plans: dict[str, PodPlan] = {}
        self._refresher: asyncio.Task | None = None
        self._offers: dict[str, Offer] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._read_at: dict[str, float] = {}

    # -- configuration -----------------------------------------------------------

    def _clusters(self) -> dict[str, ClusterConfig]:
        """Parsed clusters; raises :class:`ClusterConfigError` naming the setting."""
        if self._parsed is None:
            parsed = {name: parse_cluster(name, raw) for name, raw in self.clusters.items()}
            profiles = {}
            for name, cluster in parsed.items():
                source = cluster.profile_list
                if source == "KubeSpawner":
                    source = self.config.get("KubeSpawner", {}).get("profile_list") or []
                if source:
                    try:
                        profiles[name] = z2jh.import_profiles(z2jh.load_profile_list(source))
                    except z2jh.ProfileImportError as err:
                        raise ClusterConfigError(f"clusters.{name}.profile_list: {err}") from err
                    for p in profiles[name]:
                        for why in p.ignored:
                            self.log.warning("z2jh profile %s on %s: ignored %s", p.slug, name, why)
            self._parsed, self._profiles = parsed, profiles
        return self._parsed

    def _cluster(self, name: str) -> ClusterConfig:
        clusters = self._clusters()
        if name not in clusters:
            raise NodeNotFound(f"no Kubernetes cluster named {name!r}; configured: {', '.join(clusters) or 'none'}")
        return clusters[name]

    async def _api(self, cluster: ClusterConfig):
        """The API client of a cluster (made once; kubeconfig read off the loop)."""
        if cluster.name in self._apis:
            return self._apis[cluster.name]
        from kubernetes_asyncio import client, config

        try:
            if cluster.in_cluster:
                conf = client.Configuration()
                config.load_incluster_config(client_configuration=conf)
                api = client.ApiClient(conf)
            else:
                api = await config.new_client_from_config(
                    config_file=cluster.kubeconfig, context=cluster.context, persist_config=False,
                )
        except (config.ConfigException, OSError, KeyError, TypeError) as err:
            # the loader's messages name files and contexts, never token values
            raise CredentialsError(f"cluster {cluster.name}: cannot load its kube config ({type(err).__name__}: {err})") from err
        namespace = cluster.namespace
        if not namespace:
            namespace = "default"
            if cluster.in_cluster and os.path.exists(SA_NAMESPACE_FILE):
                with open(SA_NAMESPACE_FILE, encoding="utf-8") as f:
                    namespace = f.read().strip() or "default"
        self._apis[cluster.name] = api
        self._namespaces[cluster.name] = namespace
        return api

    def _core(self, api):
        from kubernetes_asyncio import client

        return client.CoreV1Api(api)

    def _custom(self, api):
        from kubernetes_asyncio import client

        return client.CustomObjectsApi(api)

    def _networking(self, api):
        from kubernetes_asyncio import client

        return client.NetworkingV1Api(api)

    # -- errors and retries ------------------------------------------------------

    def _translate(self, cluster: str, what: str, err: BaseException) -> ProviderError:
        from kubernetes_asyncio.client.exceptions import ApiException

        if isinstance(err, ApiException):
            detail = _api_message(err)
            msg = f"cluster {cluster}: {what} failed (HTTP {err.status}{': ' + detail if detail else ''})"
            if err.status in (401,):
                return CredentialsError(msg)
            if err.status == 403:
                if "exceeded quota" in detail or "quota" in detail.lower():
                    return QuotaError(msg)
                return CredentialsError(msg)
            if err.status == 404:
                return NodeNotFound(msg)
            if err.status == 429 or err.status >= 500:
                return TransientError(msg)
            return ProviderError(msg)
        return TransientError(f"cluster {cluster}: {what} failed ({type(err).__name__}: {err})")

    @staticmethod
    async def _unread(fn, *args, **kwargs):
        """Await the API call ``fn(*args, **kwargs)`` without reading a successful
        answer's body: the client logs every body it reads (at debug level), and the
        answer to a Secret's create is the Secret. A failure is raised as the client
        raises it (its body is the API's Status, which holds no data)."""
        from kubernetes_asyncio.client.exceptions import ApiException
        from kubernetes_asyncio.client.rest import RESTResponse

        resp = await fn(*args, _preload_content=False, **kwargs)
        try:
            if not 200 <= resp.status <= 299:
                raise ApiException(http_resp=RESTResponse(resp, await resp.read()))
            return resp.status
        finally:
            resp.release()

    async def _call(self, cluster: str, what: str, fn, *args, ok=(), **kwargs):
        """Await ``fn(*args, **kwargs)``, retrying throttling, 5xx and connection errors
        with backoff; HTTP statuses in ``ok`` are returned as the ApiException."""
        import aiohttp
        from kubernetes_asyncio.client.exceptions import ApiException

        delay = self.retry_base_delay
        for attempt in range(max(self.api_attempts, 1)):
            try:
                return await fn(*args, **kwargs)
            except ApiException as err:
                if err.status in ok:
                    return err
                retry = err.status == 429 or err.status >= 500
                if not retry or attempt == self.api_attempts - 1:
                    raise self._translate(cluster, what, err) from err
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
                if attempt == self.api_attempts - 1:
                    raise self._translate(cluster, what, err) from err
            await asyncio.sleep(delay)
            delay *= 2
        raise TransientError(f"cluster {cluster}: {what} failed")  # pragma: no cover

    # -- cluster view and offers -----------------------------------------------

    async def refresh(self, name: str, *, force: bool = False) -> None:
        """Read one cluster's nodes and the pods holding GPUs into the offers cache.

        Every form and launch asks (through ``check_available``), so a read younger than
        ``refresh_min_interval`` is reused — a failed one too, so an unreachable cluster
        does not slow every form by its retries — and concurrent callers share one read.
        A failure is kept as the cluster's error (``check_available`` reports it)."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            fresh = time.monotonic() - self._read_at.get(name, float("-inf")) < self.refresh_min_interval
            if fresh and not force:
                return
            self._read_at[name] = time.monotonic()
            await self._read(name)

    async def _read(self, name: str) -> None:
        cluster = self._cluster(name)
        try:
            api = await self._api(cluster)
            core = self._core(api)
            nodes = await self._call(name, "listing nodes", core.list_node)
            phase = "status.phase!=Succeeded,status.phase!=Failed"
            pods = await self._call(name, "listing pods", core.list_pod_for_all_namespaces,
                                    field_selector=phase, ok=(403,))
            from kubernetes_asyncio.client.exceptions import ApiException

            if isinstance(pods, ApiException):
                # no cluster-wide pod read: count what this namespace's pods hold
                pods = await self._call(name, "listing pods", core.list_namespaced_pod,
                                        self._namespaces[name], field_selector=phase)
            self._views[name] = (
                [manifests.to_json(n) for n in nodes.items or []],
                [manifests.to_json(p) for p in pods.items or []],
            )
            self._errors.pop(name, None)
        except ProviderError as err:
            self._errors[name] = err.message
            raise
        except Exception as err:  # an unexpected client failure must not break the form
            self._errors[name] = f"cluster {name}: {type(err).__name__}: {err}"
            raise TransientError(self._errors[name]) from err

    async def _refresh_all(self, force: bool = False) -> None:
        for name in self._clusters():
            try:
                await self.refresh(name, force=force)
            except ProviderError as err:
                self.log.warning("Kubernetes cluster %s unreachable: %s", name, err.message)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            await self._refresh_all(force=True)

    async def check_available(self) -> str | None:
        try:
            clusters = self._clusters()
        except ClusterConfigError as err:
            return f"Kubernetes configuration: {err}"
        if not clusters:
            return "no Kubernetes clusters configured (c.KubernetesProvider.clusters)"
        await self._refresh_all()
        if self.refresh_interval > 0 and (self._refresher is None or self._refresher.done()):
            self._refresher = asyncio.ensure_future(self._refresh_loop())
        if all(name in self._errors for name in clusters):
            return "no Kubernetes cluster reachable: " + "; ".join(self._errors[n] for n in clusters)
        return None

    def offers(self) -> list[Offer]:
        try:
            clusters = self._clusters()
        except ClusterConfigError as err:
            self.log.error("Kubernetes configuration: %s", err)
            return []
        out = []
        for name, cluster in clusters.items():
            if name in self._errors:
                continue
            nodes, pods = self._views.get(name, (None, None))
            for offer, plan in cluster_offers(cluster, nodes, pods, provider=self.name,
                                              profiles=self._profiles.get(name)):
                self._plans[offer.key] = plan
                self._offers[offer.key] = offer
                out.append(offer)
        return out

    def _full(self, offer: Offer) -> str | None:
        """Why ``offer`` cannot start now, when the last cluster read says so: GPUs on
        nodes outside any autoscaling pool, none free. Pools and profiles may scale up,
        so they are left to the scheduler and the autoscaler."""
        known = self._offers.get(offer.key)
        if known is None or known.available != 0 or offer.region in self._errors:
            return None
        cluster = self._cluster(offer.region)
        if any(offer.instance_type.startswith(f"{p.name}-x") for p in cluster.pools):
            return None
        if self._views.get(offer.region, (None, None))[0] is None:
            return None
        return (f"no {offer.gpu_count} x {offer.gpu} free on cluster {offer.region} now "
                f"({known.note}; declare the node pool in 'pools' if it autoscales)")

    def _plan_for(self, cluster: ClusterConfig, offer: Offer) -> PodPlan:
        """The pod plan of an offer: from the offers cache, else rebuilt from config
        (a launch right after a hub restart, before the first ``offers()``)."""
        if offer.key not in self._plans:
            nodes, pods = self._views.get(cluster.name, (None, None))
            for o, plan in cluster_offers(cluster, nodes, pods, provider=self.name,
                                          profiles=self._profiles.get(cluster.name)):
                self._plans.setdefault(o.key, plan)
        plan = self._plans.get(offer.key)
        if plan is None:
            if offer.instance_type == CPU_OFFER or offer.gpu == NO_GPU:
                return PodPlan()
            # a GPU model the cluster view has not shown yet: the flavour's selector
            plan = cluster.plan_for_gpu(offer.gpu, offer.gpu_count)
        return plan

    def profile_image(self, offer: Offer) -> str | None:
        """The image an imported profile names for ``offer`` (None: it names none). The
        spawner keeps it over the user's ``image`` option unless the user's group policy
        allows replacing it (``image_override``); :meth:`launch` runs ``spec.image``
        when the spawner sets one."""
        try:
            return self._plan_for(self._cluster(offer.region), offer).image
        except NodeNotFound:  # no such cluster: the launch says so
            return None

    def _ray_plan(self, cluster: ClusterConfig, ray) -> PodPlan:
        gpu = getattr(ray, "gpu", NO_GPU) or NO_GPU
        count = int(getattr(ray, "gpu_count", 0) or 0)
        if gpu == NO_GPU or not count:
            return PodPlan()
        pool = next((p for p in cluster.pools if p.gpu.casefold() == gpu.casefold()), None)
        return cluster.plan_for_gpu(gpu, count, pool)

    # -- nodes -------------------------------------------------------------------

    def _node(self, cluster: str, pod: dict) -> Node:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        spec = pod.get("spec") or {}
        phase = status.get("phase") or "Pending"
        ip = status.get("podIP")
        detail = ""
        if meta.get("deletionTimestamp"):
            state, detail = STOPPING, "pod is being deleted"
        elif phase == "Running":
            state = RUNNING if ip else PENDING
        elif phase == "Succeeded":
            state, detail = TERMINATED, "pod exited"
        elif phase == "Failed":
            state = FAILED
            detail = status.get("message") or status.get("reason") or "pod failed"
        else:
            state, detail = PENDING, _pending_detail(status)
            if any(w in detail for w in _HOPELESS_WAITS):
                state = FAILED  # waiting will not fix it: fail so the spawn says why now
        port = None
        for c in spec.get("containers") or []:
            for p in c.get("ports") or []:
                if p.get("name") == "notebook-port":
                    port = p.get("containerPort")
        labels = meta.get("labels") or {}
        info = {
            "cluster": cluster,
            "namespace": meta.get("namespace"),
            "pod": meta.get("name"),
            "node": spec.get("nodeName"),
            "phase": phase,
            "instance_type": labels.get(LABEL_OFFER),
            "launched_at": _timestamp(meta.get("creationTimestamp")),
        }
        if (meta.get("annotations") or {}).get(ANNOTATION_RAY):
            info["ray_cluster"] = meta["annotations"][ANNOTATION_RAY]
        return Node(
            id=f"{cluster}/{meta.get('namespace')}/{meta.get('name')}",
            provider=self.name,
            region=cluster,
            state=state,
            ip=ip if state == RUNNING else None,
            port=port,
            tags=kl.tags_from_metadata(meta),
            info={k: v for k, v in info.items() if v is not None},
            detail=detail,
        )

    def _split(self, node_id: str) -> tuple[ClusterConfig, str, str]:
        parts = node_id.split("/")
        if len(parts) != 3 or not all(parts):
            raise NodeNotFound(f"not a Kubernetes node id (cluster/namespace/pod): {node_id!r}")
        return self._cluster(parts[0]), parts[1], parts[2]

    async def _find(self, cluster: ClusterConfig, tags: dict) -> list[dict]:
        api = await self._api(cluster)
        selector = kl.selector(tags) + ",app.kubernetes.io/managed-by=cloudhop,!ray.io/cluster"
        pods = await self._call(cluster.name, "listing pods", self._core(api).list_namespaced_pod,
                                self._namespaces[cluster.name], label_selector=selector)
        found = [manifests.to_json(p) for p in pods.items or []]
        return [p for p in found if kl.matches(p.get("metadata") or {}, tags)]

    async def launch(self, spec: LaunchSpec) -> Node:
        cluster = self._cluster(spec.offer.region)
        tags = {**spec.tags, TAG_REQUEST: spec.request_id}
        tags.setdefault(TAG_ROLE, spec.role)
        existing = await self._find(cluster, {TAG_REQUEST: spec.request_id})
        if existing:
            pod = existing[0]
            ray_name = (pod["metadata"].get("annotations") or {}).get(ANNOTATION_RAY)
            if ray_name and getattr(spec, "ray", None) is not None:
                # an earlier try may have stopped between the pod and its RayCluster
                await self._create_ray(cluster, spec.ray, ray_name, pod,
                                       pod["spec"]["containers"][0]["image"], tags, pod["metadata"]["name"])
            return self._node(cluster.name, pod)
        full = self._full(spec.offer)
        if full:
            raise CapacityError(full, offer=spec.offer)

        namespace = self._namespaces[cluster.name]
        core = self._core(await self._api(cluster))
        plan = self._plan_for(cluster, spec.offer).with_spot(spec.spot)
        user = str(spec.tags.get(TAG_USER, ""))
        server = str(spec.tags.get(TAG_SERVER, ""))
        pod_name = kl.object_name("cloudhop", user, server, spec.role if spec.role != "notebook" else "",
                                  key=spec.request_id)
        labels, annotations = kl.tag_labels(tags)
        labels = {**self.extra_labels, **labels, **kl.MANAGED_BY,
                  LABEL_OFFER: kl.label_value(spec.offer.instance_type)}
        # the spawner leaves spec.image unset where the profile's image must win
        # (CloudhopSpawner.image_for, the policy's image_override)
        image = spec.image or plan.image or self.singleuser_image
        # the same allow-list as a VM's user-data: no hub credential reaches a pod, and
        # no Ray token either (a Ray server's pods mount theirs from a Secret)
        env = allowed_env(spec.env)
        env.pop(TOKEN_VAR, None)

        ray = getattr(spec, "ray", None) if spec.role == "notebook" else None
        ray_name = None
        if ray is not None:
            ray_name = kl.object_name("cloudhop-ray", user, server, key=spec.request_id, max_length=40)
            env.setdefault("RAY_ADDRESS", manifests.ray_address(ray_name, namespace))
            env.setdefault("CLOUDHOP_RAY_DASHBOARD_URL", manifests.ray_dashboard_url(ray_name, namespace))
            annotations[ANNOTATION_RAY] = ray_name

        pvc_name = None
        if self.workspace_volume and spec.role == "notebook":
            pvc_name = await self._ensure_workspace(cluster, core, spec.tags, user, server)

        body = manifests.notebook_pod(
            pod_name, plan=plan, image=image, cmd=spec.cmd, env=env, port=spec.port,
            labels=labels, annotations=annotations, pvc_name=pvc_name,
            mount_path=self.workspace_mount_path,
            # the Secret is made right after the pod (it is owned by it); the kubelet
            # waits for it before starting the container
            ray_token_secret=manifests.ray_token_secret_name(ray_name) if ray_name else None,
        )
        created = await self._call(cluster.name, "creating the pod", core.create_namespaced_pod,
                                   namespace, body, ok=(409,))
        if not hasattr(created, "metadata"):  # 409: made by an earlier try of this launch
            created = await self._call(cluster.name, "reading the pod", core.read_namespaced_pod, pod_name, namespace)
        pod = manifests.to_json(created)
        self.log.info("Kubernetes: created pod %s/%s on %s for %s", namespace, pod_name, cluster.name, spec.offer.key)

        if ray is not None:
            try:
                await self._create_ray(cluster, ray, ray_name, pod, image, tags, pod_name)
            except ProviderError as err:
                # no half-made server: the pod goes too, and what guards its cluster
                await self._delete_ray(cluster, namespace, ray_name)
                await self._delete_pod(cluster, namespace, pod_name)
                if isinstance(err, NodeNotFound):
                    raise CapacityError(
                        f"cluster {cluster.name} cannot run Ray: the KubeRay operator "
                        f"(RayCluster {RAY_GROUP}/{RAY_VERSION}) is not installed", offer=spec.offer,
                    ) from err
                raise
        return self._node(cluster.name, pod)

    async def _ensure_workspace(self, cluster: ClusterConfig, core, tags: dict, user: str, server: str) -> str:
        namespace = self._namespaces[cluster.name]
        hub = str(tags.get(TAG_HUB, ""))
        name = kl.object_name("cloudhop-ws", user, server, key=hub)
        pvc_tags = {k: v for k, v in tags.items() if k in (TAG_HUB, TAG_USER, TAG_SERVER)}
        labels, annotations = kl.tag_labels(pvc_tags)
        body = manifests.workspace_pvc(
            name, size=self.workspace_size, storage_class=cluster.storage_class,
            labels={**labels, **kl.MANAGED_BY}, annotations=annotations,
        )
        await self._call(cluster.name, "creating the workspace volume", core.create_namespaced_persistent_volume_claim,
                         namespace, body, ok=(409,))
        return name

    async def _create_ray(self, cluster, ray, ray_name, pod, image, tags, pod_name) -> None:
        """The server's Ray cluster: its token's Secret and its NetworkPolicy first (so no
        Ray pod ever runs without them), then the RayCluster; each kept if an earlier
        try made it (a 409), so a retried launch keeps the first token."""
        namespace = self._namespaces[cluster.name]
        ray_tags = {**tags, TAG_ROLE: "ray-worker"}
        labels, annotations = kl.tag_labels(ray_tags)
        # no extra_labels: z2jh's singleuser network policy (selected by them) would cut
        # the head off from its workers
        labels = {**labels, **kl.MANAGED_BY, LABEL_POD: pod_name}
        meta = pod.get("metadata") or {}
        owner = {"name": meta.get("name"), "uid": meta.get("uid")} if meta.get("uid") else None
        api = await self._api(cluster)
        secret = manifests.ray_token_secret(
            manifests.ray_token_secret_name(ray_name), new_token(),
            labels=labels, annotations=annotations, owner=owner)
        await self._call(cluster.name, "creating the Ray token's Secret", self._unread,
                         self._core(api).create_namespaced_secret, namespace, secret, ok=(409,))
        if self.ray_network_policy:
            # every pod of this server carries these labels, Ray pods and notebook alike
            peers = {k: v for k, v in kl.tag_labels(tags)[0].items()
                     if k in (TAG_HUB, TAG_USER, TAG_SERVER, TAG_REQUEST)}
            policy = manifests.ray_network_policy(
                ray_name, ray_pods={**kl.MANAGED_BY, LABEL_POD: pod_name, TAG_ROLE: "ray-worker"},
                peers={**kl.MANAGED_BY, **peers}, labels=labels, annotations=annotations, owner=owner)
            await self._call(cluster.name, "creating the Ray cluster's NetworkPolicy",
                             self._networking(api).create_namespaced_network_policy, namespace, policy, ok=(409,))
        body = manifests.ray_cluster(
            ray_name,
            image=self.ray_image or image,
            ray_version=self.ray_version,
            workers=int(getattr(ray, "workers", 0) or 0),
            worker_plan=self._ray_plan(cluster, ray),
            labels=labels,
            annotations=annotations,
            owner=owner,
            token_secret=manifests.ray_token_secret_name(ray_name),
            head_cpu=self.ray_head_resources.get("cpu"),
            head_memory=self.ray_head_resources.get("memory"),
            worker_cpu=self.ray_worker_resources.get("cpu"),
            worker_memory=self.ray_worker_resources.get("memory"),
        )
        await self._call(cluster.name, "creating the RayCluster", self._custom(api).create_namespaced_custom_object,
                         RAY_GROUP, RAY_VERSION, namespace, RAY_PLURAL, body, ok=(409,))

    async def _delete_ray(self, cluster: ClusterConfig, namespace: str, ray_name: str) -> None:
        """Delete a Ray cluster, its token's Secret and its NetworkPolicy (each may be
        gone already). The pod's garbage collection would take them too; deleting
        them here does not wait for it, nor count on the pod still being there."""
        api = await self._api(cluster)
        await self._call(cluster.name, "deleting the RayCluster", self._custom(api).delete_namespaced_custom_object,
                         RAY_GROUP, RAY_VERSION, namespace, RAY_PLURAL, ray_name, ok=(404,))
        guards = [("the Ray token's Secret", self._core(api).delete_namespaced_secret,
                   manifests.ray_token_secret_name(ray_name))]
        if self.ray_network_policy:
            guards.append(("the Ray cluster's NetworkPolicy",
                           self._networking(api).delete_namespaced_network_policy, ray_name))
        for what, delete, name in guards:
            try:
                await self._call(cluster.name, f"deleting {what}", self._unread, delete, name, namespace, ok=(404,))
            except CredentialsError as err:
                # RBAC without the right: the pod's owner reference still takes it
                self.log.warning("%s; left to garbage collection with the pod", err.message)

    async def status(self, node_id: str) -> Node:
        cluster, namespace, pod_name = self._split(node_id)
        core = self._core(await self._api(cluster))
        pod = await self._call(cluster.name, "reading the pod", core.read_namespaced_pod, pod_name, namespace, ok=(404,))
        if not hasattr(pod, "metadata"):
            return Node(id=node_id, provider=self.name, region=cluster.name, state=TERMINATED, detail="pod is gone")
        node = self._node(cluster.name, manifests.to_json(pod))
        if node.state == PENDING and "Unschedulable" in node.detail:
            hopeless = await self._no_scale_up(cluster, core, namespace, pod_name)
            if hopeless:
                node = replace(node, state=FAILED, detail=f"no node can take it and the autoscaler cannot add one: {hopeless}")
        return node

    async def _no_scale_up(self, cluster, core, namespace: str, pod_name: str) -> str | None:
        """The cluster autoscaler's ``NotTriggerScaleUp`` message for the pod, if any."""
        try:
            events = await self._call(cluster.name, "reading events", core.list_namespaced_event, namespace,
                                      field_selector=f"involvedObject.name={pod_name}")
        except ProviderError:
            return None  # events are a hint; no rights to read them is not a failure
        for event in events.items or []:
            if event.reason == "NotTriggerScaleUp":
                return event.message or "pod didn't trigger scale-up"
        return None

    async def _delete_pod(self, cluster: ClusterConfig, namespace: str, pod_name: str):
        core = self._core(await self._api(cluster))
        return await self._call(cluster.name, "deleting the pod", core.delete_namespaced_pod, pod_name, namespace,
                                grace_period_seconds=self.delete_grace_period, ok=(404,))

    async def terminate(self, node_id: str) -> None:
        cluster, namespace, pod_name = self._split(node_id)
        api = await self._api(cluster)
        rays = await self._call(cluster.name, "listing RayClusters", self._custom(api).list_namespaced_custom_object,
                                RAY_GROUP, RAY_VERSION, namespace, RAY_PLURAL,
                                label_selector=f"{LABEL_POD}={pod_name}", ok=(404,))
        names = {item["metadata"]["name"] for item in ((rays.get("items") or []) if isinstance(rays, dict) else [])}
        pod = await self._call(cluster.name, "reading the pod", self._core(api).read_namespaced_pod,
                               pod_name, namespace, ok=(404,))
        if hasattr(pod, "metadata") and (pod.metadata.annotations or {}).get(ANNOTATION_RAY):
            # the pod names its cluster even when the RayCluster was never made
            names.add(pod.metadata.annotations[ANNOTATION_RAY])
        for ray_name in sorted(names):
            await self._delete_ray(cluster, namespace, ray_name)
        await self._delete_pod(cluster, namespace, pod_name)
        if self.delete_workspace_on_stop and hasattr(pod, "metadata"):
            for volume in pod.spec.volumes or []:
                if volume.name == manifests.WORKSPACE_VOLUME and volume.persistent_volume_claim:
                    await self._call(cluster.name, "deleting the workspace volume",
                                     self._core(api).delete_namespaced_persistent_volume_claim,
                                     volume.persistent_volume_claim.claim_name, namespace, ok=(404,))
        self.log.info("Kubernetes: deleted pod %s/%s on %s", namespace, pod_name, cluster.name)

    async def list_nodes(self, tags: dict) -> list[Node]:
        out = []
        for name, cluster in self._clusters().items():
            try:
                pods = await self._find(cluster, tags)
            except ProviderError as err:
                self.log.warning("Kubernetes cluster %s: %s", name, err.message)
                continue
            for pod in pods:
                node = self._node(name, pod)
                if node.state != TERMINATED:
                    out.append(node)
        return out

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        apis, self._apis = self._apis, {}
        for api in apis.values():
            await api.close()


def _timestamp(text) -> float | None:
    """Epoch seconds of an API timestamp (``2026-11-22T21:50:03Z``); None if absent."""
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _api_message(err) -> str:
    """The API server's own message from an ApiException body (no headers: they are
    not ours to log)."""
    import json

    try:
        body = json.loads(err.body) if err.body else {}
    except (TypeError, ValueError):
        body = {}
    return str(body.get("message") or err.reason or "")[:300]


def _pending_detail(status: dict) -> str:
    """What a pending pod waits for, in a sentence for the progress page."""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return f"waiting for a node ({cond.get('reason', 'Unschedulable')}: {cond.get('message', '')})".strip()
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting:
            return f"container {waiting.get('reason', 'waiting')}: {waiting.get('message', '')}".strip(": ")
    return "pod is pending"
