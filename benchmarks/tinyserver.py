"""A tiny single-user server for measuring the hub, not JupyterLab.

It listens where JupyterHub tells a single-user server to (``JUPYTERHUB_SERVICE_URL``,
else ``--port``/``--ip`` arguments, else 127.0.0.1:8888) and answers every GET with
``200 {"tiny": true}``, which is all JupyterHub's readiness check needs. Every other
argument is ignored, so the same command line serves any spawner:

    c.Spawner.cmd = [sys.executable, "/path/to/benchmarks/tinyserver.py"]

(on Cloudhop's local provider too: it runs ``c.Spawner.cmd``). Standard library only,
so it starts in tens of milliseconds and holds a few MiB. It exits on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from urllib.parse import urlsplit

BODY = b'{"tiny": true}'


def address(argv: list[str], env: dict) -> tuple[str, int]:
    """The (host, port) to listen on: the service URL's, else ``--ip``/``--port``."""
    url = env.get("JUPYTERHUB_SERVICE_URL")
    if url:
        parts = urlsplit(url)
        return parts.hostname or "127.0.0.1", parts.port or 8888
    opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    return opts.get("ip") or "127.0.0.1", int(opts.get("port", 8888))


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One HTTP/1.1 request -> 200 with a small JSON body; the connection then closes."""
    try:
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass  # the request line and headers: every request gets the same answer
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(BODY), BODY))
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def serve(host: str, port: int) -> None:
    server = await asyncio.start_server(answer, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    host, port = address(sys.argv[1:] if argv is None else argv, dict(os.environ))
    asyncio.run(serve(host, port))


if __name__ == "__main__":
    main()
