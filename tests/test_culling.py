"""Culling policy without a hub: the group rules (checked at startup, naming the
setting), the decision (idle per GPU type, max_hours, the warning window), the union of
several groups, what a server counts as activity (busy GPU through the fake NVML), and
the culler's setup."""

from __future__ import annotations

import datetime
import json
import math

import pytest
from cloudhop.extensions import gpustats
from cloudhop.extensions.activity import gpu_busy
from cloudhop.hub.culling import CullSettings, decide, server_gpu
from cloudhop.hub.culling_api import _check_gpus
from cloudhop.hub.services import CULLER_SCOPES, add_idle_culler
from cloudhop.spawner.policy import Policy
from traitlets import TraitError
from traitlets.config import Config

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
GROUPS = {
    "default": {"providers": ["local"], "idle_minutes": {"H100": 15, "none": 120}, "max_hours": 12},
    "students": {"idle_minutes": {"*": 30}, "max_hours": 4},
    "research": {"idle_minutes": {"H100": 60}},
}


def settings(groups=GROUPS, **kw) -> CullSettings:
    c = Config()
    c.Policy.groups = groups
    return CullSettings.from_config(c, **kw)


@pytest.mark.parametrize("rules, named", [
    ({"idle_minutes": {"H100": -1}}, "['idle_minutes']['H100']"),
    ({"idle_minutes": {"H100": math.nan}}, "['idle_minutes']['H100']"),
    ({"idle_minutes": {"H100": True}}, "['idle_minutes']['H100']"),
    ({"idle_minutes": 0}, "['idle_minutes']"),
    ({"idle_minutes": {}}, "['idle_minutes']"),
    ({"idle_minutes": {"": 5}}, "['idle_minutes']"),
    ({"idle_minutes": "15"}, "['idle_minutes']"),
    ({"max_hours": -2}, "['max_hours']"),
    ({"max_hours": "12"}, "['max_hours']"),
])
def test_a_bad_cull_rule_is_refused_naming_the_setting(rules, named):
    with pytest.raises(TraitError) as err:
        Policy(groups={"students": rules})
    assert f"Policy.groups['students']{named}" in str(err.value)


def test_a_misspelt_cull_rule_gets_a_hint():
    with pytest.raises(TraitError, match="did you mean 'idle_minutes'"):
        Policy(groups={"default": {"idle_minute": 5}})


def test_a_bad_rule_stops_the_culler_setup_at_startup():
    c = Config()
    c.Policy.groups = {"default": {"max_hours": 0}}
    with pytest.raises(TraitError, match=r"Policy.groups\['default'\]\['max_hours'\]"):
        add_idle_culler(c)


def test_idle_limits_follow_the_gpu_type_and_the_groups():
    s = settings()
    assert s.limits([], "H100") == (15, 12)
    assert s.limits([], "h100") == (15, 12), "GPU types in any case"
    assert s.limits([], "none") == (120, 12)
    assert s.limits([], "L4") == (None, 12), "no entry and no default: no idle limit"
    assert settings(idle_minutes=45).limits([], "L4") == (45, 12), "the culler's default fills in"
    assert s.limits(["students"], "L4") == (30, 4), "'*' covers the types not listed"
    # several groups: the most generous limit of each kind
    assert s.limits(["students", "research"], "H100") == (60, None)
    assert s.limits(["students", "research"], "L4") == (None, None)


def test_a_server_is_kept_then_warned_then_culled():
    kw = dict(idle_minutes=15, max_hours=None, started=T0, warn_minutes=5, gpu="H100")
    assert decide(last_activity=T0, now=T0 + datetime.timedelta(minutes=9), **kw).action == "keep"
    warn = decide(last_activity=T0, now=T0 + datetime.timedelta(minutes=11), **kw)
    assert warn.action == "warn" and warn.reason == "idle" and warn.extendable
    assert warn.cull_at == T0 + datetime.timedelta(minutes=15)
    assert "in about 4 min" in warn.message and "H100" in warn.message and len(warn.message) <= 140
    assert decide(last_activity=T0, now=T0 + datetime.timedelta(minutes=15), **kw).action == "cull"
    # activity puts the cull off
    later = T0 + datetime.timedelta(minutes=14)
    assert decide(last_activity=later, now=later + datetime.timedelta(minutes=1), **kw).action == "keep"
    # no activity yet: the start counts; JupyterHub's naive UTC times read as UTC
    naive = T0.replace(tzinfo=None)
    assert decide(idle_minutes=15, max_hours=None, started=naive, last_activity=None,
                  now=T0 + datetime.timedelta(minutes=16)).action == "cull"


def test_max_hours_is_not_put_off_by_activity():
    now = T0 + datetime.timedelta(hours=3, minutes=55)
    d = decide(idle_minutes=30, max_hours=4, started=T0, last_activity=now, now=now, warn_minutes=10)
    assert d.action == "warn" and d.reason == "max_hours" and not d.extendable
    assert "does not extend" in d.message and len(d.message) <= 140
    d = decide(idle_minutes=30, max_hours=4, started=T0, last_activity=now, now=now + datetime.timedelta(minutes=5))
    assert d.action == "cull" and d.to_json()["cull_at"] == "2026-01-05T16:00:00Z"


def test_the_gpu_of_a_server_model_is_its_offers():
    assert server_gpu({"state": {"offer": {"gpu": "H100"}}, "user_options": {"gpu": "auto"}}) == "H100"
    assert server_gpu({"user_options": {"gpu": "L4"}}) == "L4"
    assert server_gpu({"user_options": {"gpu": "auto"}}) == "none"
    assert server_gpu({}) == "none"


def test_a_busy_gpu_counts_as_activity(monkeypatch):
    """GPU utilisation read through NVML (the fake one) above the threshold is activity."""
    gpus = [{"name": "NVIDIA H100", "memory_gib": 80, "uuid": "GPU-fake-0000", "utilization": 85},
            {"name": "NVIDIA H100", "memory_gib": 80, "uuid": "GPU-fake-0001", "utilization": 3}]
    monkeypatch.setenv("CLOUDHOP_FAKE_GPUS", json.dumps(gpus))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    reading = gpustats.sample("fakes.nvml")
    assert [g["utilization"] for g in reading["gpus"]] == [85, 3]
    assert gpu_busy(reading, 10) == 85
    assert gpu_busy(reading, 90) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-fake-0001")  # this server has only the idle one
    assert gpu_busy(gpustats.sample("fakes.nvml"), 10) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_busy(gpustats.sample("fakes.nvml"), 0) is None, "no GPU: never busy by GPU"


@pytest.mark.parametrize("gpus, field", [
    ("x", "gpus"),
    ([1], "gpus[0]"),
    ([{"utilization": 101}], "gpus[0].utilization"),
    ([{"utilization": True}], "gpus[0].utilization"),
    ([{"memory_used": -1}], "gpus[0].memory_used"),
    ([{"name": "x" * 500}], "gpus[0].name"),
    ([{}] * 65, "gpus"),
])
def test_a_bad_activity_report_names_the_field(gpus, field):
    with pytest.raises(ValueError) as err:
        _check_gpus(gpus)
    assert str(err.value).startswith(f"{field}:")


def test_the_culler_setup_reads_the_policy_and_tells_the_servers():
    c = Config()
    c.Policy.groups = {"default": {"idle_minutes": {"H100": 2, "none": 120}}}
    c.CloudhopCuller.report_seconds = 30
    c.Spawner.environment = {"MINE": "1"}
    service = add_idle_culler(c)
    assert service["command"][1:3] == ["-m", "cloudhop.hub.culling_service"]
    assert "--cull-every=30" in service["command"], "a quarter of the shortest limit (2 min)"
    assert c.Spawner.environment == {"MINE": "1", "CLOUDHOP_ACTIVITY_SECONDS": "30", "CLOUDHOP_GPU_BUSY_PERCENT": "10"}
    sent = CullSettings.from_json(service["environment"]["CLOUDHOP_CULL_SETTINGS"])
    assert sent.enabled and sent.limits([], "H100") == (2, None)
    (role,) = [r for r in c.JupyterHub.load_roles if r["name"] == "cloudhop-idle-culler"]
    assert role["scopes"] == CULLER_SCOPES and "admin:users" not in CULLER_SCOPES
