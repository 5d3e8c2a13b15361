"""The reaper: a hub-managed service that terminates nodes the hub no longer knows.

Every ``interval`` seconds it

1. reads every *active* server's state from the hub API (``state["nodes"]`` lists every
   node a server owns: notebook and Ray workers), a page of users at a time, waiting
   after a slow page as long as it took (``HubClient.back_off``). A stopped server's
   leftover state does not count: nothing will ever stop its nodes;
2. lists the nodes tagged with this hub's id on every enabled provider;
3. terminates each node that no active server owns and that is older than ``grace``
   seconds (by its launch time, or by when the reaper first saw it when the provider
   does not say), so a launch whose server has not saved its state yet is left alone.

If the hub cannot be read completely, the sweep reaps nothing (never on partial
knowledge). Each sweep is logged and written to a JSON report (``report``), the last
sweep first::

    {"hub_id": ..., "sweeps": [{"started": ..., "finished": ..., "hub_error": null,
      "providers": {"aws": {"listed": 3, "owned": 2, "young": 0,
                            "terminated": ["us-east-1/i-0abc"], "error": null}}}]}

Run by the hub (see :func:`reaper_service_config`) as ``python -m cloudhop.hub.reaper``,
configured by ``JUPYTERHUB_API_URL``/``JUPYTERHUB_API_TOKEN`` (set by the hub for its
services) and ``CLOUDHOP_REAPER_SETTINGS`` (JSON: hub id, providers, interval, grace,
report path and the providers' traitlets config sections). It holds the cloud
credentials the hub forwards to it; they never leave this process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path

from cloudhop.extensions.hubclient import HubClient
from cloudhop.spawner.providers import CONFIG_SECTIONS as PROVIDER_SECTIONS

from .config import CloudhopReaper
from .services import add_service, hub_credentials, hub_is_gone, hub_pid

SERVICE_NAME = "cloudhop-reaper"
SETTINGS_ENV = "CLOUDHOP_REAPER_SETTINGS"
#: the hub API scopes the reaper needs: list users and read their servers' state
SCOPES = ["list:users", "read:users", "read:servers", "admin:server_state"]
#: config sections the providers read (forwarded from the hub's config)
CONFIG_SECTIONS = (*PROVIDER_SECTIONS, "Catalog")
HISTORY = 20

log = logging.getLogger("cloudhop.reaper")


def owned_nodes(users: list[dict]) -> set[tuple[str, str]]:
    """``(provider, node id)`` of every node an active server's state lists, read with
    :func:`cloudhop.spawner.state.server_nodes`. Raises
    :class:`~cloudhop.spawner.state.StateVersionError` when an active server's state
    is from a newer Cloudhop: it may list its nodes in a way this reaper cannot read."""
    from cloudhop.spawner.state import kept_nodes, server_nodes

    owned = set()
    for user in users:
        for name, server in (user.get("servers") or {}).items():
            where = f"server {user.get('name')}/{server.get('name', name)}"
            state = server.get("state") or {}
            # nodes a stop kept because their snapshot failed belong to a stopped server:
            # they hold the user's only copy until an admin decides
            if state.get("kept"):
                owned.update((ref.provider, ref.id) for ref in kept_nodes(state, where))
            if server.get("stopped"):
                continue
            owned.update((ref.provider, ref.id) for ref in server_nodes(state, where))
    return owned


class Reaper:
    """One hub's reaper: ``providers`` by name, the hub's id, the grace period."""

    def __init__(self, providers: dict, hub, hub_id: str, *, grace: float = 900.0,
                 report: str | os.PathLike | None = None, clock=time.time, ledger=None):
        self.providers = providers
        #: the spend ledger (:class:`cloudhop.spawner.ledger.Ledger`), None: no spend kept
        self.ledger = ledger
        self.hub = hub
        self.hub_id = hub_id
        self.grace = grace
        self.report = Path(report) if report else None
        self.clock = clock
        self.first_seen: dict[tuple[str, str], float] = {}
        self.sweeps: list[dict] = []

    def age(self, provider: str, node, now: float) -> float:
        """Seconds since the node was launched (or first seen by this reaper)."""
        launched = (node.info or {}).get("launched_at")
        seen = self.first_seen.setdefault((provider, node.id), now)
        if isinstance(launched, (int, float)):
            return now - launched
        return now - seen

    async def sweep(self) -> dict:
        from cloudhop.spawner.providers.base import TAG_HUB
        from cloudhop.spawner.state import StateVersionError

        now = self.clock()
        report = {"started": now, "hub_error": None, "providers": {}}
        try:
            owned = owned_nodes(await self.hub.users())
            report["hub"] = dict(getattr(self.hub, "listing", None) or {})  # pages, seconds, paused
        except StateVersionError as err:  # a newer hub's state: its nodes cannot be told apart
            report["hub_error"] = f"{err}; reaping nothing until this reaper is upgraded"
            log.error("reaper: %s", report["hub_error"])
            return self._record(report)
        except Exception as err:  # noqa: BLE001 - reap nothing on partial knowledge
            report["hub_error"] = f"{type(err).__name__}: {err}"
            log.warning("reaper: cannot read the hub's servers (%s); reaping nothing", report["hub_error"])
            return self._record(report)
        for name, provider in self.providers.items():
            entry = {"listed": 0, "owned": 0, "young": 0, "terminated": [], "error": None}
            report["providers"][name] = entry
            try:
                nodes = await provider.list_nodes({TAG_HUB: self.hub_id})
            except Exception as err:  # noqa: BLE001 - one provider's outage spares the rest
                entry["error"] = f"{type(err).__name__}: {err}"
                log.warning("reaper: cannot list %s nodes: %s", name, entry["error"])
                continue
            entry["listed"] = len(nodes)
            self._close_vanished(name, {n.id for n in nodes}, owned, now, entry)
            for node in nodes:
                if (name, node.id) in owned:
                    entry["owned"] += 1
                    continue
                age = self.age(name, node, now)
                if age < self.grace:
                    entry["young"] += 1
                    continue
                try:
                    await provider.terminate(node.id)
                except Exception as err:  # noqa: BLE001 - try the others, report this one
                    entry["error"] = f"terminating {node.id}: {type(err).__name__}: {err}"
                    log.error("reaper: %s", entry["error"])
                    continue
                entry["terminated"].append(node.id)
                self._close_spend(name, node.id, now)
                log.warning(
                    "reaper: terminated %s node %s (user %r, server %r, %.0fs old): no active server owns it",
                    name, node.id, node.tags.get("cloudhop-user"), node.tags.get("cloudhop-server"), age,
                )
        return self._record(report)

    def _close_spend(self, provider: str, node_id: str, now: float) -> None:
        """Close the spend interval of a node this reaper terminated."""
        if self.ledger is None:
            return
        try:
            self.ledger.close_node(provider, node_id, now)
        except Exception as err:  # noqa: BLE001 - the ledger's trouble never stops a sweep
            log.error("reaper: could not close the spend of %s node %s: %s", provider, node_id, err)

    def _close_vanished(self, provider: str, listed: set, owned: set, now: float, entry: dict) -> None:
        """Close the open spend intervals of ``provider``'s nodes that it no longer lists
        and no active server owns (a node gone while the hub was down, a worker that
        died), once older than the grace period (a cloud may list a new node late)."""
        if self.ledger is None:
            return
        try:
            for i in self.ledger.intervals(open_only=True):
                if (i.provider == provider and i.node not in listed and (provider, i.node) not in owned
                        and now - i.t0 >= self.grace):
                    self.ledger.close_node(provider, i.node, now)
                    entry.setdefault("closed_spend", []).append(i.node)
        except Exception as err:  # noqa: BLE001 - the ledger's trouble never stops a sweep
            log.error("reaper: could not reconcile the spend of %s nodes: %s", provider, err)

    def _record(self, report: dict) -> dict:
        report["finished"] = self.clock()
        self.sweeps = [report] + self.sweeps[: HISTORY - 1]
        if self.report:
            self.report.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.report.with_suffix(f".{os.getpid()}.tmp")  # another reaper may write too
            tmp.write_text(json.dumps({"hub_id": self.hub_id, "sweeps": self.sweeps}, indent=1))
            os.replace(tmp, self.report)
        return report

    async def run(self, interval: float) -> None:
        """Sweep every ``interval`` seconds while the hub that started us lives (a hub
        killed outright does not stop its services; its successor starts a new one)."""
        parent = hub_pid()
        while not hub_is_gone(parent):
            await self.sweep()
            for _ in range(max(1, int(interval))):
                if hub_is_gone(parent):
                    break
                await asyncio.sleep(min(1.0, interval))
        log.info("reaper: the hub is gone; exiting")


def reaper_service_config(c, *, data_dir: str, env=os.environ) -> dict:
    """Add the reaper service and its role to a JupyterHub config ``c`` (after the
    operator's config is loaded, so the providers and their settings are final), as
    ``c.CloudhopReaper.*`` (:class:`~cloudhop.hub.config.CloudhopReaper`) sets it; a bad
    value is refused naming the setting. Returns the service entry, ``{}`` if disabled."""
    conf = CloudhopReaper(config=c)
    if not conf.enabled:
        return {}
    providers = list(c.CloudhopSpawner.get("providers") or ["local"])
    config = {name: _plain(c[name]) for name in CONFIG_SECTIONS if name in c}
    settings = {
        "hub_id": c.CloudhopSpawner.get("hub_id") or "",
        "providers": providers,
        "interval": conf.interval,
        "grace": conf.grace,
        "report": os.path.join(os.path.abspath(data_dir), "reaper-report.json"),
        "ledger": c.CloudhopLedger.get("path") or "",
        "config": config,
    }
    environment = hub_credentials(env)
    environment[SETTINGS_ENV] = json.dumps(settings, default=str)
    service = {
        "name": SERVICE_NAME,
        "command": [sys.executable, "-m", "cloudhop.hub.reaper"],
        "environment": environment,
        "display": False,
    }
    add_service(c, service, {"name": SERVICE_NAME, "scopes": list(SCOPES), "services": [SERVICE_NAME]})
    return service


def _plain(section) -> dict:
    """A config section as plain JSON-able values."""
    return json.loads(json.dumps({k: v for k, v in section.items()}, default=str))


def build(settings: dict, api_url: str, token: str) -> tuple[Reaper, float]:
    """The reaper the settings describe, with its providers built from their config."""
    from traitlets.config import Config

    from cloudhop.spawner.providers import provider_class

    config = Config(settings.get("config") or {})
    providers = {}
    for name in settings.get("providers") or []:
        try:
            providers[name] = provider_class(name)(config=config, log=log)
        except Exception as err:  # noqa: BLE001 - a missing SDK spares the rest
            log.error("reaper: provider %s unavailable: %s", name, err)
    # interval and grace were checked by CloudhopReaper when the hub wrote the settings
    ledger = None
    if settings.get("ledger"):
        from cloudhop.spawner.ledger import Ledger

        ledger = Ledger(settings["ledger"])
    hub = HubClient(api_url, token)
    hub.back_off = True  # a sweep never crowds out a busy hub's users
    reaper = Reaper(providers, hub, settings["hub_id"],
                    grace=settings["grace"], report=settings.get("report"), ledger=ledger)
    return reaper, settings["interval"]


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s %(asctime)s reaper] %(message)s")
    settings = json.loads(os.environ.get(SETTINGS_ENV) or "{}")
    if not settings.get("hub_id"):
        log.error("reaper: %s has no hub_id; not reaping", SETTINGS_ENV)
        return 2
    reaper, interval = build(settings, os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"])
    log.info("reaper: hub %s, providers %s, every %.0fs, grace %.0fs",
             reaper.hub_id, ", ".join(reaper.providers) or "none", interval, reaper.grace)
    try:
        asyncio.run(reaper.run(interval))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
