"""``python -m cloudhop.spawner.ray.join --head=HOST:PORT [--timeout=S] [--loopback] -- start ...``:
a worker's ``ray start``, run once its head has registered.

A worker that joins while its head is still starting competes with it for the CPU and
can hit ``ray start``'s fixed 30 s registration timeout, so a worker first waits until
the head's GCS accepts connections and lists an alive node (the head's raylet). The
wait runs in the process that then runs Ray's CLI (``ray start`` itself, through
:mod:`.loopback` with ``--loopback``), so a worker imports Ray once, while its head
starts, and ``ray start`` begins the moment the head is seen: a separate waiter would
cost a second ``import ray`` (about 2 s of CPU, on the head's machine on the local
provider) and put that import between the head's registration and the worker's join.

Exits with :data:`HEAD_NEVER_ANSWERED` when the head is not seen within ``--timeout``
seconds; otherwise as Ray's CLI does. Logs phase ``head_seen`` (:func:`.node.phase`).
"""

from __future__ import annotations

import argparse
import sys
import time

from .node import HeadWatch, log, phase, wait_for_port
from .ports import LAYOUT

#: exit code when the head never registered within the timeout
HEAD_NEVER_ANSWERED = 4
#: seconds between two looks at a head that is not up yet (each a TCP connect, then one
#: GCS call: cheap for a starting head)
POLL = 0.5
#: seconds after the head's GCS answers that a worker waits for its raylet's port before
#: asking the GCS anyway
RAYLET_WAIT = 30.0


def raylet_address(address: str) -> str:
    """The head's raylet (node manager) address: the port after its GCS port in the
    head's port block (:data:`.ports.LAYOUT`)."""
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + LAYOUT['node_manager_port'] - LAYOUT['port']}"


def wait_for_head(address: str, timeout: float, poll: float = POLL, raylet_wait: float = RAYLET_WAIT) -> bool:
    """True once the GCS at ``address`` lists an alive node, False after ``timeout`` s.

    Ray is imported (for the GCS call, about half a CPU-second) only once the head's
    raylet port answers too, or ``raylet_wait`` s after its GCS did (a head laid out
    otherwise): the raylet is among the last things a head starts, so the import no
    longer competes with the head's own start-up, which matters where the worker shares
    the head's machine (the local provider)."""
    deadline = time.monotonic() + timeout
    watch = HeadWatch(address)
    gcs_seen = None
    while True:
        left = deadline - time.monotonic()
        if gcs_seen is None and wait_for_port(address, max(0.1, min(1.0, left))):
            gcs_seen = time.monotonic()
        if gcs_seen is not None:
            raylet_up = time.monotonic() - gcs_seen >= raylet_wait or wait_for_port(raylet_address(address), 0.1)
            if raylet_up and watch.registered(2):
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m cloudhop.spawner.ray.join")
    p.add_argument("--head", required=True, help="the head's GCS address, host:port")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the head")
    p.add_argument("--loopback", action="store_true", help="run Ray's CLI through .loopback")
    p.add_argument("ray_args", nargs=argparse.REMAINDER, help="-- then `ray` arguments (start ...)")
    args = p.parse_args(argv)
    if args.ray_args and args.ray_args[0] == "--":
        args.ray_args = args.ray_args[1:]
    if not args.ray_args:
        p.error("give the `ray` arguments after --")
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.loopback:
        from .loopback import keep_loopback

        keep_loopback()  # before Ray's constants are read by anything else here
    if not wait_for_head(args.head, args.timeout):
        log(f"the head at {args.head} never answered in {args.timeout:g} s")
        return HEAD_NEVER_ANSWERED
    phase("head_seen")
    from ray.scripts.scripts import cli

    return cli.main(args=list(args.ray_args), prog_name="ray")


if __name__ == "__main__":
    sys.exit(main())
