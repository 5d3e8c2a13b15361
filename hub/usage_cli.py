"""``cloudhop usage``: what users spent, read from the hub's spend ledger.

    cloudhop usage                      # every user this month, most spent first
    cloudhop usage --user ada           # ada's servers
    cloudhop usage --group students     # the members' spend counted for a group
    cloudhop usage --since 2026-11-01 --csv

The ledger is the file ``ledger.sqlite`` in the hub's data folder (``--data-dir``, as
for ``cloudhop up``; ``--ledger`` names another file); the command reads it, so it runs
on the hub's machine as the hub's user, whether the hub runs or not. Running servers
count up to now. Budgets and their state are in the hub's usage API
(``GET /hub/api/cloudhop/usage/{user}``). A bad flag value exits with status 2 and a
message naming the flag.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from cloudhop.spawner.ledger import Ledger, LedgerError

from .cli import plain
from .usage_api import parse_since


def add_parser(sub) -> None:
    p = sub.add_parser("usage", help="show what users and groups spent (the spend ledger)",
                       description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--user", metavar="U", help="one user's spend, per server")
    p.add_argument("--group", metavar="G", help="the spend counted for a group, per member")
    p.add_argument("--since", metavar="WHEN", help="ISO 8601 date or time (UTC); default: the start of this month")
    p.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    p.add_argument("--data-dir", metavar="DIR", help="the hub's data folder (as for cloudhop up)")
    p.add_argument("--ledger", metavar="FILE", help="the ledger file (default: ledger.sqlite in the data folder)")
    p.set_defaults(func=run)


def ledger_path(args) -> Path:
    if args.ledger:
        return Path(args.ledger).expanduser()
    from .up import default_data_dir

    return Path(args.data_dir or default_data_dir()).expanduser() / "ledger.sqlite"


def rows(ledger: Ledger, args, since) -> tuple[list[str], list[tuple]]:
    """The header and the rows the flags ask for, most spent first."""
    if args.user and args.group:
        raise ValueError("--group: give --user or --group, not both")
    if args.user:
        spend, head = ledger.by_server(args.user, since=since), ["server", "usd"]
        return head, [(k or "(default)", v) for k, v in sorted(spend.items(), key=lambda kv: -kv[1])]
    spend = ledger.users_of_group(args.group, since=since) if args.group else ledger.by_user(since=since)
    return ["user", "usd"], sorted(spend.items(), key=lambda kv: -kv[1])


def run(args) -> int:
    try:
        since = parse_since(args.since)
    except ValueError as err:
        print(f"cloudhop usage: --{err}", file=sys.stderr)
        return 2
    path = ledger_path(args)
    if not path.is_file():
        print(f"cloudhop usage: --data-dir: no spend ledger at {path} (has the hub run there?)", file=sys.stderr)
        return 2
    ledger = Ledger(str(path))
    try:
        head, table = rows(ledger, args, since)
    except ValueError as err:
        print(f"cloudhop usage: {err}", file=sys.stderr)
        return 2
    except LedgerError as err:
        print(f"cloudhop usage: {err}", file=sys.stderr)
        return 1
    finally:
        ledger.close()
    total = sum(v for _, v in table)
    if args.csv:
        out = csv.writer(sys.stdout)
        out.writerow(head)
        out.writerows((k, f"{v:.4f}") for k, v in table)
        return 0
    what = f"user {args.user}" if args.user else f"group {args.group}" if args.group else "all users"
    print(f"Spend of {what} since {since:%Y-%m-%d %H:%M} UTC: ${total:.2f}")
    width = max([len(head[0])] + [len(str(k)) for k, _ in table])
    print(f"{head[0]:<{width}}  {'USD':>12}")
    for k, v in table:
        print(f"{k:<{width}}  {v:>12.2f}")
    return 0
