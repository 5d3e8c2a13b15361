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

#: exit code when the head never registered within the timeout
HEAD_NEVER_ANSWERED = 4
#: seconds between two looks at a head that is not up yet (each a TCP connect, then one
#: GCS call: cheap for a starting head)
POLL = 0.5


def wait_for_head(address: str, timeout: float, poll: float = POLL) -> bool:
    """True once the GCS at ``address`` lists an alive node, False after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    watch = HeadWatch(address)
    while True:
        left = deadline - time.monotonic()
        if wait_for_port(address, max(0.1, min(1.0, left))) and watch.registered(2):
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
