"""Kubernetes building blocks for the ``kubernetes`` provider, all pure (no API calls).

* :mod:`.flavours` — how each kind of cluster labels its GPU nodes (GKE, EKS/Karpenter,
  NVIDIA GPU feature discovery) and the node selector a GPU model needs there.
* :mod:`.labels` — Cloudhop tags as valid Kubernetes labels and back.
* :mod:`.plan` — :class:`~.plan.PodPlan`, what a pod for one offer needs (GPU count,
  selector, tolerations, image, resources, z2jh overrides).
* :mod:`.manifests` — the Pod (through KubeSpawner's ``make_pod``), workspace PVC and
  KubeRay ``RayCluster`` manifests, and the Secret (the cluster's Ray token) and
  NetworkPolicy that guard a Ray cluster, as the JSON the API server takes.
* :mod:`.cluster` — cluster and pool configuration, and the offers a cluster makes
  from its nodes and the operator's autoscaling pools.
* :mod:`.profiles` — import of a Zero-to-JupyterHub ``singleuser.profileList``.
"""
