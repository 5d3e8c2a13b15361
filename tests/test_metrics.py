"""Cloudhop's metrics without a hub: the spawner's events as histograms and counters,
moves counted once when they end, the move report's bytes checked, GPU readings as
gauges (dropped once a server stops reporting), and group spend read from the ledger.
tests/test_culling_e2e.py reads them all from a real hub's /hub/metrics."""

from __future__ import annotations

import time
import types

import pytest
from cloudhop.hub import metrics
from cloudhop.hub.tokens_api import check_move_change
from cloudhop.spawner import events
from cloudhop.spawner.ledger import Wanted, ledger_for
from cloudhop.spawner.policy import Policy
from prometheus_client import REGISTRY
from tornado import web
from traitlets.config import Config


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_spawner_events_become_histograms_and_counters():
    events.listen(metrics.on_spawner_event)
    events.listen(metrics.on_spawner_event)  # once, however often it is added
    spawns = value("cloudhop_spawn_duration_seconds_count", provider="gcp", status="ready")
    launched = value("cloudhop_launch_duration_seconds_count", provider="gcp")
    failed = value("cloudhop_failover_attempts_total", provider="aws", outcome="failed", reason="capacity")
    events.announce("attempt", provider="aws", outcome="failed", reason="capacity", seconds=1.5)
    events.announce("attempt", provider="gcp", outcome="launched", reason=None, seconds=40.0)
    events.announce("spawn", provider="gcp", status="ready", seconds=95.0)
    assert value("cloudhop_failover_attempts_total", provider="aws", outcome="failed", reason="capacity") == failed + 1
    assert value("cloudhop_launch_duration_seconds_count", provider="gcp") == launched + 1
    assert value("cloudhop_spawn_duration_seconds_count", provider="gcp", status="ready") == spawns + 1
    assert value("cloudhop_spawn_duration_seconds_bucket", provider="gcp", status="ready", le="60.0") < spawns + 1


def test_a_failing_listener_never_fails_the_spawner():
    def broken(kind, **fields):
        raise RuntimeError("boom")

    events.listen(broken)
    try:
        events.announce("spawn", provider="local", status="ready", seconds=1.0)  # no exception
    finally:
        events._listeners.remove(broken)


def test_a_move_is_counted_once_when_it_ends():
    done = value("cloudhop_move_duration_seconds_count", outcome="done")
    sent = value("cloudhop_move_bytes_total", outcome="done")
    m = {"phase": "awaiting-accept", "timeline": {"snapshotting": 100.0, "launching": 130.0, "awaiting-accept": 160.0}}
    metrics.observe_move(m, 5_000_000)
    assert value("cloudhop_move_duration_seconds_count", outcome="done") == done + 1
    assert value("cloudhop_move_duration_seconds_sum", outcome="done") >= 60.0
    assert value("cloudhop_move_bytes_total", outcome="done") == sent + 5_000_000
    # the user accepts later: the same move, not a second one
    m = {**m, "phase": "done", "timeline": {**m["timeline"], "done": 900.0}}
    metrics.observe_move(m, 5_000_000)
    assert value("cloudhop_move_duration_seconds_count", outcome="done") == done + 1
    failed = value("cloudhop_move_duration_seconds_count", outcome="failed")
    metrics.observe_move({"phase": "failed", "timeline": {"snapshotting": 1.0, "failed": 2.0}})
    assert value("cloudhop_move_duration_seconds_count", outcome="failed") == failed + 1
    metrics.observe_move({"phase": "restoring", "timeline": {"snapshotting": 1.0, "restoring": 2.0}})
    assert value("cloudhop_move_duration_seconds_count", outcome="failed") == failed + 1


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True])
def test_a_moves_bytes_must_be_a_whole_number(bad):
    with pytest.raises(web.HTTPError) as err:
        check_move_change({"move": "m1", "phase": "done", "bytes": bad}, owner=True)
    assert err.value.status_code == 400 and err.value.log_message.startswith("bytes:")
    assert check_move_change({"move": "m1", "phase": "done", "bytes": 12}, owner=True)["bytes"] == 12


def test_gpu_readings_become_gauges_and_go_stale():
    reading = {"index": "0", "uuid": "GPU-1", "name": "NVIDIA H100", "utilization": 97,
               "memory_used": 40 * 2**30, "memory_total": 80 * 2**30}
    metrics.record_gpus("ada", "train", [reading])
    families = {f.name: f for f in metrics.gpu_families(metrics._fresh_gpus(60))}
    (sample,) = [s for s in families["cloudhop_server_gpu_utilization_percent"].samples if s.labels["user"] == "ada"]
    assert sample.labels == {"user": "ada", "server": "train", "gpu": "0", "name": "NVIDIA H100"}
    assert sample.value == 97
    assert [s.value for s in families["cloudhop_server_gpu_memory_total_bytes"].samples
            if s.labels["user"] == "ada"] == [80 * 2**30]
    metrics.record_gpus("ada", "train", [reading], now=time.monotonic() - 1000)
    assert ("ada", "train") not in {(u, s) for u, s, _ in metrics._fresh_gpus(60)}


def test_group_spend_is_read_from_the_ledger():
    c = Config()
    c.Policy.groups = {"students": {"budget": {"usd": 50, "period": "month"}}, "research": {}}
    ledger = ledger_for(c)
    now = time.time()
    ledger.sync_server("ada", "", ["students"], [Wanted("local", "n1", "notebook", "r", "o", 3600.0, now - 10)], now=now)
    collector = metrics.HubCollector(types.SimpleNamespace(services=[], users={}))
    sampler = metrics.Sampler(collector, lambda: Policy(config=c))
    sampler.sample()
    assert collector.spend[("students", "month")] == pytest.approx(10, abs=2)
    assert collector.spend[("research", "month")] == 0
    (family,) = [f for f in collector.collect() if f.name == "cloudhop_spend_usd"]
    assert {s.labels["group"] for s in family.samples} == {"students", "research"}


def test_the_grafana_dashboard_reads_only_families_the_hub_exports():
    import json
    import re
    from pathlib import Path

    from prometheus_client.parser import text_string_to_metric_families

    dashboard = json.loads((Path(__file__).parent.parent / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|count|sum|total)$", "", n) for e in exprs for n in re.findall(r"cloudhop_\w+", e)}
    collector = metrics.HubCollector(types.SimpleNamespace(services=[], users={}))
    exported = {f.name for f in collector.collect()}
    from prometheus_client import generate_latest

    exported |= {f.name for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())}
    assert used <= exported, used - exported
    documented = (Path(__file__).parent.parent / "docs" / "operations.md").read_text()
    assert all(f"`{name}" in documented for name in used)
