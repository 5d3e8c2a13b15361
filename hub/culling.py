"""Culling policy: when an idle (or long-running) server is stopped, and when its user is
warned first.

The limits are the group rules ``idle_minutes`` (per GPU type) and ``max_hours`` in
``c.Policy.groups`` (:mod:`cloudhop.spawner.cull_rules` parses them; a bad value stops
the hub at startup naming the setting), with :class:`CloudhopCuller`'s ``idle_minutes``
as the default for a server no group rule covers (``cloudhop up --cull-idle``).

**Activity** is the hub's ``last_activity`` of the server: JupyterHub's own (browser and
API traffic, kernel messages), plus what the server extension reports
(:mod:`cloudhop.extensions.activity`): a busy kernel, GPU utilisation at or above
``gpu_busy_percent``, and the user's "keep running" answer to a warning.

**One decision**, :func:`decide`, used in two processes: the culler service
(:mod:`.culling_service`, jupyterhub-idle-culler with :class:`PolicyArbiter` as its
arbiter) stops servers whose time is up; the hub's activity endpoint
(:mod:`.culling_api`) tells each server when it will be stopped, so JupyterLab warns
``warn_minutes`` before. A cull is a normal hub stop (``DELETE`` of the server).
``max_hours`` cannot be put off by activity: its warning says so.
"""

from __future__ import annotations

import datetime
import functools
import html
import json
import logging
from dataclasses import dataclass

from cloudhop.spawner.cull_rules import (
    CULL_RULES,
    CullRules,
    most_generous,
    parse_cull_rules,
)
from cloudhop.spawner.policy import Policy
from cloudhop.spawner.validate import check_number
from traitlets import Bool, Float, Int, validate
from traitlets.config import Configurable

log = logging.getLogger("cloudhop.culling")

#: the variable the culler service reads its settings from (JSON, :meth:`CullSettings.to_json`)
SETTINGS_ENV = "CLOUDHOP_CULL_SETTINGS"
#: what the server extension reads (set in every server's environment by the culler's setup)
REPORT_ENV = "CLOUDHOP_ACTIVITY_SECONDS"
GPU_BUSY_ENV = "CLOUDHOP_GPU_BUSY_PERCENT"
UTC = datetime.timezone.utc


class CloudhopCuller(Configurable):
    """``c.CloudhopCuller.*``: the culler's defaults and timing (the limits themselves
    are group rules: ``idle_minutes`` and ``max_hours`` in ``c.Policy.groups``)."""

    enabled = Bool(
        False, help="""Set by the culler's setup (:func:`cloudhop.hub.services.add_idle_culler`):
        a culler runs, so servers are told when they will be stopped.""",
    ).tag(config=True)
    idle_minutes = Float(
        0, help="""Minutes a server may be idle when no group rule names its GPU type
        (0: no limit). `cloudhop up --cull-idle MINUTES` sets it.""",
    ).tag(config=True)
    warn_minutes = Float(
        10, help="Minutes before a cull that the server's JupyterLab warns its user (0: no warning).",
    ).tag(config=True)
    every = Int(
        0, help="""Seconds between the culler's checks (0: a quarter of the shortest idle
        limit, from 10 to 300 seconds).""",
    ).tag(config=True)
    report_seconds = Int(
        60, help="Seconds between a server's activity reports (busy kernels, GPU use) to the hub.",
    ).tag(config=True)
    gpu_busy_percent = Float(
        10, help="GPU utilisation (percent, any of the server's GPUs) at or above which a server counts as active.",
    ).tag(config=True)

    @validate("idle_minutes", "warn_minutes")
    def _valid_minutes(self, proposal):
        return check_number(proposal, minimum=0, unit="minutes")

    @validate("every")
    def _valid_every(self, proposal):
        return check_number(proposal, minimum=0, integer=True)

    @validate("report_seconds")
    def _valid_report(self, proposal):
        return check_number(proposal, minimum=1, integer=True)

    @validate("gpu_busy_percent")
    def _valid_percent(self, proposal):
        return check_number(proposal, minimum=0, maximum=100, unit="percent")


@dataclass(frozen=True)
class Decision:
    """What the culling policy says of one server now: ``action`` is ``"keep"``,
    ``"warn"`` (within the warning window) or ``"cull"``; ``cull_at`` when it will be (or
    should have been) stopped, None without a limit; ``reason`` ``"idle"`` or
    ``"max_hours"``; ``message`` a sentence for its user; ``extendable`` whether activity
    ("keep running") puts the cull off."""

    action: str
    cull_at: datetime.datetime | None = None
    reason: str | None = None
    message: str = ""
    extendable: bool = True

    def to_json(self) -> dict:
        return {"action": self.action, "reason": self.reason, "message": self.message,
                "extendable": self.extendable,
                "cull_at": self.cull_at.isoformat().replace("+00:00", "Z") if self.cull_at else None}


KEEP = Decision("keep")


def _aware(t: datetime.datetime | None) -> datetime.datetime | None:
    """A UTC-aware datetime (JupyterHub keeps naive UTC in its database)."""
    if t is None:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _minutes(m: float) -> str:
    return f"{m:g} minute{'s' if m != 1 else ''}"


def decide(*, idle_minutes: float | None, max_hours: float | None, started, last_activity,
           now: datetime.datetime, warn_minutes: float = 0, gpu: str | None = None) -> Decision:
    """The culling decision for a server ``started`` at that time with ``last_activity``
    (None: none yet, the start counts), under ``idle_minutes`` and ``max_hours`` (None:
    no such limit)."""
    started, last_activity, now = _aware(started), _aware(last_activity), _aware(now)
    candidates = []
    if idle_minutes is not None and (last_activity or started):
        since = max(t for t in (last_activity, started) if t is not None)
        candidates.append((since + datetime.timedelta(minutes=idle_minutes), "idle"))
    if max_hours is not None and started:
        candidates.append((started + datetime.timedelta(hours=max_hours), "max_hours"))
    if not candidates:
        return KEEP
    cull_at, reason = min(candidates)
    left = (cull_at - now).total_seconds() / 60
    if left <= 0:
        action = "cull"
    elif left <= warn_minutes:
        action = "warn"
    else:
        return Decision("keep", cull_at, reason, extendable=reason == "idle")
    what = f" ({html.escape(gpu)})" if gpu and gpu != "none" else ""
    when = "now" if action == "cull" else f"in about {max(1, round(left))} min"
    # short: JupyterLab's toast shows about 140 characters
    if reason == "idle":
        message = (f"This server{what} is idle and will be stopped {when} (idle limit: {_minutes(idle_minutes)}). "
                   "Use it, or choose Keep running.")
    else:
        message = (f"This server{what} reaches its {max_hours:g} h limit and will be stopped {when}. "
                   "Save your work: activity does not extend it.")
    return Decision(action, cull_at, reason, message, extendable=reason == "idle")


@dataclass(frozen=True)
class CullSettings:
    """Everything a decision needs, from the hub's config: the culler's defaults and the
    groups' rules. Passed to the culler service as JSON (:data:`SETTINGS_ENV`)."""

    enabled: bool = False
    idle_minutes: float | None = None
    warn_minutes: float = 10
    every: int = 60
    report_seconds: int = 60
    gpu_busy_percent: float = 10
    groups: dict | None = None  # raw c.Policy.groups (only their culling rules are read)

    @classmethod
    def from_config(cls, config, *, idle_minutes: float | None = None) -> CullSettings:
        """The settings in a JupyterHub config (``c``); a bad group rule raises the
        policy's ``TraitError`` naming it. ``idle_minutes`` overrides the default."""
        culler = CloudhopCuller(config=config)
        groups = dict(Policy(config=config).groups)  # validated: names the bad setting
        groups = {g: {k: v for k, v in (rules or {}).items() if k in CULL_RULES} for g, rules in groups.items()}
        idle = culler.idle_minutes if idle_minutes is None else idle_minutes
        settings = cls(enabled=culler.enabled, idle_minutes=idle or None, warn_minutes=culler.warn_minutes,
                       every=culler.every, report_seconds=culler.report_seconds,
                       gpu_busy_percent=culler.gpu_busy_percent, groups=groups)
        return settings

    @property
    def any_limit(self) -> bool:
        """Whether any server can be culled at all under these settings."""
        return bool(self.idle_minutes) or any(self.groups.get(g) for g in self.groups or {})

    def shortest_minutes(self) -> float | None:
        """The shortest idle or running-time limit anywhere (for the check interval)."""
        limits = [self.idle_minutes] if self.idle_minutes else []
        for rules in self._rules.values():
            limits += [m for _, m in rules.idle_minutes or ()]
            if rules.max_hours:
                limits.append(rules.max_hours * 60)
        return min(limits) if limits else None

    def check_every(self) -> int:
        """Seconds between the culler's checks: the setting, else a quarter of the
        shortest limit, from 10 to 300 seconds."""
        if self.every:
            return self.every
        shortest = self.shortest_minutes()
        return 300 if shortest is None else int(max(10, min(300, shortest * 60 // 4)))

    def to_json(self) -> str:
        return json.dumps({k: getattr(self, k) for k in self.__dataclass_fields__})

    @classmethod
    def from_json(cls, text: str) -> CullSettings:
        return cls(**json.loads(text))

    # -- decisions ----------------------------------------------------------------------

    @functools.cached_property
    def _policy(self) -> Policy:
        """The policy of these groups (for its union rule: which groups apply to a user)."""
        return Policy(groups=self.groups or {})

    @functools.cached_property
    def _rules(self) -> dict[str, CullRules]:
        return {g: parse_cull_rules(f"Policy.groups[{g!r}]", raw or {}) for g, raw in (self.groups or {}).items()}

    def limits(self, groups, gpu: str | None) -> tuple[float | None, float | None]:
        """``(idle minutes, max hours)`` for a server with GPU type ``gpu`` of a member of
        ``groups``: the groups that apply by the policy's union rule, most generous."""
        rules = [self._rules.get(p.group, CullRules()) for p in self._policy.for_groups(groups)]
        return most_generous(rules, gpu, self.idle_minutes)

    def decide(self, *, groups, gpu: str | None, started, last_activity,
               now: datetime.datetime | None = None) -> Decision:
        """:func:`decide` for one server of a member of ``groups``."""
        idle, hours = self.limits(groups, gpu)
        return decide(idle_minutes=idle, max_hours=hours, started=started, last_activity=last_activity,
                      now=now or datetime.datetime.now(UTC), warn_minutes=self.warn_minutes, gpu=gpu)


def server_gpu(server: dict) -> str:
    """The GPU type of a server model from the hub's API: its state's offer (the offer
    it runs on, with ``admin:server_state``), else the options it asked for; ``"none"``
    for none."""
    offer = ((server.get("state") or {}).get("offer") or {})
    gpu = offer.get("gpu") or (server.get("user_options") or {}).get("gpu")
    return gpu if isinstance(gpu, str) and gpu and gpu != "auto" else "none"


def parse_time(text: str | None) -> datetime.datetime | None:
    """A timestamp of the hub's API (ISO 8601, ``Z`` or an offset), or None."""
    if not text:
        return None
    return _aware(datetime.datetime.fromisoformat(text.replace("Z", "+00:00")))
