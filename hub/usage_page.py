"""The admins' usage page, ``/hub/cloudhop/usage``: spend per user and per group.

One table per configured group with a budget (its budget as set now, what its members
spent this period, and each member's share), then every user's spend since ``since``
(the start of this month by default). The numbers are the usage API's
(:mod:`.usage_api`); the page needs ``admin:users``, as the API's admin calls do.
"""

from __future__ import annotations

from jupyterhub.handlers.base import BaseHandler
from tornado import web

from cloudhop.spawner.ledger import ledger_for
from cloudhop.spawner.policy import period_start

from .usage_api import READ_ALL_SCOPE, budgets, group_usage, parse_since, policy_of


class UsagePageHandler(BaseHandler):
    @web.authenticated
    async def get(self):
        if not self.has_scope(READ_ALL_SCOPE):
            raise web.HTTPError(403, "only admins may see everyone's usage")
        try:
            since = parse_since(self.get_argument("since", None))
        except ValueError as err:
            raise web.HTTPError(400, str(err)) from None
        policy = policy_of(self)
        groups = []
        for name, budget in budgets(policy).items():
            report = group_usage(policy, name, period_start(budget["period"]))
            groups.append({**report, "budget": budget})
        by_user = ledger_for(policy.config).by_user(since=since)
        users = sorted(by_user.items(), key=lambda kv: -kv[1])
        html = await self.render_template("cloudhop-usage.html", groups=groups, users=users, since=since,
                                          total=sum(by_user.values()))
        self.finish(html)


def handlers() -> list[tuple]:
    """The page's route (unprefixed; the hub adds /hub/)."""
    return [(r"/cloudhop/usage/?", UsagePageHandler)]
