"""The budget watcher: stops a user's servers when their budget is spent.

Every ``c.CloudhopBudgets.interval`` seconds the hub (:class:`cloudhop.hub.app.CloudhopHub`
runs it as a periodic callback) looks at each user with a running server and asks the
group policy where they stand (:meth:`cloudhop.spawner.policy.Policy.budget_status`,
read from the spend ledger):

* at 100% of every budget that applies to them (a user is limited only when each of
  their groups has a budget: by the union rule, a group without one lets them run), each
  of their running servers is stopped through the hub's normal stop, the one an API
  DELETE takes (the route first, then ``user.stop``; a durable stop, so the workspace is
  kept). The reason goes to the hub's log and, as a notice in the ledger, to the Home
  page and the usage API. A server still starting is left to finish, and is stopped at
  the next pass;
* at 80% the user is warned: the Home page shows a banner and the server extension a
  JupyterLab notification (both read the same budget status).

Each pass reads the ledger once per user with a running server; those reads are short
enough to run on the hub's loop (``benchmarks/ledger.py``).
"""

from __future__ import annotations

import asyncio

from tornado.ioloop import PeriodicCallback
from traitlets import Float, validate
from traitlets.config import Configurable

from cloudhop.spawner.ledger import LedgerError
from cloudhop.spawner.spend import STOP_NOTICE
from cloudhop.spawner.validate import check_number



class CloudhopBudgets(Configurable):
    """How often the hub checks running servers against budgets (``c.CloudhopBudgets.*``)."""

    interval = Float(
        30.0, help="""Seconds between the hub's checks of running servers against their
        users' budgets; a server is stopped within about this long of its budget being
        spent.""",
    ).tag(config=True)

    @validate("interval")
    def _valid_interval(self, proposal):
        return check_number(proposal, minimum=0, strict=True)


def over_budget_message(status: dict) -> str:
    """The reason a user's servers are stopped, naming the budgets."""
    parts = [f"the ${b['usd']:.2f} budget of group {b['group']!r} this {b['period']} (spent ${b['spent']:.2f})"
             for b in status["budgets"]]
    return "stopped by the budget: " + "; ".join(parts) + " is used up; servers start again next period " \
           "or when an admin raises the budget"


def running_servers(user) -> list:
    """The user's servers that are up and not starting or stopping."""
    return [s for s in list(user.spawners.values())
            if s.active and s.ready and not s.pending and getattr(s, "policy", None) is not None]


async def stop_server(app, user, name: str) -> None:
    """Stop ``user``'s server ``name`` as the hub's API does: route first, then the spawner."""
    spawner = user.spawners[name]
    spawner._stop_pending = True
    try:
        await app.proxy.delete_user(user, name)
    except Exception as err:  # noqa: BLE001 - a stale route must not keep a server running
        app.log.warning("budget: removing the route of %s failed: %s", spawner._log_name, err)
    await user.stop(name)


async def check_once(app) -> list[tuple[str, str]]:
    """One pass over the users with running servers; returns ``(user, server)`` of each
    server it stopped."""
    stopped = []
    for user in list(app.users.values()):
        servers = running_servers(user)
        if not servers:
            continue
        first = servers[0]
        try:
            status = first.policy.budget_status(first.user_groups(), user.name)
        except LedgerError as err:
            app.log.error("budget: cannot read the spend of %s: %s", user.name, err)
            continue
        if not status["limited"] or status["fraction"] is None or status["fraction"] < 1.0:
            continue
        message = over_budget_message(status)
        for spawner in servers:
            app.log.warning("budget: stopping %s: %s", spawner._log_name, message)
            try:
                first.ledger.add_notice(user.name, spawner.name or "", STOP_NOTICE, message)
            except LedgerError as err:
                app.log.error("budget: could not keep the reason for %s: %s", spawner._log_name, err)
            try:
                await stop_server(app, user, spawner.name or "")
            except Exception as err:  # noqa: BLE001 - try the others; the next pass retries
                app.log.error("budget: stopping %s failed: %s", spawner._log_name, err)
                continue
            stopped.append((user.name, spawner.name or ""))
    return stopped


def start_watcher(app) -> PeriodicCallback:
    """Run :func:`check_once` every ``c.CloudhopBudgets.interval`` seconds on the hub's
    loop; one pass at a time."""
    conf = CloudhopBudgets(config=app.config)
    busy = asyncio.Lock()

    async def tick():
        if busy.locked():
            return
        async with busy:
            try:
                await check_once(app)
            except Exception:  # the watcher must outlive one bad pass
                app.log.exception("budget: a check failed")

    callback = PeriodicCallback(tick, conf.interval * 1000)
    callback.start()
    return callback
