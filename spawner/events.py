"""What the spawner announces as it works, for whoever listens in the hub process (the
hub's metrics, :mod:`cloudhop.hub.metrics`), so the spawner needs no hub import.

Events (keyword fields):

* ``"attempt"``: one finished try of the failover walk: ``provider``, ``outcome``
  (``"launched"`` or ``"failed"``), ``reason`` (the provider's, for a failure),
  ``seconds`` (the launch call);
* ``"spawn"``: a spawn ended: ``provider`` (of the offer that launched, ``"none"`` when
  none did), ``status`` (``"ready"``, ``"refused"`` or ``"failed"``), ``seconds`` (from
  the start to a node that serves, or to the failure).

A listener that raises is logged and skipped; it never fails a spawn.
"""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger("cloudhop.events")
_listeners: list[Callable[..., None]] = []


def listen(fn: Callable[..., None]) -> None:
    """Call ``fn(kind, **fields)`` for every event from now on (once, however often
    it is added)."""
    if fn not in _listeners:
        _listeners.append(fn)


def announce(kind: str, **fields) -> None:
    """Tell every listener about an event."""
    for fn in list(_listeners):
        try:
            fn(kind, **fields)
        except Exception as err:  # noqa: BLE001 - bookkeeping never fails a spawn
            log.warning("A listener of %s events failed: %s", kind, err)
