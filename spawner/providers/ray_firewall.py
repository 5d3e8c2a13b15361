"""The firewall rule a Ray cluster on VMs needs, made with its first node and removed
after its last.

On a VM every Ray node listens on the fixed block :data:`PORTS`; the nodes of one
cluster (the notebook node running the head, and the workers) must reach each other
there, and nothing else may. Each of them carries :data:`CLUSTER_TAG`. A VM provider
launching such a node first makes sure the cluster's rule exists (AWS: a security
group, GCP: a firewall rule on a network tag, OCI: a network security group, each
admitting the range from its own members only) and puts the node under it. After a
node is terminated the provider removes the rule of its cluster once no node of that
cluster is pending or running, and in the same sweep every rule of the same hub whose
cluster has no such node and that is older than :data:`ORPHAN_GRACE` (left by a hub
that died between its last terminate and the delete; the reaper's terminates sweep too).

This module holds what the three clouds share and imports no SDK: the rule's name and
ports, the choice of rules that may go (:func:`removable`) and :class:`RayRules`, which
serialises rule changes per cluster and retries a delete the cloud refuses while a
stopping node still uses the rule. A provider using it supplies, besides its usual
``_blocking_describe`` and ``_call``:

* ``_blocking_ray_rules(where, hub) -> list[RayRule]`` - the hub's rules there;
* ``_blocking_delete_ray_rule(where, rule)`` - gone already is fine; raises
  :class:`RuleInUse` while the cloud still counts a node under the rule.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from dataclasses import dataclass

from .base import PENDING, RUNNING, TAG_HUB, CapacityError, CredentialsError, QuotaError
from .base import TAG_RAY_CLUSTER as CLUSTER_TAG

#: the TCP range a cluster's rule opens between its nodes: the fixed port block every Ray
#: node on a VM listens on (``cloudhop.spawner.ray.ports.VM_PORT_RANGE``, a test keeps
#: them equal; a provider does not import the spawner's Ray part)
PORTS = (6379, 6506)
#: a rule without a pending or running node may belong to a launch still in flight
#: until it is this old (seconds); only then does another terminate's sweep remove it
ORPHAN_GRACE = 900.0
DESCRIPTION = (f"Cloudhop: TCP {PORTS[0]}-{PORTS[1]} (Ray) between the nodes of one Ray "
               "cluster; removed with its last node")

__all__ = ["CLUSTER_TAG", "DESCRIPTION", "ORPHAN_GRACE", "PORTS", "RayRule", "RayRules",
           "RuleInUse", "cluster_of", "removable", "rule_name"]


class RuleInUse(Exception):
    """The cloud refuses to delete a rule a node (often one still stopping) is under."""


@dataclass(frozen=True)
class RayRule:
    """One cluster's rule as a provider lists it: ``id`` is what it deletes by,
    ``created`` epoch seconds (None when the cloud does not say)."""

    id: str
    cluster: str
    created: float | None = None


def cluster_of(tags: dict | None) -> str | None:
    """The Ray cluster a node's tags put it in (None: not part of one)."""
    value = (tags or {}).get(CLUSTER_TAG)
    return str(value) if value else None


def rule_name(cluster: str) -> str:
    """The rule's (and, on GCP, the network tag's) name: stable per cluster, lowercase,
    29 characters, valid as a GCP resource name and network tag."""
    return "cloudhop-ray-" + hashlib.sha256(cluster.encode()).hexdigest()[:16]


def removable(rules, nodes, *, cluster: str | None, exclude=(), now: float,
              grace: float = ORPHAN_GRACE) -> list[RayRule]:
    """The rules among ``rules`` that may be deleted now: no pending or running node of
    ``nodes`` (other than those in ``exclude``, just terminated) is in their cluster,
    and they are ``cluster``'s own or older than ``grace``."""
    holding = {cluster_of(n.tags) for n in nodes if n.state in (PENDING, RUNNING) and n.id not in exclude}
    out = []
    for rule in rules:
        if rule.cluster in holding:
            continue
        if rule.cluster == cluster or (rule.created is not None and now - rule.created >= grace):
            out.append(rule)
    return out


class RayRules:
    """The Ray rules of one VM provider (see the module docstring for what the provider
    supplies). ``retry_delay``/``retry_for``: how a delete the cloud refuses while a node
    is still stopping is retried in the background (then the next sweep takes it)."""

    def __init__(self, provider, *, grace: float = ORPHAN_GRACE, retry_delay: float = 5.0,
                 retry_for: float = 600.0):
        self.provider = provider
        self.grace = grace
        self.retry_delay = retry_delay
        self.retry_for = retry_for
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._tasks: set[asyncio.Task] = set()

    def lock(self, cluster: str) -> threading.Lock:
        """Held (in a worker thread) while a cluster's rule is made or deleted, so the
        workers launched at once make one rule and a delete never races a make."""
        with self._guard:
            return self._locks.setdefault(cluster, threading.Lock())

    # -- blocking side (worker threads) --------------------------------------------------
    def blocking_release(self, where: str, hub: str, cluster: str | None = None,
                         exclude=()) -> list[RayRule]:
        """Delete the ``hub``'s rules in ``where`` that :func:`removable` picks; returns
        those the cloud refused as still in use."""
        provider = self.provider
        rules = provider._blocking_ray_rules(where, hub)
        if not rules:
            return []
        nodes = list(provider._blocking_describe(where).values())
        refused = []
        for rule in removable(rules, nodes, cluster=cluster, exclude=exclude, now=time.time(),
                              grace=self.grace):
            try:
                self._blocking_delete(where, rule)
            except RuleInUse:
                refused.append(rule)
        return refused

    def _blocking_delete(self, where: str, rule: RayRule) -> None:
        with self.lock(rule.cluster):
            self.provider._blocking_delete_ray_rule(where, rule)
        self.provider.log.info("%s: removed the Ray firewall rule %s of cluster %s",
                               self.provider.name, rule.id, rule.cluster)

    def after_failed_create(self, where: str, tags: dict, err: BaseException) -> None:
        """A create that made no node (a capacity or quota error) leaves no rule behind
        when its cluster has no other node; the next offer makes it again if needed."""
        cluster, hub = cluster_of(tags), tags.get(TAG_HUB)
        if not cluster or not hub:
            return
        if not isinstance(self.provider._classify(err), (CapacityError, QuotaError)):
            return  # the node may exist (a timeout): the terminate that ends it sweeps
        try:
            self.blocking_release(where, hub, cluster)
        except Exception as cleanup:  # noqa: BLE001 - the launch error is what matters
            self.provider.log.warning("%s: could not remove the Ray firewall rule of %s: %s",
                                      self.provider.name, cluster, cleanup)

    # -- async side ----------------------------------------------------------------------
    async def terminate(self, node_id: str, terminate) -> None:
        """``await terminate(node_id)`` (the provider's own), then release the node's
        cluster rule and sweep its hub's orphans. Never fails because of a rule."""
        where = node_id.partition("/")[0]
        try:
            known = (await self.provider._region_nodes(where)).get(node_id)
        except Exception:  # noqa: BLE001 - the terminate below reports the real problem
            known = None
        await terminate(node_id)
        if known is not None:
            await self.release(where, known.tags, exclude=(node_id,))

    async def release(self, where: str, tags: dict, exclude=()) -> None:
        hub, cluster = (tags or {}).get(TAG_HUB), cluster_of(tags)
        if not hub:
            return
        try:
            refused = await self.provider._call(self.blocking_release, where, hub, cluster, tuple(exclude))
        except Exception as err:  # noqa: BLE001 - a rule left behind never fails a terminate
            # a hub without Ray servers may lack the firewall permissions: its sweep is quiet
            quiet = cluster is None and isinstance(err, CredentialsError)
            (self.provider.log.debug if quiet else self.provider.log.warning)(
                "%s: could not remove Ray firewall rules in %s: %s", self.provider.name, where, err)
            return
        for rule in refused:
            task = asyncio.get_running_loop().create_task(self._retry(where, rule))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _retry(self, where: str, rule: RayRule) -> None:
        deadline = time.monotonic() + self.retry_for
        delay = self.retry_delay
        while True:
            await asyncio.sleep(delay)
            try:
                await self.provider._call(self._blocking_delete, where, rule)
                return
            except RuleInUse:
                if time.monotonic() > deadline:
                    break
                delay = min(delay * 2, 30.0)
            except Exception as err:  # noqa: BLE001 - logged; the next sweep tries again
                self.provider.log.warning("%s: could not remove the Ray firewall rule %s: %s",
                                          self.provider.name, rule.id, err)
                return
        self.provider.log.warning("%s: the Ray firewall rule %s is still in use after %.0fs; the "
                                  "next terminate in %s removes it", self.provider.name, rule.id,
                                  self.retry_for, where)

    async def settle(self) -> None:
        """Wait for the background deletes (tests; a hub shutting down uses :meth:`close`)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
