"""The Ray worker launcher: ``python -m cloudhop.spawner.ray.worker --address=HEAD ...``.

A worker node's command. It claims a port block (``--ports=auto``, on a machine shared
with other Ray nodes) or uses the fixed block (``--ports=6379``, a VM), moves the
cluster's token from its environment into a private file (:func:`.auth.take_token`),
and runs ``ray start --address=HEAD --block`` with the GPU count and resources it was
given (``--loopback``, the local provider: every port on loopback) through
:mod:`.join`, which starts Ray's CLI once the head's GCS has registered (the notebook
node and its workers boot together). It exits when Ray does. SIGTERM stops this Ray
node only.

The launcher itself never imports Ray (or anything of the hub): :mod:`.join`'s process
is the only one here that does, and it then is ``ray start``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .auth import take_token
from .commands import temp_dir_for, token_path_for, worker_start_args
from .join import HEAD_NEVER_ANSWERED
from .node import PrivateRootError, RayNode, Signals, log, phase, private_root, remove_file, sweep_stale_temp_dirs
from .ports import BLOCK_SIZE, PortBlock, PortsBusy, candidate_bases, claim_block, claim_free_block


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m cloudhop.spawner.ray.worker")
    p.add_argument("--address", required=True, help="the head's GCS address, host:port")
    p.add_argument("--num-gpus", type=int, default=0)
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--resources", default="{}", help="JSON of custom resources")
    p.add_argument("--ports", default="auto", help="'auto' (claim a free block) or a block base")
    p.add_argument("--loopback", action="store_true",
                   help="every Ray port on loopback (a cluster on this machine only)")
    p.add_argument("--restarts", type=int, default=2,
                   help="times to start Ray again after it exits with an error")
    p.add_argument("--head-timeout", type=float, default=600.0,
                   help="seconds to wait for the head before giving up")
    return p.parse_args(argv)


def main(argv=None) -> int:
    phase("launcher")
    args = parse_args(argv)
    signals = Signals()
    try:
        root = private_root()
    except PrivateRootError as err:
        log(f"cannot start: {err}")
        return 3
    try:
        # never the head's block: the head's launcher may not have claimed it yet
        head_port = int(args.address.rpartition(":")[2])
        bases = [b for b in candidate_bases() if not b <= head_port < b + BLOCK_SIZE]
        lock = claim_free_block(bases=bases) if args.ports == "auto" else None
    except PortsBusy as err:
        log(f"cannot start: {err}")
        return 3
    block = lock.block if lock else PortBlock(int(args.ports))
    if lock is None and args.ports != "auto":
        try:  # on a VM nothing else holds it; on a shared machine this refuses a clash
            lock = claim_block(block.base)
        except PortsBusy as err:
            log(f"cannot start: {err}")
            return 3
    sweep_stale_temp_dirs(root)
    temp_dir = temp_dir_for(block.base, root)
    # before any Ray client here (the head watch): it sends the token from the file
    token_file = take_token(os.environ, token_path_for(temp_dir))
    log(f"joining the head at {args.address} once it has registered")
    node = RayNode(
        worker_start_args(args.address, block, temp_dir=temp_dir, num_gpus=args.num_gpus,
                          num_cpus=args.num_cpus, resources=json.loads(args.resources),
                          loopback=args.loopback),
        temp_dir=temp_dir, loopback=args.loopback, after_head=args.address, head_timeout=args.head_timeout,
    )
    node.start()
    code, restarts = 0, 0
    try:
        while signals.received is None:
            code = node.poll()
            if code == HEAD_NEVER_ANSWERED and not node.started.is_set():
                log("the head never answered; not starting Ray")
                break
            if code is not None:
                # `ray start` gives up after 30 s when the machine is overloaded; a retry
                # usually joins. Past the allowance, the worker is reported dead.
                if restarts >= args.restarts:
                    log(f"ray exited with code {code}; not restarting it again")
                    break
                restarts += 1
                log(f"ray exited with code {code}; starting it again ({restarts}/{args.restarts})")
                node.stop()
                node.start()
            time.sleep(0.5)
    finally:
        node.stop()
        if token_file:
            remove_file(token_file)
        lock.release()
    # Ray ending on its own means this worker is gone: say so with a non-zero code
    return 0 if signals.received else (code or 1)


if __name__ == "__main__":
    sys.exit(main())
