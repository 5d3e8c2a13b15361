"""The spawner's Ray steps in the shape some tests call them: a function per step that
takes the spawner first. Each is one call into the spawner's
:class:`~cloudhop.spawner.ray.launcher.RayLauncher` (or the spawner's own method for
it), wired the way ``CloudhopSpawner`` wires it, so those tests exercise the real
launcher. New tests call the launcher directly (see test_ray_launcher.py).

A ``spawner`` here is a ``CloudhopSpawner``, or for the planning steps any object with
``provider(name)``."""

from __future__ import annotations

import weakref

from cloudhop.spawner.ray import WORKER_ROLE
from cloudhop.spawner.ray.launcher import RayLauncher

#: the notebook spec each spawner wrapped last, as the spawner keeps it between the
#: failover walk and starting the workers
_WRAPPED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _launcher(spawner) -> RayLauncher:
    return getattr(spawner, "ray_launcher", None) or RayLauncher(spawner.provider)


def wants_ray(spawner, request, provider: str) -> bool:
    return _launcher(spawner).wants_ray(request, provider)


def wrap_notebook_spec(spawner, spec, request):
    wrapped = _launcher(spawner).wrap_notebook_spec(spec, request)
    _WRAPPED[spawner] = wrapped
    return wrapped.spec


def filter_plan(spawner, request, ranked, offers):
    return _launcher(spawner).filter_plan(request, ranked, offers)


async def start_workers(spawner, request, offer, node, offers, spawn_id: str) -> None:
    await spawner.ray_launcher.start_workers(request, offer, node, offers, spawn_id,
                                             head=_WRAPPED.get(spawner), tags=spawner.tags(WORKER_ROLE))


async def resize(spawner, workers) -> dict:
    return await spawner.resize_ray(workers)


def _sync_nodes(spawner) -> None:
    spawner._ray_changed()


def save_state(spawner, state: dict) -> None:
    ray = spawner.ray_launcher.to_state()
    if ray is not None:
        state["ray"] = ray


def load_state(spawner, state: dict) -> None:
    spawner.ray_launcher.load_state(state.get("ray"), tags=spawner.tags(WORKER_ROLE))
