"""The Ray head launcher: ``python -m cloudhop.spawner.ray.head --port-base=N [--loopback] -- CMD...``.

The notebook node's command when the server asks for a Ray cluster. It claims the
port block the hub chose (refusing one another Ray node holds), moves the cluster's
token from its environment into a private file (:func:`.auth.take_token`), starts
``ray start --head --block`` with every port pinned to that block and the dashboard on
loopback (``--loopback``, the local provider: every port on loopback), and runs ``CMD``
(``jupyterhub-singleuser ...``) beside it with:

* ``RAY_ADDRESS`` - the head's GCS on loopback, so ``ray.init()`` in a kernel is a
  driver on this cluster (no Ray Client);
* ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` - the cluster's token, which
  ``ray.init()`` and the dashboard proxy send (never the token itself);
* with ``--loopback``, :data:`.commands.LOCAL_ONLY_ENV`, so Ray in a kernel keeps
  ``127.0.0.1`` as the head's address;
* ``CLOUDHOP_RAY_DASHBOARD_PORT`` - for the server extension's dashboard proxy;
* ``CLOUDHOP_RAY_HEAD`` - the GCS address.

The notebook starts once the head has registered (at most :data:`HEAD_WAIT` seconds
later, so a slow head never holds the server past the hub's HTTP timeout): when the
server is ready, ``ray.init()`` in a first cell works, and the notebook's start-up does
not compete with the head's for the CPU. (Starting the notebook beside the head instead,
held back from answering until the head was up, was measured on 2 busy cores: the
head's ``ray start`` took 1.45x as long; docs/ray.md, "Speed".) When the notebook exits, or
the launcher gets SIGTERM (server stop), the head is stopped - only this head - and
the launcher exits with the notebook's code.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from .auth import take_token
from .commands import (
    ENV_ADDRESS, ENV_DASHBOARD_PORT, ENV_HEAD, LOCAL_ONLY_ENV, head_start_args, temp_dir_for, token_path_for,
)
from .node import PrivateRootError, RayNode, Signals, log, phase, private_root, remove_file, sweep_stale_temp_dirs
from .ports import PortBlock, PortsBusy, claim_block


#: times the head is started again after it exits with an error
HEAD_RESTARTS = 2
#: seconds the notebook waits for the head before starting without it (well under the
#: hub's http_timeout, which counts from the node's start)
HEAD_WAIT = 30.0


def enable_ray_extension(config_dir: str) -> str:
    """A Jupyter config folder enabling the server extension's Ray routes (status,
    resize, dashboard proxy), added to the notebook's JUPYTER_CONFIG_PATH; extension
    configs from every folder on the path are merged, so nothing else is switched off."""
    conf_d = os.path.join(config_dir, "jupyter_server_config.d")
    os.makedirs(conf_d, exist_ok=True)
    with open(os.path.join(conf_d, "cloudhop-ray.json"), "w") as f:
        json.dump({"ServerApp": {"jpserver_extensions": {"cloudhop.extensions.ray_api": True}}}, f)
    return config_dir


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m cloudhop.spawner.ray.head")
    p.add_argument("--port-base", type=int, required=True, help="first port of the head's block")
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--loopback", action="store_true",
                   help="every Ray port on loopback (a cluster on this machine only)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the notebook command")
    args = p.parse_args(argv)
    if args.cmd and args.cmd[0] == "--":
        args.cmd = args.cmd[1:]
    if not args.cmd:
        p.error("give the notebook command after --")
    return args


def main(argv=None) -> int:
    phase("launcher")
    args = parse_args(argv)
    signals = Signals()
    try:
        root = private_root()
        lock = claim_block(args.port_base)
    except (PortsBusy, PrivateRootError) as err:
        log(f"cannot start the Ray head: {err}")
        return 3
    sweep_stale_temp_dirs(root)
    block = PortBlock(args.port_base)
    temp_dir = temp_dir_for(block.base, root)
    # Ray, the notebook and its kernels inherit the token's path, never the token
    token_file = take_token(os.environ, token_path_for(temp_dir))
    if token_file is None:
        log("no cluster token in the environment: this head accepts callers without one")
    head = RayNode(head_start_args(block, temp_dir=temp_dir, num_cpus=args.num_cpus, loopback=args.loopback),
                   temp_dir, loopback=args.loopback)
    head.start()
    env = dict(os.environ, **(LOCAL_ONLY_ENV if args.loopback else {}))
    env[ENV_ADDRESS] = env[ENV_HEAD] = f"127.0.0.1:{block.port}"
    env[ENV_DASHBOARD_PORT] = str(block.dashboard_port)
    env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(
        p for p in (enable_ray_extension(temp_dir + "-jupyter"), env.get("JUPYTER_CONFIG_PATH")) if p)
    notebook: subprocess.Popen | None = None
    wait_until = time.monotonic() + HEAD_WAIT
    code = None
    head_reported, restarts = False, 0
    try:
        while signals.received is None:
            if notebook is None and (head_reported or head.started.is_set()
                                     or time.monotonic() > wait_until):
                # the server is ready only with its head: ray.init() in a first cell works
                log("starting the notebook server" + ("" if head_reported else " (the Ray head is up)"))
                notebook = subprocess.Popen(args.cmd, env=env)
                phase("server_process")
            code = notebook.poll() if notebook else None
            if code is not None:
                break
            if not head_reported and head.poll() is not None:
                if restarts < HEAD_RESTARTS:
                    # `ray start` gives up after 30 s on an overloaded machine; retry
                    restarts += 1
                    log(f"the Ray head exited with code {head.poll()}; starting it again "
                        f"({restarts}/{HEAD_RESTARTS})")
                    head.stop()
                    head.start()
                    continue
                # keep the notebook: the user's work matters more than the cluster
                log(f"the Ray head exited with code {head.poll()}; the notebook keeps running")
                head_reported = True
            time.sleep(0.2)
    finally:
        if code is None and notebook is not None:
            notebook.send_signal(signal.SIGTERM)
        head.stop()
        if code is None and notebook is not None:
            try:
                code = notebook.wait(timeout=10)
            except subprocess.TimeoutExpired:
                notebook.kill()
                code = notebook.wait()
        shutil.rmtree(temp_dir + "-jupyter", ignore_errors=True)
        if token_file:
            remove_file(token_file)
        lock.release()
    if signals.received or not code:
        return 0
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
