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

The parts, as in SkyPilot's ``aws/config.py`` beside ``aws/instance.py`` (network setup
kept apart from the instances):

* each cloud supplies a :class:`RuleStore` (in its provider module, the only one that
  imports its SDK): ``list``, ``ensure`` and ``delete`` of its rules, blocking calls;
* this module, which imports no SDK, holds what the clouds share: the rule's name and
  ports, the choice of rules that may go (:func:`removable`) and :class:`RayRules`,
  which serialises a cluster's rule changes and retries a delete the cloud refuses
  while a stopping node still uses the rule;
* :class:`~cloudhop.spawner.providers.cloud.CloudProvider` drives them: it ensures the
  rule before a cluster's node is created and, after a terminate, sweeps the hub's rules
  of the node's region through the store (off the event loop). Nothing here calls back
  into a provider.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

from .base import PENDING, RUNNING, Node
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
           "RuleInUse", "RuleStore", "cluster_of", "removable", "rule_name"]


class RuleInUse(Exception):
    """The cloud refuses to delete a rule a node (often one still stopping) is under."""


@dataclass(frozen=True)
class RayRule:
    """One cluster's rule as a :class:`RuleStore` lists it: ``id`` is what it deletes by,
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


class RuleStore(ABC):
    """One cloud's Ray rules: blocking SDK calls, made in a worker thread, never on the
    hub's event loop. ``where`` is the place a node id starts with (a region, or a GCP
    zone). A store holds the client it needs and the settings it reads; SDK errors
    leave it as they are (the provider maps them). Callers serialise changes per
    cluster (:meth:`RayRules.lock`), so a store need not."""

    @abstractmethod
    def list(self, where: str, hub: str) -> list[RayRule]:
        """Every rule of ``hub`` in ``where`` (any cluster's)."""

    @abstractmethod
    def ensure(self, where: str, tags: dict) -> str:
        """The id of the rule of the cluster ``tags`` name, made (opening :data:`PORTS`
        between its members only) if missing; a second call finds the same rule. The
        rule carries the hub (``tags[TAG_HUB]``) and cluster, for :meth:`list`."""

    @abstractmethod
    def delete(self, where: str, rule: RayRule) -> None:
        """Delete ``rule``; one already gone is fine. Raises :class:`RuleInUse` while
        the cloud still counts a node under it."""


class RayRules:
    """The Ray rules of one VM provider: its :class:`RuleStore`, a lock per cluster and
    the background retries of deletes the cloud refused while a node was still stopping.

    ``grace``: the age after which another cluster's rule without nodes is taken for an
    orphan (see :func:`removable`); ``retry_delay``/``retry_for``: how a refused delete
    is retried (then the next sweep takes it). ``log`` and ``name`` (the provider's)
    are only for log lines."""

    def __init__(self, store: RuleStore, *, log, name: str, grace: float = ORPHAN_GRACE,
                 retry_delay: float = 5.0, retry_for: float = 600.0):
        self.store = store
        self.log = log
        self.name = name
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
    def ensure(self, where: str, tags: dict) -> str:
        """:meth:`RuleStore.ensure` under the cluster's lock."""
        with self.lock(cluster_of(tags)):
            return self.store.ensure(where, tags)

    def delete(self, where: str, rule: RayRule) -> None:
        """:meth:`RuleStore.delete` under the cluster's lock (raises :class:`RuleInUse`)."""
        with self.lock(rule.cluster):
            self.store.delete(where, rule)
        self.log.info("%s: removed the Ray firewall rule %s of cluster %s", self.name, rule.id, rule.cluster)

    def sweep(self, where: str, rules: Iterable[RayRule], nodes: Iterable[Node], *,
              cluster: str | None, exclude=()) -> list[RayRule]:
        """Delete those of ``rules`` (a hub's, in ``where``) that :func:`removable` picks
        given ``nodes`` (every node there, as the cloud lists them now); returns those the
        cloud refused as still in use."""
        refused = []
        for rule in removable(rules, nodes, cluster=cluster, exclude=exclude, now=time.time(),
                              grace=self.grace):
            try:
                self.delete(where, rule)
            except RuleInUse:
                refused.append(rule)
        return refused

    # -- async side ----------------------------------------------------------------------
    def retry_later(self, where: str, rule: RayRule, run: Callable[..., Awaitable]) -> None:
        """Retry deleting ``rule`` in the background until the cloud lets go of it or
        ``retry_for`` has passed. ``run(fn, *args)`` runs a blocking call off the event
        loop (the provider's thread helper, which maps SDK errors)."""
        task = asyncio.get_running_loop().create_task(self._retry(where, rule, run))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _retry(self, where: str, rule: RayRule, run) -> None:
        deadline = time.monotonic() + self.retry_for
        delay = self.retry_delay
        while True:
            await asyncio.sleep(delay)
            try:
                await run(self.delete, where, rule)
                return
            except RuleInUse:
                if time.monotonic() > deadline:
                    break
                delay = min(delay * 2, 30.0)
            except Exception as err:  # noqa: BLE001 - logged; the next sweep tries again
                self.log.warning("%s: could not remove the Ray firewall rule %s: %s", self.name, rule.id, err)
                return
        self.log.warning("%s: the Ray firewall rule %s is still in use after %.0fs; the "
                         "next terminate in %s removes it", self.name, rule.id, self.retry_for, where)

    async def settle(self) -> None:
        """Wait for the background deletes (tests; a hub shutting down uses :meth:`close`)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
