"""The hub's usage API: what users and groups spent, and their budgets.

    GET /hub/api/cloudhop/usage/{user}?since=ISO  -> {"user", "since", "usd", "by_server",
                                                      "budget", "running", "notices"}
                                                     ("budget": Policy.budget_status plus
                                                      "notice", spend.notice_for's text)
    GET /hub/api/cloudhop/usage?group=G&since=ISO -> {"group", "since", "usd", "by_user",
                                                      "budget"}  (admins)
    GET /hub/api/cloudhop/budgets                 -> {"budgets": {group: {...}}}  (admins)
    PUT /hub/api/cloudhop/budgets/{group}  {"usd": N} -> the group's budget  (admins)

Everything is read from the spend ledger (:mod:`cloudhop.spawner.ledger`) and the group
policy (``c.Policy.groups``; :meth:`cloudhop.spawner.policy.Policy.budget_status`).

Who may ask:

* a user's usage: a token that may read the user's servers (``read:servers!user=U``:
  the user, an admin, the user's own server's token, which is how the server extension
  asks). Anyone else gets 404, the answer for a user that does not exist, so names
  are not disclosed;
* a group's usage, every user's usage and the budgets: ``admin:users`` (admins);
* changing a budget: ``admin:groups`` (admins). The new ``usd`` replaces the configured
  one for the group (kept in the ledger, so it outlives a restart) and takes effect at
  the next check: a spawn, a resize, a move, the budget watcher's next pass.

``since`` is an ISO 8601 date or time (UTC when it names no zone); by default the start
of this month (UTC). Bad input is a 400 naming the field.
"""

from __future__ import annotations

import datetime
import json
import math

from jupyterhub.apihandlers.base import APIHandler
from tornado import web

from cloudhop.spawner.ledger import LedgerError, ledger_for
from cloudhop.spawner.policy import Policy, period_start
from cloudhop.spawner.spend import notice_for

from .offers_api import _UserSpawnerHandler

READ_ALL_SCOPE = "admin:users"
SET_BUDGET_SCOPE = "admin:groups"


def parse_since(text: str | None, now: datetime.datetime | None = None) -> datetime.datetime:
    """``since`` as an aware UTC datetime; the start of this month when empty. Raises
    ``ValueError`` with a message naming ``since``."""
    if not text:
        return period_start("month", now)
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"since: {text!r} is not an ISO 8601 date or time (e.g. 2026-12-01 or "
                         "2026-12-01T08:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.astimezone(datetime.timezone.utc)


def policy_of(handler) -> Policy:
    """The hub's group policy (one per hub process, on the application's settings)."""
    settings = handler.settings
    if "cloudhop_policy" not in settings:
        settings["cloudhop_policy"] = Policy(config=settings["config"])
    return settings["cloudhop_policy"]


def user_usage(policy: Policy, user, since: datetime.datetime) -> dict:
    """The usage report of one JupyterHub ``user`` (its servers, groups and budgets)."""
    ledger = ledger_for(policy.config)
    groups = [g.name for g in user.groups]
    running = []
    for name, spawner in sorted(user.spawners.items()):
        offer = getattr(spawner, "offer", None)
        if not getattr(spawner, "active", False) or offer is None:
            continue
        spot = bool(spawner.request and spawner.request.spot)
        running.append({"server": name, "provider": offer.provider, "region": offer.region, "gpu": offer.gpu,
                        "gpu_count": offer.gpu_count,
                        "usd_hour": offer.spot_price_hour if spot else offer.price_hour,
                        "spend": spawner.spend_usd})
    by_server = ledger.by_server(user.name, since=since)
    budget = policy.budget_status(groups, user.name)
    budget["notice"] = notice_for(policy, ledger, groups, user.name, status=budget)
    return {
        "user": user.name,
        "since": since.isoformat(),
        "usd": round(sum(by_server.values()), 6),
        "by_server": {k: round(v, 6) for k, v in by_server.items()},
        "budget": budget,
        "running": running,
        "notices": ledger.notices(user.name, since=since),
    }


def group_usage(policy: Policy, group: str, since: datetime.datetime) -> dict:
    """The usage report of one policy group: what its members spent (intervals counted
    for the group) and its budget."""
    ledger = ledger_for(policy.config)
    by_user = ledger.users_of_group(group, since=since)
    return {"group": group, "since": since.isoformat(), "usd": round(sum(by_user.values()), 6),
            "by_user": {k: round(v, 6) for k, v in sorted(by_user.items())},
            "budget": budgets(policy).get(group)}


def budgets(policy: Policy) -> dict:
    """Each configured group's budget, with an admin's runtime ``usd`` where one was set."""
    overrides = policy.ledger_budgets()
    out = {}
    for group, parsed in sorted(policy._parsed.items() if policy.groups else []):
        if parsed.budget_usd is None:
            continue
        p = policy.with_budget(parsed, overrides)
        out[group] = {"usd": p.budget_usd, "configured_usd": parsed.budget_usd, "period": p.budget_period,
                      "per": p.budget_per, "lookahead_minutes": p.budget_lookahead}
    return out


class _UsageHandler(APIHandler):
    def reply(self, body: dict, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def since(self) -> datetime.datetime:
        try:
            return parse_since(self.get_argument("since", None))
        except ValueError as err:
            raise web.HTTPError(400, str(err)) from None

    def ledger_failed(self, err: LedgerError):
        self.log.error("usage: %s", err)
        return web.HTTPError(503, "the spend ledger cannot be read now; the hub's log says why")


class UserUsageHandler(_UsageHandler, _UserSpawnerHandler):
    async def get(self, user_name: str):
        user = self.readable_user(user_name)  # another user: the 404 of a user that does not exist
        since = self.since()
        try:
            self.reply(user_usage(policy_of(self), user, since))
        except LedgerError as err:
            raise self.ledger_failed(err) from None


class UsageHandler(_UsageHandler):
    async def get(self):
        if self.current_user is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        if not self.has_scope(READ_ALL_SCOPE):
            raise web.HTTPError(403, f"only admins may read other users' usage (scope {READ_ALL_SCOPE})")
        since, group = self.since(), self.get_argument("group", None)
        policy = policy_of(self)
        try:
            if group:
                self.reply(group_usage(policy, group, since))
            else:
                by_user = ledger_for(policy.config).by_user(since=since)
                self.reply({"since": since.isoformat(), "usd": round(sum(by_user.values()), 6),
                            "by_user": {k: round(v, 6) for k, v in sorted(by_user.items())}})
        except LedgerError as err:
            raise self.ledger_failed(err) from None


class BudgetsHandler(_UsageHandler):
    async def get(self, group: str | None = None):
        if self.current_user is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        if not self.has_scope(READ_ALL_SCOPE):
            raise web.HTTPError(403, f"only admins may read budgets (scope {READ_ALL_SCOPE})")
        all_budgets = budgets(policy_of(self))
        if group is None:
            return self.reply({"budgets": all_budgets})
        if group not in all_budgets:
            raise web.HTTPError(404, f"group {group!r} has no budget in c.Policy.groups")
        self.reply({"group": group, **all_budgets[group]})

    async def put(self, group: str):
        if self.current_user is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        if not self.has_scope(SET_BUDGET_SCOPE):
            raise web.HTTPError(403, f"only admins may change a budget (scope {SET_BUDGET_SCOPE})")
        policy = policy_of(self)
        if group not in budgets(policy):
            raise web.HTTPError(404, f"group {group!r} has no budget in c.Policy.groups; a budget is "
                                     "configured there first, then admins may raise or lower it here")
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "usd: the body is not JSON; send {\"usd\": amount}") from None
        usd = body.get("usd") if isinstance(body, dict) else None
        if isinstance(usd, bool) or not isinstance(usd, (int, float)) or not math.isfinite(usd) or usd < 0:
            raise web.HTTPError(400, f"usd: must be a number of USD >= 0, not {usd!r}")
        if set(body) - {"usd"}:
            raise web.HTTPError(400, f"{min(set(body) - {'usd'})}: unknown field; only usd may be changed")
        who = getattr(self.current_user, "name", None)
        try:
            ledger_for(policy.config).set_budget(group, float(usd), by=who)
        except LedgerError as err:
            raise self.ledger_failed(err) from None
        self.log.info("Budget of group %r set to $%.2f by %s", group, usd, who)
        self.reply({"group": group, **budgets(policy)[group]})


def handlers() -> list[tuple]:
    """Routes (unprefixed; the hub adds /hub/): the API's and the admins' usage page."""
    from .usage_page import handlers as page

    return [*page(),
        (r"/api/cloudhop/usage/([^/]+)/?", UserUsageHandler),
        (r"/api/cloudhop/usage/?", UsageHandler),
        (r"/api/cloudhop/budgets/?", BudgetsHandler),
        (r"/api/cloudhop/budgets/([^/]+)/?", BudgetsHandler),
    ]
