"""A user's totals across servers, for the policy rules that count them all.

``max_servers``, ``max_gpus``, ``max_price_hour`` and ``budget`` (:mod:`.policy`) are
checked against everything the user already runs: each server's notebook node and Ray
workers, running or still starting. :class:`Usage` is such a total; each
:class:`~.spawner.CloudhopSpawner` reports its own (``usage()``) and
:func:`usage_of` adds up a user's. :func:`user_lock` is the per-user lock under which a
spawn, a move's target or a Ray resize is checked and holds it until its new nodes are
recorded, so two of them started at once are checked one after the other and cannot
both pass. It has no dependency on the rest of the spawner, so :mod:`.policy` imports it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class Usage:
    """What servers hold: how many, their GPUs (Ray workers included) and their price in
    USD/hour (a part whose price is unknown counts as free)."""

    servers: int = 0
    gpus: int = 0
    price_hour: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.servers + other.servers, self.gpus + other.gpus,
                     round(self.price_hour + other.price_hour, 6))

    @classmethod
    def of_server(cls, request, price_hour: float | None) -> Usage:
        """One server running ``request`` (a :class:`~.options.LaunchRequest`) at
        ``price_hour``."""
        return cls(1, request_gpus(request), float(price_hour or 0.0))


#: what a user with no other server holds (the default of the checks' ``others``)
NOTHING = Usage()


def request_gpus(request) -> int:
    """GPUs of a whole server: the notebook's plus every Ray worker's."""
    ray = request.ray
    return request.gpu_count + (ray.workers * ray.gpu_count if ray else 0)


def usage_of(user, exclude=None, replacing=None) -> Usage:
    """What ``user``'s servers hold together, but ``exclude`` (the spawner being
    checked). Only spawners that report a usage count (JupyterHub's ``user.spawners``:
    every server the hub has loaded, which includes each running or pending one).

    ``replacing`` is the spawner of a server that the checked one replaces (a move's
    source, while its move is in flight): it does not count as a server (``max_servers``),
    since one of the two stops when the move ends, but its GPUs and price do, since both
    run (and cost) meanwhile. The move's end is bounded: the move reconciler ends a move
    that has not finished by its expiry (:mod:`cloudhop.hub.move_reconciler`)."""
    total = NOTHING
    for spawner in list((getattr(user, "spawners", None) or {}).values()):
        usage = getattr(spawner, "usage", None)
        if spawner is not exclude and callable(usage):
            held = usage()
            if spawner is replacing and held.servers:
                held = Usage(held.servers - 1, held.gpus, held.price_hour)
            total = total + held
    return total


def user_lock(user) -> asyncio.Lock:
    """The lock of ``user`` (kept on JupyterHub's user object, which the hub keeps one
    of per user and which every spawner of that user shares)."""
    lock = getattr(user, "_cloudhop_limits_lock", None)
    if lock is None:
        lock = asyncio.Lock()
        user._cloudhop_limits_lock = lock
    return lock
