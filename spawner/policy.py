"""Per-group policy: what a user may launch, enforced on the hub for form and API alike.

Configured as traitlets, a dict keyed by JupyterHub group name with a ``"default"``
entry for users in none of the listed groups::

    c.Policy.groups = {
        "default":  {"providers": ["local"], "max_gpus": 1},
        "students": {"providers": ["gcp"], "gpus": ["L4", "T4"], "max_gpus": 1, "max_servers": 2,
                     "max_price_hour": 1.5, "budget": {"usd": 50, "period": "month"},
                     "images": ["quay.io/jupyter/*"]},
        "research": {"providers": ["aws", "gcp", "oci"], "regions": ["us-*", "europe-*"],
                     "max_gpus": 16, "images": "*", "image_override": True},
    }

Rules (each optional; a missing rule allows everything, but for ``images``):
``providers``, ``regions`` (shell-style patterns such as ``us-*``), ``gpus`` (catalog
names, any case, or patterns; ``"none"`` for CPU-only; GPU slices by name:
``"A100-MIG-1g.10gb"``, ``"L4-shared"``, ``"*-MIG-*"``), ``images`` (the ``image`` option's allowed
values: exact names or shell-style patterns such as ``nvcr.io/nvidia/pytorch:*``, or
``"*"`` for any; **missing: no image option at all**, the provider's default image
runs), ``image_override`` (True: an allowed image may replace the image a Kubernetes
profile names; otherwise the profile's image wins), ``max_servers`` (servers at once,
named ones included), ``max_gpus``, ``max_ray_workers`` (per server),
``max_price_hour`` (USD/hour, spot price when spot), ``budget`` (``{"usd": amount,
"period": "day" | "week" | "month", "lookahead_minutes": 60, "per": "user" | "group"}``); ``idle_minutes`` and ``max_hours`` are the
culling rules (:mod:`.cull_rules`).

``max_servers``, ``max_gpus``, ``max_price_hour`` and ``budget`` count **all of the
user's servers** (:mod:`.limits`): each one's notebook and Ray workers, running or
starting, plus the one being started or resized. A move's target is a new server: it
counts beside its source, which runs until the move is done.

**A user in several groups gets the union**: a request (or an offer) is allowed when at
least one of the user's groups allows it as a whole. Rules are not mixed across groups:
a group allowing AWS H100s and another allowing GCP T4s do not make GCP H100s allowed.
The ``default`` entry applies only to users in none of the configured groups, so a
group can be stricter than the default.
"""

from __future__ import annotations

import datetime
import difflib
import fnmatch
import html
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterable

from traitlets import Any, Dict, TraitError, default, validate
from traitlets.config import LoggingConfigurable

from .ledger import Ledger, LedgerError, ledger_for
from .limits import NOTHING, Usage, request_gpus
from .offers import Offer
from .optimizer import effective_price
from .cull_rules import CULL_RULES, CullRuleError, parse_cull_rules
from .validate import require_number
from .options import LaunchRequest, parse_options
from .providers import PROVIDERS
from .schema import OptionError

#: every rule, in the order a request is checked (a refusal from further down the list
#: is the more telling one when a user's groups all refuse)
RULES = ("providers", "regions", "gpus", "images", "image_override", "max_gpus", "max_ray_workers",
         "max_servers", "max_price_hour", "budget")
PERIODS = ("day", "week", "month")
BUDGET_KEYS = ("usd", "period", "lookahead_minutes", "per")
BUDGET_PER = ("user", "group")
DEFAULT_GROUP = "default"


class PolicyError(OptionError):
    """A request the user's policy forbids. ``field`` is the option, ``rule`` the policy
    rule and ``group`` the group whose rule it is; the message says what is allowed.
    Its ``status`` is 403."""

    def __init__(self, field: str, rule: str, group: str, message: str):
        self.rule = rule
        self.group = group
        super().__init__(field, message, status=403)


class LedgerUnavailable(OptionError):
    """The spend ledger cannot be read, so no budget can be checked: 503, field ``budget``
    (the hub's log has the reason; the message does not name the file)."""

    def __init__(self):
        super().__init__("budget", "the hub cannot read its spend ledger now, so budgets cannot be checked; "
                                   "try again later (the hub's log says why)", status=503)


@dataclass(frozen=True)
class GroupPolicy:
    """One group's rules, validated. ``None`` means the rule does not restrict."""

    group: str
    providers: tuple | None = None
    regions: tuple | None = None
    gpus: tuple | None = None
    #: patterns of the allowed ``image`` option; empty: none is allowed
    images: tuple = ()
    image_override: bool = False
    max_gpus: int | None = None
    max_ray_workers: int | None = None
    max_servers: int | None = None
    max_price_hour: float | None = None
    budget_usd: float | None = None
    budget_period: str = "month"
    #: minutes of the new price (plus the user's other servers) that must fit in what is left
    budget_lookahead: float = 60.0
    #: "user": each member spends up to the budget; "group": the members together
    budget_per: str = "user"
    _gpus_fold: frozenset = field(default=frozenset(), repr=False, compare=False)

    # -- single offers --------------------------------------------------------

    def allows_provider(self, name: str) -> bool:
        return self.providers is None or name in self.providers

    def allows_region(self, region: str) -> bool:
        return self.regions is None or any(fnmatch.fnmatchcase(region, p) for p in self.regions)

    def allows_gpu(self, gpu: str) -> bool:
        fold = gpu.casefold()
        return (self.gpus is None or fold in self._gpus_fold
                or any(fnmatch.fnmatchcase(fold, p) for p in self._gpus_fold if "*" in p or "?" in p))

    def allows_count(self, count: int) -> bool:
        return self.max_gpus is None or count <= self.max_gpus

    def allows_image(self, image: str | None) -> bool:
        """No image (the provider's default) always; else one the ``images`` rule lists."""
        return not image or any(fnmatch.fnmatchcase(image, p) for p in self.images)

    def allows_offer(self, offer: Offer, spot: bool | None = None) -> bool:
        """The offer may be launched under this policy: in the given price mode, or in
        some mode when ``spot`` is None."""
        if not (self.allows_provider(offer.provider) and self.allows_region(offer.region)
                and self.allows_gpu(offer.gpu) and self.allows_count(offer.gpu_count)):
            return False
        if self.max_price_hour is None:
            return True
        modes = (False, True) if spot is None else (spot,)
        prices = [p for p in (effective_price(offer, m) for m in modes) if p is not None]
        return any(p <= self.max_price_hour for p in prices)

    # -- whole requests -------------------------------------------------------

    def violation(self, request: LaunchRequest, price_hour: float | None = None,
                  others: Usage = NOTHING) -> PolicyError | None:
        """The first rule ``request`` breaks (checked in :data:`RULES` order), or None.
        ``price_hour`` is what the chosen offers cost per hour, when known; ``others`` is
        what the user's other servers hold (for the rules that count them all)."""
        g = html.escape(self.group, quote=False)
        if request.provider != "auto" and not self.allows_provider(request.provider):
            return PolicyError("provider", "providers", self.group,
                               f"{_q(request.provider)} is not allowed for group {g!r}; allowed providers: {_list(self.providers)}")
        if request.region and not self.allows_region(request.region):
            return PolicyError("region", "regions", self.group,
                               f"{_q(request.region)} is not allowed for group {g!r}; allowed regions: {_list(self.regions)}")
        gpus = [(request.gpu, "gpu")]
        if request.ray and request.ray.workers:
            gpus.append((request.ray.gpu, "ray.gpu"))
        for gpu, name in gpus:
            if not self.allows_gpu(gpu):
                return PolicyError(name, "gpus", self.group,
                                   f"{_q(gpu)} is not allowed for group {g!r}; allowed GPUs: {_list(self.gpus)}")
        if not self.allows_image(request.image):
            allowed = (f"allowed images: {_list(self.images)}" if self.images else
                       "it allows no image option (Policy rule 'images'); leave it empty for the default image")
            return PolicyError("image", "images", self.group,
                               f"{_q(request.image)} is not allowed for group {g!r}; {allowed}")
        # a server that adds nothing (no GPU, free) is never refused for what others hold
        mine = request_gpus(request)
        if not self.allows_count(mine):
            where = "gpu_count" if request.gpu_count > (self.max_gpus or 0) or not request.ray else "ray.gpu_count"
            return PolicyError(where, "max_gpus", self.group,
                               f"{mine} GPU(s) for this server is more than group {g!r} allows: at most {self.max_gpus}"
                               + (" (Ray workers included)" if request.ray and request.ray.workers else ""))
        if mine and not self.allows_count(mine + others.gpus):
            return PolicyError("gpu_count" if request.gpu_count else "ray.gpu_count", "max_gpus", self.group,
                               f"{mine} GPU(s) for this server and {others.gpus} on your other servers is more "
                               f"than group {g!r} allows: at most {self.max_gpus} in all (max_gpus)")
        if request.ray and self.max_ray_workers is not None and request.ray.workers > self.max_ray_workers:
            return PolicyError("ray.workers", "max_ray_workers", self.group,
                               f"{request.ray.workers} Ray workers is more than group {g!r} allows: at most {self.max_ray_workers}")
        if self.max_servers is not None and others.servers + 1 > self.max_servers:
            return PolicyError("servers", "max_servers", self.group,
                               f"you run {others.servers} server(s) already; group {g!r} allows at most "
                               f"{self.max_servers} at once (max_servers); stop one first")
        if price_hour is not None and self.max_price_hour is not None:
            if price_hour and price_hour + others.price_hour > self.max_price_hour >= price_hour:
                return PolicyError("instance_type", "max_price_hour", self.group,
                                   f"${price_hour:.2f}/h for this server and ${others.price_hour:.2f}/h for your other "
                                   f"servers is more than group {g!r} allows: at most ${self.max_price_hour:.2f}/h "
                                   "in all (max_price_hour)")
            if price_hour > self.max_price_hour:
                return PolicyError("instance_type", "max_price_hour", self.group,
                                   f"${price_hour:.2f}/h is more than group {g!r} allows: at most ${self.max_price_hour:.2f}/h")
        return None

    def budget_violation(self, spent_usd: float, price_hour: float | None,
                         others_hour: float = 0.0) -> PolicyError | None:
        """Refuse when this period's spend has reached the budget, or ``budget_lookahead``
        minutes of the chosen offer, with ``others_hour`` (USD/hour of the user's other
        servers), would pass it. None when there is no budget."""
        if self.budget_usd is None:
            return None
        g = html.escape(self.group, quote=False)
        left = self.budget_usd - spent_usd
        if left <= 0:
            whose = "" if self.budget_per == "group" else " on your servers"
            return PolicyError("budget", "budget", self.group,
                               f"group {g!r} has spent ${spent_usd:.2f} of its ${self.budget_usd:.2f} budget this "
                               f"{self.budget_period}{whose}; no new servers until the next period (budget)")
        span, hours = _span(self.budget_lookahead), self.budget_lookahead / 60.0
        if price_hour and others_hour and left >= price_hour * hours and (price_hour + others_hour) * hours > left:
            return PolicyError("budget", "budget", self.group,
                               f"{span} at ${price_hour:.2f}/h for this server and ${others_hour:.2f}/h for your "
                               f"other servers is more than the ${left:.2f} left of group {g!r}'s "
                               f"${self.budget_usd:.2f} budget this {self.budget_period} (budget); stop a server "
                               "or pick a cheaper offer")
        if price_hour is not None and price_hour * hours > left:
            return PolicyError("budget", "budget", self.group,
                               f"{span} at ${price_hour:.2f}/h is more than the ${left:.2f} left of group {g!r}'s "
                               f"${self.budget_usd:.2f} budget this {self.budget_period} (budget); pick a cheaper offer")
        return None


def _span(minutes: float) -> str:
    """The lookahead in words: "one hour", "90 minutes"."""
    return "one hour" if minutes == 60 else f"{minutes:g} minutes"


def _q(value) -> str:
    # markup is escaped; quotes are kept so API clients read 'H100', not &#x27;H100&#x27;
    return html.escape(repr(value), quote=False)


def _list(values) -> str:
    return ", ".join(html.escape(str(v)) for v in values) if values else "none"


def period_start(period: str, now: datetime.datetime | None = None) -> datetime.datetime:
    """Start (UTC) of the budget period containing ``now``: midnight, Monday, the 1st."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - datetime.timedelta(days=day.weekday())
    return day.replace(day=1)


def parse_group_policy(group: str, raw) -> GroupPolicy:
    """Validate one group's rules; raises ``TraitError`` naming the group and key."""
    where = f"Policy.groups[{group!r}]"
    if not isinstance(raw, dict):
        raise TraitError(f"{where} must be a dict of rules ({', '.join(RULES)}), not {raw!r}")
    for key in raw:
        if key not in RULES + CULL_RULES:
            close = difflib.get_close_matches(str(key), RULES + CULL_RULES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TraitError(f"{where}: unknown rule {key!r}{hint} Rules: {', '.join(RULES + CULL_RULES)}")
    try:
        parse_cull_rules(where, raw)
    except CullRuleError as err:
        raise TraitError(str(err)) from None

    def names(key, valid=None):
        value = raw.get(key)
        if value is None or value == "*":
            return None
        if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
            raise TraitError(f"{where}[{key!r}] must be a list of names (or '*'), not {value!r}")
        if valid is not None:
            for v in value:
                # a "module:Class" custom provider is named as in CloudhopSpawner.providers
                if v not in valid and ":" not in v:
                    raise TraitError(f"{where}[{key!r}]: unknown provider {v!r}; known: {', '.join(valid)}")
        return tuple(value)

    def number(key, kind):
        value = raw.get(key)
        if value is None:
            return None
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)  # 2.0 GPUs is 2
        return kind(require_number(value, f"{where}[{key!r}]", minimum=0, integer=kind is int,
                                   what="a whole number" if kind is int else "a number"))

    budget_usd, budget_period, lookahead, per = None, "month", 60.0, "user"
    budget = raw.get("budget")
    if budget is not None:
        if not isinstance(budget, dict) or set(budget) - set(BUDGET_KEYS) or "usd" not in budget:
            raise TraitError(f"{where}['budget'] must be {{'usd': amount, 'period': 'day'|'week'|'month', "
                             f"'lookahead_minutes': minutes, 'per': 'user'|'group'}}, not {budget!r}")
        usd = budget["usd"]
        require_number(usd, f"{where}['budget']['usd']", minimum=0, what="a number of USD")
        budget_period = budget.get("period", "month")
        if budget_period not in PERIODS:
            raise TraitError(f"{where}['budget']['period'] must be one of {', '.join(PERIODS)}, not {budget_period!r}")
        lookahead = float(require_number(budget.get("lookahead_minutes", 60), f"{where}['budget']['lookahead_minutes']",
                                         minimum=0, what="a number of minutes"))
        per = budget.get("per", "user")
        if per not in BUDGET_PER:
            raise TraitError(f"{where}['budget']['per'] must be one of {', '.join(BUDGET_PER)}, not {per!r}")
        budget_usd = float(usd)
    gpus = names("gpus")
    images = raw.get("images")
    if images is not None and images != "*" and (isinstance(images, str) or not isinstance(images, (list, tuple))):
        raise TraitError(f"{where}['images'] must be a list of image names or patterns (or '*'), not {images!r}")
    images = ("*",) if images == "*" else names("images") or ()
    override = raw.get("image_override", False)
    if not isinstance(override, bool):
        raise TraitError(f"{where}['image_override'] must be True or False, not {override!r}")
    return GroupPolicy(
        group=group,
        providers=names("providers", PROVIDERS),
        regions=names("regions"),
        gpus=gpus,
        images=images,
        image_override=override,
        max_gpus=number("max_gpus", int),
        max_ray_workers=number("max_ray_workers", int),
        max_servers=number("max_servers", int),
        max_price_hour=number("max_price_hour", float),
        budget_usd=budget_usd,
        budget_period=budget_period,
        budget_lookahead=lookahead,
        budget_per=per,
        _gpus_fold=frozenset(g.casefold() for g in gpus or ()),
    )


class Policy(LoggingConfigurable):
    """Who may launch what (``c.Policy.*``); see the module docstring for the rules."""

    groups = Dict(
        help="""Rules per JupyterHub group name, plus a "default" entry for users in none
        of them. Rules: providers, regions (patterns like "us-*"), gpus, images (the
        image option's allowed names or patterns like "quay.io/jupyter/*", or "*";
        missing: no image option), image_override (an allowed image may replace a
        Kubernetes profile's), max_servers, max_gpus (Ray workers included),
        max_ray_workers (per server), max_price_hour (USD/hour), budget ({"usd": amount,
        "period": "day"|"week"|"month", "lookahead_minutes": 60, "per": "user"|"group"}:
        a new server, resize or move is refused when the period's spend plus
        lookahead_minutes of its price would pass usd; at 100% the servers stop); max_servers, max_gpus, max_price_hour and
        budget count all of the user's servers. A missing rule (or a missing "default")
        allows everything, but for images. A user in several groups may do what any one
        of them allows.""",
    ).tag(config=True)

    spend = Any(
        help="""Callable ``spend(user_name, group, since) -> float`` giving the USD spent
        since ``since`` (a UTC datetime), for budget checks: by ``user_name`` for a
        budget per user, by every member of ``group`` for one per group (``user_name``
        None). Default: the hub's spend ledger (cloudhop.spawner.ledger). None: 0.""",
    ).tag(config=True)

    @default("spend")
    def _default_spend(self):
        return LedgerSpend(ledger_for(self.config))

    def ledger_budgets(self) -> dict[str, float]:
        """The budgets admins set at runtime (group -> USD, kept in the spend ledger, also
        when ``spend`` is an operator's own); they replace the configured ``usd`` of
        groups that have a budget."""
        return ledger_for(self.config).budgets()

    def with_budget(self, policy: GroupPolicy, overrides: dict) -> GroupPolicy:
        if policy.budget_usd is not None and policy.group in overrides:
            return dataclasses.replace(policy, budget_usd=float(overrides[policy.group]))
        return policy

    def spent(self, policy: GroupPolicy, user_name: str, now: datetime.datetime | None = None) -> float:
        """What counts against ``policy``'s budget this period: ``user_name``'s spend, or
        the whole group's for a budget per group."""
        if policy.budget_usd is None or self.spend is None:
            return 0.0
        who = None if policy.budget_per == "group" else user_name
        return float(self.spend(who, policy.group, period_start(policy.budget_period, now)))

    def budget_status(self, groups: Iterable[str], user_name: str,
                      now: datetime.datetime | None = None) -> dict:
        """Where ``user_name`` stands against the budgets of their groups:
        ``{"limited": bool, "fraction": float | None, "budgets": [...]}``. ``limited``: every
        applicable policy has a budget (one without makes the user unlimited, by the
        union rule); ``fraction``: spent / usd of the policy with the most room (None when
        not limited); each budget ``{"group", "usd", "period", "per", "lookahead_minutes",
        "spent", "left", "since"}``."""
        overrides = self.ledger_budgets()
        policies = [self.with_budget(p, overrides) for p in self.for_groups(groups)]
        out = []
        for p in policies:
            if p.budget_usd is None:
                continue
            spent = self.spent(p, user_name, now)
            out.append({"group": p.group, "usd": p.budget_usd, "period": p.budget_period, "per": p.budget_per,
                        "lookahead_minutes": p.budget_lookahead, "spent": round(spent, 6),
                        "left": round(p.budget_usd - spent, 6),
                        "since": period_start(p.budget_period, now).isoformat()})
        limited = bool(out) and len(out) == len(policies)
        fraction = None
        if limited:
            fraction = min((b["spent"] / b["usd"]) if b["usd"] else float("inf") for b in out)
        return {"limited": limited, "fraction": fraction, "budgets": out}

    @validate("groups")
    def _validate_groups(self, proposal):
        parsed = {}
        for group, rules in proposal["value"].items():
            if not isinstance(group, str) or not group:
                raise TraitError(f"Policy.groups: keys must be group names, not {group!r}")
            parsed[group] = parse_group_policy(group, rules)
        self._parsed = parsed
        return proposal["value"]

    _parsed: dict = {}

    def for_groups(self, groups: Iterable[str]) -> list[GroupPolicy]:
        """The policies that apply to a member of ``groups`` (see the union rule)."""
        parsed = self._parsed if self.groups else {}
        mine = [parsed[g] for g in sorted(set(groups)) if g in parsed and g != DEFAULT_GROUP]
        if mine:
            return mine
        return [parsed.get(DEFAULT_GROUP) or GroupPolicy(group=DEFAULT_GROUP)]

    def filter_offers(self, offers: Iterable[Offer], groups: Iterable[str],
                      spot: bool | None = None) -> list[Offer]:
        """The offers at least one applicable policy allows: for the form and validation
        (``spot`` None: in either price mode), or for a failover list (the request's mode)."""
        policies = self.for_groups(groups)
        if len(policies) == 1 and policies[0] == GroupPolicy(group=policies[0].group):
            return list(offers)  # nothing restricts: skip the per-offer checks
        return [o for o in offers if any(p.allows_offer(o, spot) for p in policies)]

    def may_replace_profile_image(self, image: str | None, groups: Iterable[str]) -> bool:
        """True when one of ``groups``' policies allows ``image`` and lets it replace
        the image a Kubernetes profile names (``image_override``)."""
        return bool(image) and any(p.image_override and p.allows_image(image) for p in self.for_groups(groups))

    def allowed_providers(self, providers: Iterable[str], groups: Iterable[str]) -> list[str]:
        policies = self.for_groups(groups)
        return [p for p in providers if any(g.allows_provider(p) for g in policies)]

    def check_request(self, request: LaunchRequest, groups: Iterable[str],
                      price_hour: float | None = None, others: Usage = NOTHING) -> GroupPolicy:
        """The policy that allows ``request`` beside ``others`` (what the user's other
        servers hold); raises the most telling :class:`PolicyError` (from the group whose
        rules the request got furthest through) when none does."""
        errors = []
        for policy in self.for_groups(groups):
            err = policy.violation(request, price_hour, others)
            if err is None:
                return policy
            errors.append(err)
        raise max(errors, key=lambda e: RULES.index(e.rule))

    def check_budget(self, groups: Iterable[str], user_name: str, price_hour: float | None,
                     now: datetime.datetime | None = None, others: Usage = NOTHING,
                     spent: dict | None = None) -> None:
        """Refuse (:class:`PolicyError`, field ``budget``) when no applicable policy has
        budget left for its ``lookahead_minutes`` at ``price_hour`` beside ``others`` (the
        user's other servers). ``spent``, when given, keeps each group's spend across calls,
        so checking several offers asks ``spend`` once per group."""
        errors = []
        spent = {} if spent is None else spent
        overrides = None
        for policy in self.for_groups(groups):
            try:
                if policy.budget_usd is not None:
                    overrides = self.ledger_budgets() if overrides is None else overrides
                    policy = self.with_budget(policy, overrides)
                if policy.group not in spent:
                    spent[policy.group] = self.spent(policy, user_name, now)
            except LedgerError as err:
                self.log.error("Budget of %s unknown: %s", user_name, err)
                raise LedgerUnavailable() from None
            err = policy.budget_violation(spent[policy.group], price_hour, others.price_hour)
            if err is None:
                return
            errors.append(err)
        raise errors[0]


def server_price(request: LaunchRequest, notebook: Offer, worker_offers: Iterable[Offer] = ()) -> float | None:
    """USD/hour of a whole server in the request's price mode: the notebook's offer plus,
    for each requested Ray worker, the first of the workers' failover list (the one the
    workers try first, the cheapest). This is the price the ``max_price_hour`` and
    ``budget`` rules are checked against, at spawn and at every resize. A part whose
    price is unknown counts as free; None when no part has a known price."""
    parts = [effective_price(notebook, request.spot)]
    workers = request.ray.workers if request.ray else 0
    first = next(iter(worker_offers), None)
    if workers and first is not None:
        parts.append(None if (p := effective_price(first, request.spot)) is None else p * workers)
    known = [p for p in parts if p is not None]
    return round(sum(known), 6) if known else None


class LedgerSpend:
    """``Policy.spend``'s default: the spend ledger's sums (a user's, or a group's when
    ``user_name`` is None)."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger

    def __call__(self, user_name: str | None, group: str, since: datetime.datetime) -> float:
        if user_name is None:
            return self.ledger.spent(group=group, since=since)
        return self.ledger.spent(user=user_name, since=since)


def validate_request(raw, offers: list[Offer], policy: Policy, groups: Iterable[str], *,
                     providers: Iterable[str] = PROVIDERS,
                     price_of: Callable[[LaunchRequest, list[Offer]], float | None] | None = None) -> LaunchRequest:
    """Parse user options and enforce the policy, naming the rule when it refuses.

    ``offers`` are every offer of the enabled providers (not yet policy-filtered). The
    options are parsed against the allowed offers; when that fails but the options are
    valid for all offers, the policy rule that forbids them is named ("'H100' is not
    allowed for group 'students'; allowed GPUs: L4, T4") instead of "unknown GPU".
    Then the rules are checked on the whole request (GPU totals with Ray workers, price).
    ``price_of`` gives the hourly price of the cheapest allowed match, for the price rule.
    """
    groups = list(groups)
    providers = list(providers)
    allowed = policy.filter_offers(offers, groups)
    try:
        request = parse_options(raw, allowed, providers=policy.allowed_providers(providers, groups))
    except OptionError as err:
        try:
            full = parse_options(raw, offers, providers=providers)
        except OptionError:
            raise err from None  # wrong whatever the policy: list the allowed choices
        policy.check_request(full, groups)  # names the rule that forbids it
        raise err from None  # each rule passes, but no allowed offer combines them
    policy.check_request(request, groups, price_of(request, allowed) if price_of else None)
    return request
