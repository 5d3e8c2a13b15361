"""``cloudhop up``: JupyterHub in the foreground with the embedded defaults.

The defaults (:mod:`cloudhop.hub.embedded_config`) put every piece of state under one
data folder, private to the user (SQLite, cookie secret, a random hub id, the shared
password, the internal ports picked at the first start, local workspaces), keep user
servers running across hub restarts, allow named servers, and use the Cloudhop spawner
on the local provider with JupyterHub's shared-password authenticator (a generated
password, printed at start-up; the OS user is the admin). ``--config FILE`` is loaded
after the defaults, so an operator can override any of them, or add to Cloudhop's
services and roles with ``c.JupyterHub.services.append(...)``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from pathlib import Path

import platformdirs

from .cli import plain
from .workshop import ENV as WORKSHOP_ENV

EMBEDDED_CONFIG = Path(__file__).with_name("embedded_config.py")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "up",
        help="run JupyterHub with the embedded defaults (local provider, no cloud account needed)",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ip", type=_ip, default="127.0.0.1", help="address the hub's public proxy listens on (default: %(default)s)")
    p.add_argument("--port", type=_port, default=8000, help="port of the public proxy (default: %(default)s)")
    p.add_argument(
        "--data-dir", default=None,
        help=f"folder for all state: database, secrets, workspaces (default: {default_data_dir()})",
    )
    p.add_argument("--config", default=None, metavar="FILE", help="an extra JupyterHub config file loaded after the defaults")
    p.add_argument(
        "--cull-idle", type=_minutes, default=0, metavar="MINUTES",
        help="stop servers (and their nodes and Ray workers) idle this many minutes; 0: never (default)",
    )
    p.add_argument(
        "--workshop", type=_workshop, default=None, metavar="students=N,gpu=share:K|mig|whole|none",
        help="set up a class: a students group with N seats and its policy, GPU slices, the idle "
        "culler at 30 minutes (cull=MINUTES), the instructor's page (docs/teaching.md)",
    )
    p.add_argument("--debug", action="store_true", help="verbose logs")
    p.set_defaults(func=run)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--port must be a number from 1 to 65535, not {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"--port must be from 1 to 65535, not {value}")
    return value


def _minutes(text: str) -> int:
    if not re.fullmatch(r"\d{1,6}", text.strip()):
        raise argparse.ArgumentTypeError(f"--cull-idle must be a whole number of minutes (0: never), not {text!r}")
    return int(text)


def _workshop(text: str):
    from .workshop import WorkshopError, parse

    try:
        return parse(text)
    except WorkshopError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--workshop: ")) from None


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if text == "" or re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", text):
        return text
    raise argparse.ArgumentTypeError(f"--ip must be an IP address or host name, not {text!r}")


def default_data_dir() -> str:
    return platformdirs.user_data_dir("cloudhop")


def run(args) -> int:
    data_dir = Path(args.data_dir or default_data_dir()).expanduser().resolve()
    if data_dir.exists() and not data_dir.is_dir():
        print(f"cloudhop up: --data-dir {data_dir} is not a folder", file=sys.stderr)
        return 2
    if args.config and not Path(args.config).is_file():
        print(f"cloudhop up: --config {args.config} does not exist", file=sys.stderr)
        return 2
    from cloudhop.hub.datadir import DataDirError, prepare

    try:
        prepare(data_dir)  # mode 0700, its secrets and database 0600
    except DataDirError as err:
        print(f"cloudhop up: --data-dir {err}", file=sys.stderr)
        return 2
    os.environ.update({
        "CLOUDHOP_DATA_DIR": str(data_dir),
        "CLOUDHOP_IP": args.ip,
        "CLOUDHOP_PORT": str(args.port),
        "CLOUDHOP_EXTRA_CONFIG": str(Path(args.config).resolve()) if args.config else "",
        "CLOUDHOP_CULL_IDLE": str((args.cull_idle or (args.workshop.cull_minutes if args.workshop else 0)) * 60),
        WORKSHOP_ENV: args.workshop.to_env() if args.workshop else "",
    })
    from cloudhop.hub.app import CloudhopHub

    argv = ["-f", str(EMBEDDED_CONFIG)]
    if args.debug:
        argv.append("--debug")
    os.chdir(data_dir)  # nothing of the caller's folder (a stray jupyterhub_config.py) leaks in
    CloudhopHub.launch_instance(argv)
    return 0
