"""The spawner's side of a launch timeline (:mod:`.timeline`): marking a phase (a
progress event, and the state written when the phase comes from outside the spawn), the
steps a node's bootstrap reports, and the probe for the server's first answer.

A spawner has ``timeline`` (a :class:`.timeline.Timeline`, or None: a local launch has
none), ``_progress`` and ``_save_state``; these functions do nothing without a timeline.
"""

from __future__ import annotations

import asyncio
import time

from .timeline import BOOTSTRAP_STEPS

#: seconds between two probes of a cloud server that does not answer yet
PROBE_EVERY = 2.0


def mark(spawner, phase: str, save: bool = False) -> bool:
    """Mark ``phase`` on the spawner's timeline and show it on the progress page; with
    ``save``, write the state at once. False when there is no timeline or the phase was
    marked already."""
    timeline = getattr(spawner, "timeline", None)
    if timeline is None:
        return False
    line = timeline.mark(phase)
    if line is None:
        return False
    spawner._progress(line)
    if save:
        spawner._save_state()
    return True


def node_step(spawner, step) -> bool:
    """A bootstrap step the node reports (``driver``, ``image``, ``server``). Raises
    ValueError naming the field for another value; False when the server has no
    timeline (a local server) or had this step already."""
    if step not in BOOTSTRAP_STEPS:
        raise ValueError(f"step: must be one of {', '.join(BOOTSTRAP_STEPS)}")
    return mark(spawner, step, save=True)


def watch_first_answer(spawner, url: str, timeout: float) -> None:
    """Probe ``url`` in the background until the server answers HTTP (any status) or
    ``timeout`` passes, then mark ``first_answer``. A stop cancels it (:func:`stop_watching`)."""
    if getattr(spawner, "timeline", None) is None:
        return
    stop_watching(spawner)
    spawner._answer_probe = asyncio.ensure_future(_probe(spawner, url, timeout))


def stop_watching(spawner) -> None:
    probe = getattr(spawner, "_answer_probe", None)
    if probe is not None and not probe.done():
        probe.cancel()
    spawner._answer_probe = None


async def _probe(spawner, url: str, timeout: float) -> None:
    from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            await AsyncHTTPClient().fetch(HTTPRequest(url, request_timeout=5, follow_redirects=False),
                                          raise_error=False)
        except (OSError, HTTPClientError):  # nothing listens yet, or it timed out (599)
            pass
        else:
            mark(spawner, "first_answer", save=True)
            return
        await asyncio.sleep(PROBE_EVERY)
