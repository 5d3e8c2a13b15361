"""``python -m cloudhop.spawner.ray.loopback start ...``: ``ray start`` for a Ray node
that must be reachable from this machine only (the local provider).

Ray binds its gRPC servers (GCS, raylet, object manager, worker processes) to loopback
only when the node's address is loopback, and its agents, client server and metrics to
the node's address. But ``ray start`` and ``ray.init`` turn ``127.0.0.1`` into the
machine's routable address (``ray._private.services.resolve_ip_for_localhost``), unless
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's "this machine only" switch, which makes
loopback the node address) - and with that switch ``ray start --address`` refuses to
join a head. So this wrapper, for the ``ray start`` process only:

* keeps a loopback address as given (``--node-ip-address=127.0.0.1``, the head's
  ``127.0.0.1:<port>``), and
* sets the switch for every process Ray starts (raylet, agents, dashboard, workers), so
  they, too, take loopback as the node's address.

The notebook server and its kernels get the switch from the head launcher
(:data:`.commands.LOCAL_ONLY_ENV`), so ``ray.init()`` there connects to ``127.0.0.1``.
"""

from __future__ import annotations

import os
import sys

from .commands import LOCAL_ONLY_ENV


def keep_loopback() -> None:
    """Make ``ray start`` in this process keep loopback addresses (see the module
    docstring); the processes it starts inherit :data:`.commands.LOCAL_ONLY_ENV`."""
    from ray._private import services
    from ray._raylet import is_localhost

    resolve = services.resolve_ip_for_localhost
    if getattr(resolve, "keeps_loopback", False):
        return

    def resolve_keeping_loopback(host: str) -> str:
        return host if host and is_localhost(host) else resolve(host)

    resolve_keeping_loopback.keeps_loopback = True
    services.resolve_ip_for_localhost = resolve_keeping_loopback
    # after Ray read its constants: this process may still join a head
    os.environ.update(LOCAL_ONLY_ENV)


def main(argv=None) -> int:
    keep_loopback()
    from ray.scripts.scripts import cli

    return cli.main(args=list(sys.argv[1:] if argv is None else argv), prog_name="ray")


if __name__ == "__main__":
    sys.exit(main())
