"""The typed pieces of a server's saved state, shared by the spawner and the reaper.

``CloudhopSpawner.get_state`` writes one dict per server into the hub's database, and
the reaper (another process, through the hub API) reads it to learn which nodes are
owned. Both go through this module so the writer and the reader agree on one format
(docs/architecture.md, "State"). It is standard library only: the reaper and a node
can import it without the spawner's dependencies.

The state dict of a server with nodes (the format is kept exactly: existing hubs load
it, so keys and values only ever get added)::

    {"version": STATE_VERSION,
     "request": LaunchRequest.to_dict() or None, "offer": Offer.to_dict() or None,
     "node": Node.to_dict() or None,             # the notebook node
     "nodes": [NodeRef.to_dict(), ...],          # every node the server owns
     "attempts": [Attempt.to_dict(), ...],       # the failover walk of the last spawn
     "ray": {...}}                               # only with a Ray cluster (RayCluster.to_state)

A server without nodes has none of these keys (an empty, version-less state).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

#: version of the state dict this Cloudhop writes; a reader refuses to act on a newer one
STATE_VERSION = 1

NOTEBOOK_ROLE = "notebook"


class StateVersionError(ValueError):
    """A saved state is from a newer Cloudhop than this process knows (or has a version
    that is not a number): acting on it could miss nodes it lists in a new way."""

    def __init__(self, version, where: str = "a server"):
        self.version = version
        super().__init__(f"the state of {where} has version {version!r}; this Cloudhop reads "
                         f"versions up to {STATE_VERSION}")


@dataclass(frozen=True)
class NodeRef:
    """One node a server owns, as its state lists it: enough to find the node again
    (``provider``, its ``id`` there) and to say what it is (``role``: ``"notebook"`` or
    ``"ray-worker"``; ``region``)."""

    provider: str | None
    id: str | None
    role: str | None = None
    region: str | None = None

    def to_dict(self) -> dict:
        """The entry of ``state["nodes"]``: always these four keys."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NodeRef":
        """An entry of ``state["nodes"]``; missing keys are None, unknown ones ignored
        (a newer writer may add some)."""
        return cls(provider=data.get("provider"), id=data.get("id"), role=data.get("role"),
                   region=data.get("region"))


@dataclass(frozen=True)
class Attempt:
    """One try of the failover walk (:func:`cloudhop.spawner.failover.launch_first`):
    ``offer`` (the offer's key), ``state`` (``"launching"``, ``"failed"`` or
    ``"launched"``) and ``started`` (epoch seconds); a finished try has ``seconds``; a
    failed one the provider's ``reason``, ``error`` message and ``status_code``; a
    launched one the ``node`` id."""

    offer: str
    state: str
    started: float | None = None
    reason: str | None = None
    error: str | None = None
    status_code: int | None = None
    node: str | None = None
    seconds: float | None = None

    def to_dict(self) -> dict:
        """The entry of ``state["attempts"]``: the fields that are set (as the walk
        records them)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> "Attempt":
        """A record of the walk or an entry of ``state["attempts"]``; unknown keys are
        ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def check_version(state: dict, where: str = "a server") -> int | None:
    """The state's version (None for an empty state), or :class:`StateVersionError` when
    it is newer than :data:`STATE_VERSION` or not a whole number."""
    version = state.get("version")
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int) or version > STATE_VERSION:
        raise StateVersionError(version, where)
    return version


def server_nodes(state: dict, where: str = "a server") -> list[NodeRef]:
    """Every node one server's state says it owns: its ``nodes`` and the notebook
    ``node`` (listed twice when both name it). Raises :class:`StateVersionError` for a
    state this Cloudhop does not know, so a reader never acts on half of it."""
    check_version(state, where)
    refs = [NodeRef.from_dict(entry) for entry in state.get("nodes") or []]
    node = state.get("node") or {}
    if node.get("id"):
        refs.append(NodeRef(provider=node.get("provider"), id=node["id"], role=NOTEBOOK_ROLE,
                            region=node.get("region")))
    return refs


def kept_nodes(state: dict, where: str = "a server") -> list[NodeRef]:
    """The nodes a stop kept because their snapshot failed (``kept`` in the state, written
    by :mod:`.durable`): they outlive the stop, so a stopped server may list them too."""
    check_version(state, where)
    return [NodeRef.from_dict(ref) for entry in state.get("kept") or [] if isinstance(entry, dict)
            for ref in entry.get("nodes") or [] if isinstance(ref, dict)]
