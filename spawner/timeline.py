"""A cloud launch's timeline: when each phase of a spawn ended, from the request on.

Phases, in order (docs/launch-time.md models each per cloud):

- ``api_call``: the cloud accepted the launch (the failover walk's last call returned);
- ``instance_running``: the provider reports the instance running with an address;
- ``driver``, ``image``, ``server``: the node's bootstrap reports, through the hub's
  launch-step endpoint (:mod:`cloudhop.hub.launch_steps_api`), that it has checked the
  GPU driver and container runtime, pulled the single-user image and started the server;
- ``first_answer``: the server answered HTTP at its address (the hub's own probe).

The spawner keeps one :class:`Timeline` per spawn, writes it to the server's state
(``"timeline"``) and shows each phase on the progress page as it ends. Standard library
only.
"""

from __future__ import annotations

import time

#: phase -> what the progress page calls it
LABELS = {
    "api_call": "cloud API call",
    "instance_running": "instance running",
    "driver": "bootstrap: driver check",
    "image": "bootstrap: image pull",
    "server": "bootstrap: server start",
    "first_answer": "first answer",
}
#: the phases a node's bootstrap reports itself
BOOTSTRAP_STEPS = ("driver", "image", "server")


class Timeline:
    """Phases of one launch, each with the seconds from the request to its end."""

    def __init__(self, started: float | None = None, phases: list[dict] | None = None):
        self.started = time.time() if started is None else started
        self.phases: list[dict] = list(phases or [])

    def mark(self, phase: str, at: float | None = None) -> str | None:
        """Record that ``phase`` ended (once: a repeated step keeps its first time);
        returns the progress page's line for it, or None when it was already marked."""
        if phase not in LABELS:
            raise ValueError(f"phase: must be one of {', '.join(LABELS)}, not {phase!r}")
        if self.has(phase):
            return None
        seconds = round((time.time() if at is None else at) - self.started, 3)
        self.phases.append({"phase": phase, "seconds": seconds})
        return f"Launch timeline: {LABELS[phase]} at {seconds:.1f} s"

    def has(self, phase: str) -> bool:
        return any(p["phase"] == phase for p in self.phases)

    def to_state(self) -> dict:
        return {"started": self.started, "phases": [dict(p) for p in self.phases]}

    @classmethod
    def from_state(cls, data) -> "Timeline | None":
        """The timeline a state holds; None for a state without one (or a broken one)."""
        if not isinstance(data, dict) or not isinstance(data.get("started"), (int, float)):
            return None
        phases = [p for p in data.get("phases") or [] if isinstance(p, dict) and p.get("phase") in LABELS]
        return cls(float(data["started"]), phases)
