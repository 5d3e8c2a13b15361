"""A server's spend: its nodes as ledger intervals (:mod:`.ledger`), and what it cost.

:func:`record` keeps the ledger's open intervals of one server equal to the nodes its
state lists (``spawner.nodes``: the notebook node and each Ray worker; and the nodes a
stop kept because their snapshot failed, ``spawner.kept``). The spawner
calls it whenever it saves its state (a launch, a worker added or removed), after a
stop, and at each poll (so a hub killed between a launch and its ledger write opens the
interval at its next poll, from the launch time the state keeps). Each node is priced at
launch: the notebook at its offer's price in the request's mode (spot or on-demand),
a worker at its own offer's price in the cluster's mode; an unknown price counts as 0. On
a provider that runs Ray itself (Kubernetes), the workers are not nodes of the state, so
the notebook's interval carries the whole server's price checked at the spawn.
"""

from __future__ import annotations

import time

from .ledger import LedgerError, Wanted
from .optimizer import effective_price
from .state import NOTEBOOK_ROLE, NodeRef


def _launched_at(spawner, node_id: str, now: float) -> float:
    """When the notebook node was launched: its attempt's start, else the node's own
    ``launched_at``, else now."""
    for attempt in spawner.attempts or []:
        if attempt.get("node") == node_id and isinstance(attempt.get("started"), (int, float)):
            return float(attempt["started"])
    node = spawner.node
    launched = (node.info or {}).get("launched_at") if node is not None and node.id == node_id else None
    return float(launched) if isinstance(launched, (int, float)) else now


def wanted(spawner, now: float | None = None) -> list[Wanted]:
    """The intervals ``spawner``'s nodes should have open, priced."""
    now = time.time() if now is None else now
    spot = bool(spawner.request and spawner.request.spot)
    cluster = spawner.ray_cluster
    workers = {w.get("id"): w for w in (cluster.workers if cluster is not None else [])}
    offers = {o.key: o for o in (cluster.offers if cluster is not None else [])}
    out = []
    # nodes a stop kept (its snapshot failed) still run, and still cost
    kept = [n for k in getattr(spawner, "kept", None) or [] for n in k.get("nodes") or [] if isinstance(n, dict)]
    for ref in map(NodeRef.from_dict, [*(spawner.nodes or []), *kept]):
        if not ref.provider or not ref.id:
            continue
        if ref.role == NOTEBOOK_ROLE:
            offer, mode, t0 = spawner.offer, spot, _launched_at(spawner, ref.id, now)
        else:
            w = workers.get(ref.id) or {}
            offer, mode = offers.get(w.get("offer")), bool(cluster is not None and cluster.spot)
            t0 = float(w["started"]) if isinstance(w.get("started"), (int, float)) else now
        price = effective_price(offer, mode) if offer is not None else None
        if ref.role == NOTEBOOK_ROLE and _provider_runs_ray(spawner, offer):
            # its Ray workers are no nodes of the state: the notebook's interval carries the
            # whole server's price as checked at the spawn, workers included
            price = spawner._price_hour if spawner._price_hour is not None else price
        out.append(Wanted(provider=ref.provider, node=ref.id, role=ref.role or NOTEBOOK_ROLE,
                          region=ref.region, offer=offer.key if offer is not None else None,
                          usd_hour=float(price or 0.0), t0=t0))
    return out


def _provider_runs_ray(spawner, offer) -> bool:
    """Whether ``spawner`` asked for Ray on a provider that runs the cluster itself
    (``handles_ray``: Kubernetes)."""
    if offer is None or not (spawner.request and spawner.request.ray):
        return False
    try:
        return bool(getattr(spawner.provider(offer.provider), "handles_ray", False))
    except Exception:  # noqa: BLE001 - an unknown provider prices as its offer
        return False


def groups_of(spawner) -> list[str]:
    """The policy groups a server's spend counts for: those that apply to its user."""
    return [p.group for p in spawner.policy.for_groups(spawner.user_groups())]


def record(spawner) -> bool:
    """Bring the ledger in line with ``spawner``'s nodes; False (and an error in the log)
    when the ledger cannot be written: the next save or poll tries again."""
    try:
        spawner.ledger.sync_server(spawner.user.name, spawner.name or "", groups_of(spawner), wanted(spawner))
    except LedgerError as err:
        spawner.log.error("Spend of %s is not recorded: %s", spawner._log_name, err)
        return False
    return True


def node_gone(spawner, node) -> None:
    """Close the interval of the server's notebook ``node``, which its provider says is
    going or gone (JupyterHub then stops the server without calling its ``stop``; the
    reaper closes the intervals of workers it terminates)."""
    try:
        spawner.ledger.close_node(node.provider, node.id)
    except LedgerError as err:
        spawner.log.error("Spend of %s: could not close node %s: %s", spawner._log_name, node.id, err)


#: the share of a budget from which users are warned
WARN_FRACTION = 0.8
#: the kind of the ledger's notice the budget watcher leaves when it stops a server
STOP_NOTICE = "budget-stop"


def budget_notice(spawner) -> dict | None:
    """:func:`notice_for` the user of ``spawner`` (the Home page, the spawn form)."""
    return notice_for(spawner.policy, spawner.ledger, spawner.user_groups(), spawner.user.name)


def notice_for(policy, ledger, groups, user_name: str, status: dict | None = None) -> dict | None:
    """What a user should know about their budget: ``{"kind": "spent", "fraction",
    "message"}`` once it is used up (with the reason the budget watcher gave, when it
    stopped servers), ``{"kind": "warning", ...}`` from 80%, else None. ``status`` is
    ``policy.budget_status``'s answer when the caller has it. A ledger that cannot be read
    shows nothing (the log says why). The Home page, the spawn form, the usage API and,
    through it, JupyterLab and the notebook panel all show this one text."""
    try:
        status = status or policy.budget_status(groups, user_name)
        if not status["limited"] or status["fraction"] is None or status["fraction"] < WARN_FRACTION:
            return None
        best = max(status["budgets"], key=lambda b: b["left"])
        if status["fraction"] >= 1.0:
            stops = [n for n in ledger.notices(user_name, since=best["since"]) if n["kind"] == STOP_NOTICE]
            why = stops[0]["message"] if stops else "servers cannot start"
            return {"kind": "spent", "fraction": status["fraction"],
                    "message": f"Your budget is used up ({why}). An admin can raise it."}
    except LedgerError as err:
        policy.log.error("Budget of %s unknown: %s", user_name, err)
        return None
    return {"kind": "warning", "fraction": status["fraction"],
            "message": f"You have used {status['fraction']:.0%} of your ${best['usd']:.2f} budget this "
                       f"{best['period']} (group {best['group']!r}; ${best['left']:.2f} left); "
                       "at 100% your servers are stopped (their work is kept)."}


def running_servers(user) -> list[dict]:
    """Each of ``user``'s servers that runs nodes now: where, its price and its spend so
    far (the spawn form lists them)."""
    out = []
    for name, sp in sorted((getattr(user, "spawners", None) or {}).items()):
        offer = getattr(sp, "offer", None)
        if offer is None or not getattr(sp, "nodes", None):
            continue
        spot = bool(sp.request and sp.request.spot)
        out.append({"server": name, "provider": offer.provider, "region": offer.region, "gpu": offer.gpu,
                    "gpu_count": offer.gpu_count, "usd_hour": effective_price(offer, spot),
                    "spend": server_spend(sp)})
    return out


def server_spend(spawner, now: float | None = None) -> float | None:
    """USD spent by the server's nodes now running (since their launch); None when it
    runs none."""
    if not spawner.nodes:
        return None
    try:
        rows = spawner.ledger.intervals(user=spawner.user.name, server=spawner.name or "", open_only=True)
    except LedgerError:
        return None
    now = time.time() if now is None else now
    return round(sum(i.usd(i.t0, now) for i in rows), 4)
