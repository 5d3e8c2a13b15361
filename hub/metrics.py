"""Cloudhop's metrics, on JupyterHub's own ``/hub/metrics`` (prometheus_client's default
registry, which JupyterHub serves; a token with ``read:metrics`` reads it).

Families (docs/operations.md says how Prometheus scrapes them and what each is for):

===========================================  =========  ===============================
name                                         type       labels
===========================================  =========  ===============================
cloudhop_spawn_duration_seconds              histogram  provider, status
cloudhop_launch_duration_seconds             histogram  provider
cloudhop_failover_attempts_total             counter    provider, outcome, reason
cloudhop_running_nodes                       gauge      provider, region, gpu, role
cloudhop_spend_rate_usd_per_hour             gauge      group
cloudhop_spend_usd                           gauge      group, period
cloudhop_move_duration_seconds               histogram  outcome
cloudhop_move_bytes_total                    counter    outcome
cloudhop_store_bytes                         gauge      backend
cloudhop_server_gpu_utilization_percent      gauge      user, server, gpu, name
cloudhop_server_gpu_memory_used_bytes        gauge      user, server, gpu, name
cloudhop_server_gpu_memory_total_bytes       gauge      user, server, gpu, name
===========================================  =========  ===============================

Where each comes from: spawns, launches and failover attempts from the spawner's events
(:mod:`cloudhop.spawner.events`); moves from the hub's move records when a move ends
(:func:`observe_move`, with the bytes its source reports); running nodes and the spend rate from the hub's live servers at
scrape time (each server's $/h counts for the first group of its user that the policy
applies); spend per group this budget period from the spend ledger, sampled in a thread; store bytes from the local snapshot store's folder, sampled in a
thread; GPU readings from each server's activity reports (:mod:`.culling_api`), dropped
when a server has not reported for three report intervals.

Nothing here runs a blocking call on the hub's loop: the scrape reads what is in memory.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger("cloudhop.metrics")

#: seconds: a spawn on a cloud VM takes minutes; a local one a few seconds
DURATION_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1800, float("inf"))
MOVE_BUCKETS = (5, 10, 30, 60, 120, 300, 600, 1200, 3600, float("inf"))

SPAWN_DURATION = Histogram(
    "cloudhop_spawn_duration_seconds",
    "Seconds from a spawn's start to a node that serves (or to its failure), per provider that launched",
    ["provider", "status"], buckets=DURATION_BUCKETS)
LAUNCH_DURATION = Histogram(
    "cloudhop_launch_duration_seconds", "Seconds of a provider's launch call that launched a node",
    ["provider"], buckets=DURATION_BUCKETS)
FAILOVER_ATTEMPTS = Counter(
    "cloudhop_failover_attempts", "Tries of the failover walk, by outcome and the provider's reason for a failure",
    ["provider", "outcome", "reason"])
MOVE_DURATION = Histogram(
    "cloudhop_move_duration_seconds", "Seconds from a move's start to its end (done or failed)",
    ["outcome"], buckets=MOVE_BUCKETS)
MOVE_BYTES = Counter(
    "cloudhop_move_bytes", "Bytes moved by finished moves (what their snapshots sent to the store)", ["outcome"])

#: the families :class:`HubCollector` yields
COLLECTED = ("cloudhop_running_nodes", "cloudhop_spend_rate_usd_per_hour", "cloudhop_spend_usd",
             "cloudhop_store_bytes", "cloudhop_server_gpu_utilization_percent",
             "cloudhop_server_gpu_memory_used_bytes", "cloudhop_server_gpu_memory_total_bytes")
#: a server's GPU readings are dropped after this many report intervals without a report
STALE_REPORTS = 3
#: seconds between the samples of the store's size and the groups' spend
SAMPLE_SECONDS = 60.0


def on_spawner_event(kind: str, **f) -> None:
    """The spawner's events (:mod:`cloudhop.spawner.events`) as metrics."""
    if kind == "spawn":
        SPAWN_DURATION.labels(f.get("provider") or "none", f.get("status") or "failed").observe(f.get("seconds") or 0)
    elif kind == "attempt":
        outcome = f.get("outcome") or "failed"
        FAILOVER_ATTEMPTS.labels(f.get("provider") or "none", outcome, f.get("reason") or "").inc()
        if outcome == "launched" and f.get("seconds") is not None:
            LAUNCH_DURATION.labels(f.get("provider") or "none").observe(f["seconds"])


#: the phases that end a move, for the metrics: verified (both kinds) or failed
MOVE_ENDS = ("awaiting-accept", "done", "failed")


def observe_move(record: dict, nbytes: int | None = None) -> None:
    """A move's record (:mod:`.move_book`) that just entered ``record["phase"]``: when
    that is the first of :data:`MOVE_ENDS` it reached, its duration (from its first
    phase) and the bytes it moved (when the source said) are observed; a later end (done
    after awaiting-accept, a rollback after done) is not counted again."""
    phase, timeline = record.get("phase"), record.get("timeline") or {}
    if phase not in MOVE_ENDS or any(p in timeline for p in MOVE_ENDS if p != phase):
        return
    outcome = "failed" if phase == "failed" else "done"
    starts = [t for p, t in timeline.items() if p not in MOVE_ENDS and isinstance(t, (int, float))]
    if starts and isinstance(timeline.get(phase), (int, float)):
        MOVE_DURATION.labels(outcome).observe(max(0.0, timeline[phase] - min(starts)))
    if nbytes:
        MOVE_BYTES.labels(outcome).inc(nbytes)


# -- GPU readings reported by servers ------------------------------------------------

_gpus: dict[tuple[str, str], tuple[float, list[dict]]] = {}
_gpus_lock = threading.Lock()


def record_gpus(user: str, server: str, readings: list[dict], now: float | None = None) -> None:
    """A server's latest GPU readings (checked by :mod:`.culling_api`)."""
    with _gpus_lock:
        _gpus[(user, server)] = (now or time.monotonic(), readings)


def forget_server(user: str, server: str) -> None:
    with _gpus_lock:
        _gpus.pop((user, server), None)


def _fresh_gpus(max_age: float) -> list[tuple[str, str, list[dict]]]:
    now = time.monotonic()
    with _gpus_lock:
        for key in [k for k, (t, _) in _gpus.items() if now - t > max_age]:
            del _gpus[key]
        return [(u, s, r) for (u, s), (_t, r) in _gpus.items()]


# -- the collector: what the hub knows at scrape time ---------------------------------

def _first_group(policy, groups) -> str:
    try:
        return policy.for_groups(groups)[0].group
    except Exception:  # noqa: BLE001 - a server without a Cloudhop policy
        return "default"


class HubCollector:
    """Gauges read from the hub's live servers and the samplers, at each scrape."""

    def __init__(self, app):
        self.app = app
        self.store_bytes: dict[str, float] = {}
        self.spend: dict[tuple[str, str], float] = {}

    def servers(self):
        """``(user, spawner)`` of every active server the hub holds in memory (none
        before the hub has loaded its users)."""
        try:
            users = list(self.app.users.values())
        except Exception:  # noqa: BLE001 - not initialised yet
            return
        for user in users:
            for spawner in list(user.spawners.values()):
                if spawner.active:
                    yield user, spawner

    def describe(self):
        """The families' names, without reading the hub (the registry asks once)."""
        return [GaugeMetricFamily(name, "") for name in COLLECTED]

    def collect(self):
        nodes = GaugeMetricFamily("cloudhop_running_nodes", "Nodes of active servers (notebooks and Ray workers)",
                                  labels=["provider", "region", "gpu", "role"])
        rate = GaugeMetricFamily("cloudhop_spend_rate_usd_per_hour",
                                 "USD per hour of the active servers, by the group that pays", labels=["group"])
        counts: dict[tuple, int] = {}
        rates: dict[str, float] = {}
        for user, spawner in self.servers():
            offer, request = getattr(spawner, "offer", None), getattr(spawner, "request", None)
            for ref in getattr(spawner, "nodes", None) or []:
                role = ref.get("role") or "notebook"
                if role == "notebook":
                    gpu = getattr(offer, "gpu", None)
                else:
                    gpu = getattr(getattr(request, "ray", None), "gpu", None)
                key = (ref.get("provider") or "", ref.get("region") or "", gpu or "none", role)
                counts[key] = counts.get(key, 0) + 1
            price = getattr(spawner, "_price_hour", None)
            if price and getattr(spawner, "policy", None) is not None:
                group = _first_group(spawner.policy, [g.name for g in user.groups])
                rates[group] = rates.get(group, 0.0) + float(price)
        for key, n in sorted(counts.items()):
            nodes.add_metric(list(key), n)
        for group, usd in sorted(rates.items()):
            rate.add_metric([group], usd)
        yield nodes
        yield rate
        spend = GaugeMetricFamily("cloudhop_spend_usd", "USD spent this budget period, per group (the spend ledger)",
                                  labels=["group", "period"])
        for (group, period), usd in sorted(self.spend.items()):
            spend.add_metric([group, period], usd)
        yield spend
        store = GaugeMetricFamily("cloudhop_store_bytes", "Bytes the snapshot store holds", labels=["backend"])
        for backend, n in sorted(self.store_bytes.items()):
            store.add_metric([backend], n)
        yield store
        yield from gpu_families(_fresh_gpus(STALE_REPORTS * report_seconds()))


def report_seconds() -> float:
    from .culling import REPORT_ENV

    try:
        return float(os.environ.get(REPORT_ENV) or 60)
    except ValueError:
        return 60.0


def gpu_families(servers: list[tuple[str, str, list[dict]]]):
    """The per-server GPU gauges of the readings ``(user, server, readings)``."""
    labels = ["user", "server", "gpu", "name"]
    util = GaugeMetricFamily("cloudhop_server_gpu_utilization_percent", "GPU utilisation a server reports", labels=labels)
    used = GaugeMetricFamily("cloudhop_server_gpu_memory_used_bytes", "GPU memory in use a server reports", labels=labels)
    total = GaugeMetricFamily("cloudhop_server_gpu_memory_total_bytes", "GPU memory a server has", labels=labels)
    for user, server, readings in servers:
        for r in readings:
            values = [user, server, r.get("index") or "", r.get("name") or ""]
            for family, key in ((util, "utilization"), (used, "memory_used"), (total, "memory_total")):
                if r.get(key) is not None:
                    family.add_metric(values, r[key])
    return [util, used, total]


def folder_bytes(path: str) -> int:
    """Bytes of the files under ``path`` (blocking: run it in a thread)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _store_dir(app) -> str | None:
    for service in getattr(app, "services", None) or []:
        folder = (service.get("environment") or {}).get("CLOUDHOP_STORE_DIR")
        if folder:
            return folder
    return None


class Sampler(threading.Thread):
    """Samples what is slow to read (the store's folder, the groups' spend) every
    :data:`SAMPLE_SECONDS` in its own thread, for the collector."""

    def __init__(self, collector: HubCollector, policy_factory=None, interval: float = SAMPLE_SECONDS):
        super().__init__(name="cloudhop-metrics", daemon=True)
        self.collector = collector
        self.policy_factory = policy_factory
        self.interval = interval
        self.stopped = threading.Event()

    def sample(self) -> None:
        folder = _store_dir(self.collector.app)
        if folder and os.path.isdir(folder):
            self.collector.store_bytes = {"local": float(folder_bytes(folder))}
        self.collector.spend = self.group_spend()

    def group_spend(self) -> dict:
        """Each configured group's spend this budget period, from the spend ledger
        (:mod:`cloudhop.spawner.ledger`); empty without a policy."""
        policy = self.policy_factory() if self.policy_factory else None
        if policy is None:
            return {}
        from cloudhop.spawner.ledger import ledger_for
        from cloudhop.spawner.policy import period_start

        ledger = ledger_for(policy.config)
        out = {}
        for group, rules in (policy.groups or {}).items():
            period = ((rules or {}).get("budget") or {}).get("period", "month")
            try:
                out[(group, period)] = ledger.spent(since=period_start(period), group=group)
            except Exception as err:  # noqa: BLE001 - one failing figure leaves the others
                log.warning("Spend of group %s could not be read for the metrics: %s", group, err)
        return out

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.sample()
            except Exception as err:  # noqa: BLE001 - a sample never ends the thread
                log.warning("Metrics sample failed: %s", err)
            self.stopped.wait(self.interval)


_installed: dict = {}


def install(app) -> None:
    """Register Cloudhop's families for hub application ``app`` (once per process):
    the spawner's events, the collector of live servers, and the sampler thread."""
    from cloudhop.spawner import events

    events.listen(on_spawner_event)
    if "collector" in _installed:
        _installed["collector"].app = app
        return
    collector = HubCollector(app)
    REGISTRY.register(collector)

    def policy():
        from cloudhop.spawner.policy import Policy

        return Policy(config=app.config)

    sampler = Sampler(collector, policy)
    sampler.start()
    _installed.update(collector=collector, sampler=sampler)
