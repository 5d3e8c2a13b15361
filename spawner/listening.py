"""Waiting for a starting server's port, so the hub sees it ready the moment it is.

JupyterHub's own readiness check (``Server.wait_up``, after ``Spawner.start`` returns)
tries the server's URL with an exponential backoff: waits of 0.2, 0.4, 0.8 ... up to 5 s
between tries, with jitter. A server that starts listening just after a try waits
until the next one: measured on a Ray head's server, 2.7 s (median) between the server
listening and the hub calling it ready. :func:`wait_listening` probes the port itself,
a TCP connect every ``every`` seconds (default 0.1 s: a refused connect costs the hub
tens of microseconds), and the spawner returns from ``start`` once it succeeds, so
JupyterHub's first check answers.

It never makes a spawn fail where it would not have failed before: it gives up
silently while ``start_timeout`` still leaves JupyterHub time (the server is then
checked by JupyterHub, as before), and fails only once ``http_timeout`` has passed,
where JupyterHub's own check would have failed too, with a message naming the node and
port.
"""

from __future__ import annotations

import asyncio
import time

from jupyterhub.spawner import SpawnException

#: seconds a connect attempt may take (a VM whose network is still coming up drops it)
CONNECT_TIMEOUT = 1.0


async def listening(host: str, port: int) -> bool:
    """Whether ``host:port`` accepts a TCP connection now."""
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


async def wait_listening(host: str, port: int, *, every: float, listen_timeout: float,
                         give_up_at: float | None = None, node: str = "") -> bool:
    """Wait until ``host:port`` accepts a TCP connection; True once it does.

    ``listen_timeout``: seconds after which nothing listening is an error
    (``SpawnException``, reason ``server-timeout``). ``give_up_at``: a
    ``time.monotonic()`` after which the wait stops without an error and returns False
    (the spawn's own time limit is near: JupyterHub's check takes over)."""
    deadline = time.monotonic() + listen_timeout
    while True:
        if await listening(host, port):
            return True
        now = time.monotonic()
        if give_up_at is not None and now + every >= give_up_at:
            return False
        if now + every >= deadline:
            raise SpawnException(
                f"The server on node {node or host} did not open port {port} within {listen_timeout:.0f} s "
                "(c.Spawner.http_timeout); the node's log says why", reason="server-timeout", status_code=500)
        await asyncio.sleep(every)
