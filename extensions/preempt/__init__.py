"""Spot preemption rescue, the server's half: an agent beside the notebook server that
watches the cloud's interruption notice and, within the notice window, snapshots the
server and asks the hub to relaunch it elsewhere (docs/durability.md, "Spot
preemption").

* :mod:`.watchers` - one watcher per cloud, reading the instance's metadata endpoint
  (AWS, GCP, OCI);
* :mod:`.agent` - the notice -> snapshot -> hub sequence, once per server.

The server extension calls :func:`start_agent` when it loads; the agent runs only on a
spot/preemptible node (the hub sets ``CLOUDHOP_SPOT=1`` for a spot request) of a cloud
that has a watcher. Its settings are environment variables, so an operator sets them
for every server with ``c.Spawner.environment``:

``CLOUDHOP_METADATA_URL``
    the metadata endpoint (default: the cloud's own, :data:`.watchers.DEFAULT_URLS`);
``CLOUDHOP_PREEMPT_CLOUD``
    which cloud's notice to watch (default: ``CLOUDHOP_PROVIDER``, the server's provider);
``CLOUDHOP_PREEMPT_INTERVAL``
    seconds between polls (default 5; GCP's values are held open instead).
"""

from __future__ import annotations

import asyncio
import logging
import os

from .agent import Agent
from .watchers import DEFAULT_INTERVAL, Notice, Watcher, watcher_for

__all__ = ["Agent", "Notice", "Watcher", "start_agent", "watcher_for"]

log = logging.getLogger("cloudhop.preempt")
_tasks: set = set()


def agent_for(hibernator, hub, env=os.environ) -> Agent | None:
    """The agent of this server, or None when it needs none (not spot, a provider
    without notices, no hub). ``hibernator`` takes the snapshot
    (:class:`~cloudhop.extensions.hibernate.Hibernator`)."""
    if env.get("CLOUDHOP_SPOT") != "1" or not hub.configured:
        return None
    cloud = env.get("CLOUDHOP_PREEMPT_CLOUD") or env.get("CLOUDHOP_PROVIDER") or ""
    try:
        interval = float(env.get("CLOUDHOP_PREEMPT_INTERVAL") or DEFAULT_INTERVAL)
    except ValueError:
        log.error("Cloudhop: CLOUDHOP_PREEMPT_INTERVAL must be a number of seconds, not %r; using %s",
                  env.get("CLOUDHOP_PREEMPT_INTERVAL"), DEFAULT_INTERVAL)
        interval = DEFAULT_INTERVAL
    watcher = watcher_for(cloud, env.get("CLOUDHOP_METADATA_URL") or None, max(interval, 0.05))
    if watcher is None:
        return None

    async def snapshot(notice: Notice) -> dict:
        return await hibernator.take(reason="preempt", kind="preempt", extra_meta={"notice": notice.to_json()})

    return Agent(watcher, snapshot, hub)


def start_agent(serverapp, hibernator, hub, env=os.environ) -> Agent | None:
    """Start this server's agent on its event loop (see :func:`agent_for`)."""
    agent = agent_for(hibernator, hub, env)
    if agent is None:
        return None

    def begin():
        task = asyncio.ensure_future(agent.run())
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    serverapp.io_loop.add_callback(begin)
    serverapp.log.info("Cloudhop: watching the %s spot interruption notice at %s", agent.watcher.cloud,
                       agent.watcher.url)
    return agent
