"""Pod, workspace PVC and KubeRay ``RayCluster`` manifests, as API-server JSON, with
the Secret and NetworkPolicy that guard a server's Ray cluster.

The notebook pod is built by KubeSpawner's own ``make_pod`` (so a z2jh operator's
``kubespawner_override`` keys mean what they mean there) and the PVC by its
``make_pvc``; both are turned into plain dicts here. The RayCluster is KubeRay's
``ray.io/v1`` custom resource, built directly (KubeSpawner has no builder for it).
Every function is pure: same arguments, same manifest.

A Ray cluster's token (:mod:`cloudhop.spawner.ray.auth`) is only ever in its Secret
(:func:`ray_token_secret`): the head, the workers and the notebook pod mount it as a
file (:func:`ray_token_volume`) and get ``RAY_AUTH_MODE=token`` and
``RAY_AUTH_TOKEN_PATH`` (:func:`ray_token_env`), never the token, in their
environment; :func:`ray_network_policy` lets only the server's own pods reach the
cluster's pods.
"""

from __future__ import annotations

import base64
import datetime

from ..ray.auth import MODE_VAR, PATH_VAR
from .flavours import GPU_RESOURCE
from .plan import PodPlan

WORKSPACE_VOLUME = "workspace"
RAY_CLIENT_PORT = 10001
RAY_DASHBOARD_PORT = 8265
RAY_GCS_PORT = 6379

#: the Ray token's Secret key, volume and file in every pod of a Ray server
RAY_TOKEN_KEY = "token"
RAY_TOKEN_VOLUME = "ray-token"
RAY_TOKEN_DIR = "/var/run/secrets/cloudhop/ray"
RAY_TOKEN_PATH = f"{RAY_TOKEN_DIR}/{RAY_TOKEN_KEY}"
#: the token file's mode: read by its owner (root) only; the kubelet adds read for the
#: pod's fsGroup, which is how the image's non-root user (given that group) reads it
RAY_TOKEN_MODE = 0o400
#: fsGroup of a pod that mounts the token and sets none itself (z2jh's default fsGid)
RAY_TOKEN_FS_GROUP = 100


def to_json(obj):
    """A kubernetes_asyncio model (or nested lists/dicts of them) as the JSON the API
    server takes: camelCase keys, ``None`` fields left out. Same result as
    ``ApiClient.sanitize_for_serialization``, without needing an event loop."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [to_json(o) for o in obj]
    if isinstance(obj, (datetime.datetime, datetime.date)):
        return obj.isoformat()
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items() if v is not None}
    return {
        obj.attribute_map[attr]: to_json(getattr(obj, attr))
        for attr in obj.openapi_types
        if getattr(obj, attr) is not None
    }


def _affinity_terms(plan: PodPlan) -> list | None:
    if not plan.match_expressions:
        return None
    return [{"matchExpressions": [dict(e) for e in plan.match_expressions]}]


def notebook_pod(
    name: str,
    *,
    plan: PodPlan,
    image: str,
    cmd: list,
    env: dict,
    port: int,
    labels: dict,
    annotations: dict,
    pvc_name: str | None = None,
    mount_path: str = "/home/jovyan",
    ray_token_secret: str | None = None,
) -> dict:
    """The single-user server's Pod.

    ``env`` wins over the plan's ``environment`` (it carries the server's own
    JUPYTERHUB_* values). With ``pvc_name`` the workspace PVC is mounted at
    ``mount_path``. With ``ray_token_secret`` the server's Ray token is mounted from
    that Secret and the kernels find it through :func:`ray_token_env` (which wins over
    both), so ``ray.init()`` authenticates with no argument. The pod gets no
    service-account token (KubeSpawner's default), so the user's code cannot reach the
    Kubernetes API with the hub's rights.
    """
    from kubespawner.objects import make_pod  # the kubernetes extra

    kwargs = dict(plan.make_pod_kwargs)
    terms = kwargs.pop("node_affinity_required", None)
    if terms:
        # a profile's own affinity terms: each must also pin the GPU model (terms are ORed)
        terms = [
            {**t, "matchExpressions": list(t.get("matchExpressions") or []) + [dict(e) for e in plan.match_expressions]}
            for t in terms
        ]
    else:
        terms = _affinity_terms(plan)
    volumes = list(kwargs.pop("volumes", None) or [])
    mounts = list(kwargs.pop("volume_mounts", None) or [])
    if pvc_name:
        volumes.append({"name": WORKSPACE_VOLUME, "persistentVolumeClaim": {"claimName": pvc_name}})
        mounts.append({"name": WORKSPACE_VOLUME, "mountPath": mount_path})
    env = {**plan.environment, **env}
    if ray_token_secret:
        volume, mount = ray_token_volume(ray_token_secret)
        volumes.append(volume)
        mounts.append(mount)
        env.update(ray_token_env())
        if kwargs.get("fs_gid") is None:
            kwargs["fs_gid"] = RAY_TOKEN_FS_GROUP
    pod = make_pod(
        name=name,
        cmd=list(cmd),
        port=port,
        image=image,
        node_selector=dict(plan.node_selector) or None,
        node_affinity_required=terms,
        tolerations=[dict(t) for t in plan.tolerations] or None,
        env=env,
        labels={**plan.extra_labels, **labels},
        annotations={**plan.extra_annotations, **annotations},
        cpu_limit=plan.cpu_limit,
        cpu_guarantee=plan.cpu_guarantee,
        mem_limit=plan.mem_limit,
        mem_guarantee=plan.mem_guarantee,
        extra_resource_limits=plan.resource_limits() or None,
        extra_resource_guarantees=dict(plan.extra_resource_guarantees) or None,
        volumes=volumes,
        volume_mounts=mounts,
        **kwargs,
    )
    return to_json(pod)


def workspace_pvc(
    name: str,
    *,
    size: str,
    labels: dict,
    annotations: dict,
    storage_class: str | None = None,
    access_modes: tuple = ("ReadWriteOnce",),
) -> dict:
    """The user's workspace volume claim (kept when the server stops, like z2jh's)."""
    from kubespawner.objects import make_pvc

    pvc = make_pvc(
        name=name,
        storage_class=storage_class or None,
        access_modes=list(access_modes),
        selector=None,
        storage=size,
        labels=labels,
        annotations=annotations,
    )
    return to_json(pvc)


def ray_head_service(cluster_name: str) -> str:
    """The Service KubeRay makes for a RayCluster's head."""
    return f"{cluster_name}-head-svc"


def ray_address(cluster_name: str, namespace: str) -> str:
    """``RAY_ADDRESS`` for a notebook in the same cluster: the head's Ray client port."""
    return f"ray://{ray_head_service(cluster_name)}.{namespace}.svc.cluster.local:{RAY_CLIENT_PORT}"


def ray_dashboard_url(cluster_name: str, namespace: str) -> str:
    return f"http://{ray_head_service(cluster_name)}.{namespace}.svc.cluster.local:{RAY_DASHBOARD_PORT}"


def _container_resources(cpu, memory, extra: dict | None = None) -> dict:
    limits = {k: str(v) for k, v in {"cpu": cpu, "memory": memory}.items() if v}
    limits.update({k: str(v) for k, v in (extra or {}).items()})
    # Ray sizes itself from the limits; requests equal to them keep the pod Guaranteed.
    return {"limits": dict(limits), "requests": dict(limits)}


def _pod_template(plan: PodPlan | None, container: dict, labels: dict, token_secret: str | None = None) -> dict:
    spec: dict = {"containers": [container], "automountServiceAccountToken": False}
    if token_secret:
        volume, mount = ray_token_volume(token_secret)
        container["env"] = [{"name": k, "value": v} for k, v in ray_token_env().items()]
        container["volumeMounts"] = [mount]
        spec["volumes"] = [volume]
        spec["securityContext"] = {"fsGroup": RAY_TOKEN_FS_GROUP}
    if plan is not None:
        if plan.node_selector:
            spec["nodeSelector"] = dict(plan.node_selector)
        terms = _affinity_terms(plan)
        if terms:
            spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}
        if plan.tolerations:
            spec["tolerations"] = [dict(t) for t in plan.tolerations]
    return {"metadata": {"labels": dict(labels)}, "spec": spec}


def ray_cluster(
    name: str,
    *,
    image: str,
    ray_version: str,
    workers: int,
    worker_plan: PodPlan,
    labels: dict,
    annotations: dict,
    owner: dict | None = None,
    token_secret: str | None = None,
    head_cpu: str = "1",
    head_memory: str = "4Gi",
    worker_cpu: str | None = "4",
    worker_memory: str | None = "16Gi",
) -> dict:
    """A KubeRay ``RayCluster`` with a CPU head and ``workers`` worker pods, each with
    ``worker_plan.gpu_count`` x ``worker_plan.gpu`` (its selector and tolerations).

    With workers the head advertises no CPUs, so tasks land on the workers; without,
    the head runs them. ``owner`` ({"name", "uid"} of the notebook pod) makes the
    cluster go when the pod goes, even if the hub is not there to delete it. With
    ``token_secret`` every Ray pod mounts the cluster's token from that Secret and runs
    Ray with token authentication (:func:`ray_token_env`).
    """
    head_container = {
        "name": "ray-head",
        "image": image,
        "resources": _container_resources(head_cpu, head_memory),
        "ports": [
            {"containerPort": RAY_GCS_PORT, "name": "gcs"},
            {"containerPort": RAY_DASHBOARD_PORT, "name": "dashboard"},
            {"containerPort": RAY_CLIENT_PORT, "name": "client"},
        ],
    }
    head_params = {"dashboard-host": "0.0.0.0"}
    if workers:
        head_params["num-cpus"] = "0"
    gpu_limits = {GPU_RESOURCE: worker_plan.gpu_count} if worker_plan.gpu_count else {}
    worker_container = {
        "name": "ray-worker",
        "image": image,
        "resources": _container_resources(worker_cpu, worker_memory, gpu_limits),
    }
    worker_params = {"num-gpus": str(worker_plan.gpu_count)} if worker_plan.gpu_count else {}
    metadata = _metadata(name, labels, annotations, owner)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": metadata,
        "spec": {
            "rayVersion": ray_version,
            "headGroupSpec": {
                "rayStartParams": head_params,
                "template": _pod_template(None, head_container, labels, token_secret),
            },
            "workerGroupSpecs": [{
                "groupName": "workers",
                "replicas": workers,
                "minReplicas": workers,
                "maxReplicas": max(workers, 1),
                "rayStartParams": worker_params,
                "template": _pod_template(worker_plan, worker_container, labels, token_secret),
            }],
        },
    }


# -- what guards a Ray cluster: its token's Secret and its NetworkPolicy -------------


def _metadata(name: str, labels: dict, annotations: dict, owner: dict | None) -> dict:
    """Object metadata; with ``owner`` ({"name", "uid"} of the notebook pod) an owner
    reference, so the API server's garbage collector deletes the object with the pod."""
    metadata: dict = {"name": name, "labels": dict(labels), "annotations": dict(annotations)}
    if owner:
        metadata["ownerReferences"] = [{
            "apiVersion": "v1",
            "kind": "Pod",
            "name": owner["name"],
            "uid": owner["uid"],
            "blockOwnerDeletion": True,
            "controller": False,
        }]
    return metadata


def ray_token_secret_name(cluster_name: str) -> str:
    """The Secret holding a RayCluster's token (``cluster_name`` is at most 40 characters)."""
    return f"{cluster_name}-token"


def ray_token_secret(name: str, token: str, *, labels: dict, annotations: dict, owner: dict | None) -> dict:
    """The Secret holding a Ray cluster's ``token`` (under :data:`RAY_TOKEN_KEY`),
    immutable, owned by the notebook pod (``owner``) so it goes with it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(name, labels, annotations, owner),
        "type": "Opaque",
        "immutable": True,
        "data": {RAY_TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def ray_token_volume(secret_name: str) -> tuple[dict, dict]:
    """(volume, volumeMount) putting the Secret's token at :data:`RAY_TOKEN_PATH`,
    mode :data:`RAY_TOKEN_MODE`, read-only."""
    volume = {"name": RAY_TOKEN_VOLUME, "secret": {
        "secretName": secret_name, "defaultMode": RAY_TOKEN_MODE,
        "items": [{"key": RAY_TOKEN_KEY, "path": RAY_TOKEN_KEY}],
    }}
    return volume, {"name": RAY_TOKEN_VOLUME, "mountPath": RAY_TOKEN_DIR, "readOnly": True}


def ray_token_env() -> dict:
    """What a pod of a Ray server has in its environment for Ray's token authentication:
    the mode and the file's path, never the token."""
    return {MODE_VAR: "token", PATH_VAR: RAY_TOKEN_PATH}


def ray_network_policy(name: str, *, ray_pods: dict, peers: dict, labels: dict, annotations: dict,
                       owner: dict | None) -> dict:
    """A NetworkPolicy on the pods matching ``ray_pods`` (one Ray cluster's head and
    workers) admitting connections only from pods matching ``peers`` (the labels every
    pod of the same server carries: its notebook pod and the cluster's own pods).
    Egress is left alone. Owned by the notebook pod, like the cluster."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(name, labels, annotations, owner),
        "spec": {
            "podSelector": {"matchLabels": dict(ray_pods)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": dict(peers)}}]}],
        },
    }
