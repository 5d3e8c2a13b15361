"""The culling rules of a group policy: how long a server may sit idle, by GPU type, and
how long it may run at all. Standard library only (the hub's culler service imports it).

In ``c.Policy.groups`` (:mod:`.policy`) beside the other rules::

    "students": {"idle_minutes": {"H100": 15, "A100": 30, "none": 120, "*": 60},
                 "max_hours": 12}

``idle_minutes`` maps a GPU type (the catalog's name, any case; ``"none"`` for a
CPU-only server; ``"*"`` for every type not listed, CPU-only included) to the minutes a server of that type
may go without activity before it is stopped; one number applies to every type. A type
with no entry (and no ``"*"``) falls back to the culler's default
(``c.CloudhopCuller.idle_minutes``, ``cloudhop up --cull-idle``). ``max_hours`` is how
long a server may run from its start, active or not.

A user in several groups gets the most generous limit of those groups (the union rule of
:mod:`.policy`); a group without the rule sets no limit of its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: the policy rules this module owns
CULL_RULES = ("idle_minutes", "max_hours")
#: the ``idle_minutes`` key of a CPU-only server, and of every GPU type not listed
NO_GPU = "none"
ANY_GPU = "*"


class CullRuleError(ValueError):
    """A culling rule that is not valid; the message names the setting."""


@dataclass(frozen=True)
class CullRules:
    """One group's culling rules. ``idle_minutes`` is ``((gpu type casefolded, minutes),
    ...)``, or None when the group sets none; ``max_hours`` None for no limit."""

    idle_minutes: tuple | None = None
    max_hours: float | None = None

    def idle_limit(self, gpu: str | None) -> float | None:
        """Minutes a server with GPU type ``gpu`` (None or "" for none) may be idle under
        this group, or None when this group has no entry for it."""
        if self.idle_minutes is None:
            return None
        table = dict(self.idle_minutes)
        key = (gpu or NO_GPU).casefold()
        return table[key] if key in table else table.get(ANY_GPU)


def _minutes(value, name: str, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CullRuleError(f"{name} must be a number of {unit} > 0, not {value!r}")
    return float(value)


def parse_cull_rules(where: str, raw: dict) -> CullRules:
    """The culling rules of one group's raw rules dict; ``where`` names the group's
    setting (``Policy.groups['students']``) in the :class:`CullRuleError` a bad value
    raises."""
    idle = raw.get("idle_minutes")
    table = None
    if idle is not None:
        name = f"{where}['idle_minutes']"
        if isinstance(idle, dict):
            if not idle:
                raise CullRuleError(f"{name} must name at least one GPU type (or '*'), not {{}}")
            entries = {}
            for gpu, minutes in idle.items():
                if not isinstance(gpu, str) or not gpu.strip():
                    raise CullRuleError(f"{name}: keys must be GPU types ('H100', 'none', '*'), not {gpu!r}")
                entries[gpu.strip().casefold()] = _minutes(minutes, f"{name}[{gpu!r}]", "minutes")
            table = tuple(sorted(entries.items()))
        else:
            table = ((ANY_GPU, _minutes(idle, name, "minutes")),)
    hours = raw.get("max_hours")
    max_hours = None if hours is None else _minutes(hours, f"{where}['max_hours']", "hours")
    return CullRules(idle_minutes=table, max_hours=max_hours)


def most_generous(rules: list[CullRules], gpu: str | None, default_idle: float | None
                  ) -> tuple[float | None, float | None]:
    """``(idle minutes, max hours)`` for a server with GPU type ``gpu`` whose user falls
    under ``rules`` (one per applicable group): each group's idle limit (its entry for
    the type, else ``default_idle``), then the largest of the groups'; None (no limit)
    wins over any number, for both."""
    if not rules:
        rules = [CullRules()]
    idles = [r.idle_limit(gpu) for r in rules]
    idles = [default_idle if m is None else m for m in idles]
    idle = None if any(m is None for m in idles) else max(idles)
    hours = [r.max_hours for r in rules]
    max_hours = None if any(h is None for h in hours) else max(hours)
    return idle, max_hours
