"""Ray clusters on demand: a head beside the notebook, workers as extra nodes.

The pieces, each one idea:

* :mod:`.ports` - a block of TCP ports per Ray node, so two servers on one machine
  never clash (a lock file per block on the local provider, a fixed block on a VM);
* :mod:`.commands` - pure builders for the ``ray start`` argv, the worker
  :class:`~cloudhop.spawner.providers.base.LaunchSpec` and the notebook wrapper;
* :mod:`.node`, :mod:`.head`, :mod:`.worker` - the small launchers that run on a node:
  they start ``ray start --block`` and, on SIGTERM, stop exactly that Ray node (never
  ``ray stop``, which would stop every user's Ray on the machine);
* :mod:`.auth` - the cluster's Ray token (token authentication is on for every
  cluster): made by the hub, moved by each launcher into a private file;
* :mod:`.loopback` - ``ray start`` for a node on this machine, every port on loopback;
* :mod:`.cluster` - :class:`RayCluster`, the worker lifecycle the spawner drives
  (launch through the same failover list as the notebook, poll, scale, stop, state);
* :mod:`.launcher` - :class:`RayLauncher`, the one object the spawner calls for a
  server that asks for Ray (plan, head spec, workers, resize, state), with explicit
  arguments and ``progress``/``save`` callables;
* the rule a cluster on VMs needs (Ray's ports open between its nodes and nothing
  else) is the VM providers' business (:mod:`cloudhop.spawner.providers.ray_firewall`):
  they make it with the cluster's first node and remove it after its last.

A provider knows little about Ray: a worker is a node with role ``ray-worker`` whose
command happens to be the worker launcher, and every node of one cluster carries
:data:`CLUSTER_TAG`, which is all a VM provider reads to open Ray's ports between them.
"""

WORKER_ROLE = "ray-worker"
#: custom Ray resource every Cloudhop worker carries (1 per node), so tasks can be
#: pinned to workers with ``resources={"cloudhop_worker": 0.01}``
WORKER_RESOURCE = "cloudhop_worker"


def __getattr__(name):
    # ``CLUSTER_TAG``: the tag on every node of one server's Ray cluster (the notebook node
    # that runs the head, and each worker); its value names the cluster (the notebook's
    # launch request id). Read lazily, so a node's launcher (head, worker), which imports
    # this package, never imports the providers' base (traitlets) or the hub.
    if name == "CLUSTER_TAG":
        from ..providers.base import TAG_RAY_CLUSTER

        return TAG_RAY_CLUSTER
    raise AttributeError(name)
