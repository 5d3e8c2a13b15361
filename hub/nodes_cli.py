"""``cloudhop nodes``: the nodes stops kept because their snapshot failed, and what
becomes of them (docs/durability.md, "Kept nodes").

::

    cloudhop nodes list
    cloudhop nodes terminate ID --retry      snapshot it through its own server, then terminate it
    cloudhop nodes terminate ID --discard    terminate it without a snapshot: what only it held is gone

It asks the running hub (``--url``, default http://127.0.0.1:8000) with an admin's token
(``$JUPYTERHUB_API_TOKEN``, or ``--token-file``; make one on the hub's Token page), through
``/hub/api/cloudhop/kept`` (:mod:`.kept_api`).
"""

from __future__ import annotations

import argparse
import os
import sys

from .cli import plain


def add_parser(sub) -> None:
    p = sub.add_parser("nodes", help="list the nodes stops kept, retry their snapshot or discard them",
                       description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("list", "terminate"), help="list kept nodes, or terminate one")
    p.add_argument("node", nargs="?", metavar="ID", help="the kept node to terminate")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--retry", action="store_true", help="snapshot the node first; it stays kept if that fails")
    how.add_argument("--discard", action="store_true", help="terminate without a snapshot")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the hub's URL (default: %(default)s)")
    p.add_argument("--token-file", metavar="FILE", help="a file holding an admin's API token "
                   "(default: $JUPYTERHUB_API_TOKEN)")
    p.set_defaults(func=run)


def _token(args) -> str:
    if args.token_file:
        with open(args.token_file) as f:
            return f.read().strip()
    token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if not token:
        raise ValueError("--token-file: give an admin's API token, or set $JUPYTERHUB_API_TOKEN")
    return token


def run(args) -> int:
    import requests

    try:
        if args.action == "terminate" and not args.node:
            raise ValueError("ID: name the kept node to terminate (cloudhop nodes list shows them)")
        if args.action == "terminate" and not (args.retry or args.discard):
            raise ValueError("--discard or --retry: say whether to snapshot the node first")
        headers = {"Authorization": f"token {_token(args)}"}
    except (ValueError, OSError) as err:
        print(f"cloudhop nodes: {err}", file=sys.stderr)
        return 2
    base = args.url.rstrip("/") + "/hub/api/cloudhop/kept"
    try:
        if args.action == "list":
            r = requests.get(base, headers=headers, timeout=60)
        else:
            r = requests.post(f"{base}/{args.node}", headers=headers, timeout=3600,
                              json={"action": "retry" if args.retry else "discard"})
    except requests.RequestException as err:
        print(f"cloudhop nodes: the hub at {args.url} did not answer ({type(err).__name__})", file=sys.stderr)
        return 1
    if r.status_code >= 400:
        try:
            message = r.json().get("message") or r.reason
        except ValueError:
            message = r.reason
        print(f"cloudhop nodes: {r.status_code} {message}", file=sys.stderr)
        return 1
    data = r.json()
    if args.action == "list":
        for k in data["kept"]:
            print(f"{k['node']}\t{k['provider']}/{k.get('region') or '-'}\t{k['user']}/{k['server'] or '(default)'}"
                  f"\t{k['reason']}")
        if not data["kept"]:
            print("no kept nodes")
    elif "snapshot" in data:
        print(f"{data['node']}: snapshot {data['snapshot']} taken, node terminated")
    else:
        print(f"{data['node']}: terminated without a snapshot")
    return 0
