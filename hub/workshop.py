"""Workshop mode: ``cloudhop up --workshop students=30,gpu=share:4`` sets up a class.

What it sets (:func:`apply`), before the operator's ``--config`` (which still wins):

- **the shared password** (the embedded default) for students; the admin, the OS user
  who ran ``cloudhop up``, is the instructor and logs in with the admin password;
- **a** ``students`` **group** (``group=NAME`` renames it) with ``students`` seats
  (:func:`seats`: the instructor's page counts servers against them); everyone who logs
  in but the admin joins it;
- **its policy** (``c.Policy.groups``): one server each, at most one GPU, and only the
  GPU slices the workshop hands out (plus CPU);
- **the idle culler** at 30 minutes (``cull=MINUTES``; ``--cull-idle`` wins);
- **slices**, by ``gpu=``: ``share:N`` time-shares each GPU of the machine by up to N
  servers (``L4-shared``); ``mig`` offers the MIG slices the GPUs are cut into
  (``A100-MIG-1g.10gb``); ``whole`` one whole GPU per student; ``none`` CPU only.

``cloudhop up`` prints what it set up. docs/teaching.md walks through a workshop.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

#: the variable ``cloudhop up`` hands the parsed workshop to the hub's config in
ENV = "CLOUDHOP_WORKSHOP"
GPU_MODES = ("share", "mig", "whole", "none")
KEYS = ("students", "gpu", "cull", "group")
#: the local provider's region a workshop's students start in
REGION = "workshop"


class WorkshopError(ValueError):
    """A bad ``--workshop`` value; the message names the key."""


@dataclass(frozen=True)
class Workshop:
    students: int
    #: "share", "mig", "whole" or "none"
    gpu: str = "none"
    #: servers per GPU when ``gpu`` is "share"
    share: int = 1
    cull_minutes: int = 30
    group: str = "students"

    @property
    def gpu_rule(self) -> list[str]:
        """The group policy's ``gpus`` rule: the slices handed out, and CPU."""
        return {"share": ["none", "*-shared"], "mig": ["none", "*-MIG-*"],
                "whole": ["none", "*"], "none": ["none"]}[self.gpu]

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> "Workshop":
        return cls(**json.loads(text))


def parse(text: str) -> Workshop:
    """``students=30,gpu=share:4[,cull=30][,group=students]`` -> :class:`Workshop`."""
    fields: dict = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in KEYS:
            raise WorkshopError(f"--workshop: {part!r} is not one of {', '.join(k + '=...' for k in KEYS)}")
        if key in fields:
            raise WorkshopError(f"--workshop: {key} is given twice")
        fields[key] = value
    if "students" not in fields:
        raise WorkshopError("--workshop: students=N is needed (how many students), e.g. students=30,gpu=share:4")
    out = {"students": _count("students", fields["students"], 1, 10000)}
    if "cull" in fields:
        out["cull_minutes"] = _count("cull", fields["cull"], 1, 24 * 60)
    if "group" in fields:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", fields["group"]):
            raise WorkshopError(f"--workshop: group must be letters, digits, '.', '_' and '-', not {fields['group']!r}")
        out["group"] = fields["group"]
    gpu = fields.get("gpu", "none")
    mode, _, n = gpu.partition(":")
    if mode not in GPU_MODES or (mode == "share") != bool(n):
        raise WorkshopError(f"--workshop: gpu must be share:N, mig, whole or none, not {gpu!r}")
    out["gpu"] = mode
    if mode == "share":
        out["share"] = _count("gpu=share", n, 2, 64)
    return Workshop(**out)


def _count(key: str, value: str, low: int, high: int) -> int:
    if not re.fullmatch(r"\d{1,6}", value) or not low <= int(value) <= high:
        raise WorkshopError(f"--workshop: {key} must be a whole number from {low} to {high}, not {value!r}")
    return int(value)


def apply(c, workshop: Workshop) -> list[str]:
    """Set ``workshop`` up in JupyterHub config ``c``; returns what it set, one line each."""
    group = workshop.group
    # the authenticator puts students in the group (JupyterHub makes it at the first login)
    c.Authenticator.manage_groups = True
    c.Authenticator.post_auth_hook = _join_group(group, c.Authenticator.get("post_auth_hook"))

    rules = {"max_servers": 1, "max_gpus": 0 if workshop.gpu == "none" else 1, "gpus": workshop.gpu_rule,
             "providers": ["local"]}
    policy = dict(c.Policy.groups) if "groups" in c.Policy else {}
    policy[group] = rules
    c.Policy.groups = policy

    region = {"gpus": "none" if workshop.gpu == "none" else "all"}
    if workshop.gpu == "share":
        region["share_gpus"] = workshop.share
    c.LocalProvider.regions = {REGION: region}

    slices = {"share": f"each GPU time-shared by up to {workshop.share} servers",
              "mig": "the GPUs' MIG slices, one per student", "whole": "one whole GPU per student",
              "none": "CPU only"}[workshop.gpu]
    return [
        f"group {group!r} with {workshop.students} seats; everyone who logs in but the admin joins it",
        "students log in with any name and the shared password; the admin is the instructor",
        f"policy for {group!r}: one server each, GPUs {', '.join(workshop.gpu_rule)}",
        f"GPUs: {slices} (local region {REGION!r})",
        f"idle servers stop after {workshop.cull_minutes} minutes",
        "instructor's page: /services/cloudhop-instructor/ (running servers, seats, stop all, hand out a notebook)",
    ]


def seats(env) -> dict:
    """``{group: seats}`` of the workshop in ``env`` (``{}`` without one), for the
    instructor's page."""
    text = env.get(ENV)
    if not text:
        return {}
    workshop = Workshop.from_env(text)
    return {workshop.group: workshop.students}


def _join_group(group: str, previous):
    """A ``post_auth_hook`` that puts every user but admins into ``group`` (after the
    operator's own hook, if any)."""

    async def hook(authenticator, handler, authentication):
        if previous is not None:
            result = previous(authenticator, handler, authentication)
            if hasattr(result, "__await__"):
                result = await result
            authentication = result or authentication
        if authentication and not authentication.get("admin"):
            name = authentication.get("name")
            admins = getattr(authenticator, "admin_users", set()) or set()
            if name not in admins:
                authentication["groups"] = sorted(set(authentication.get("groups") or []) | {group})
        return authentication

    return hook
