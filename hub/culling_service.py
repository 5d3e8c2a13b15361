"""The culler service: jupyterhub-idle-culler, deciding per server with Cloudhop's
culling policy (:mod:`.culling`).

jupyterhub-idle-culler lists the users with ready servers, skips pending ones, and stops
(``DELETE``) each server its arbiter picks; here the arbiter is :class:`PolicyArbiter`,
which applies the server's group rules (``idle_minutes`` for its GPU type,
``max_hours``) instead of the culler's one timeout. Run by the hub
(:func:`cloudhop.hub.services.add_idle_culler`) as
``python -m cloudhop.hub.culling_service`` with jupyterhub-idle-culler's own flags and
the settings in :data:`.culling.SETTINGS_ENV`.
"""

from __future__ import annotations

import datetime
import os
import sys
import time

from cloudhop.extensions.hubclient import HubClient

from .culling import SETTINGS_ENV, UTC, CullSettings, log, parse_time, server_gpu


class PolicyArbiter:
    """jupyterhub-idle-culler's ``cull_arbiter_hook``: True for a server whose time is
    up under its user's group rules. The culler hands over only the server's model, so
    the arbiter keeps a map of each server's URL to its user and groups, read from the
    hub at most once per ``refresh`` seconds (and again for a URL it does not know that
    started after the last read: a server the last read should have listed is not worth
    another listing of every user)."""

    def __init__(self, settings: CullSettings, hub: HubClient, refresh: float = 10, clock=time.monotonic):
        self.settings = settings
        self.hub = hub
        self.refresh = refresh
        self.clock = clock
        self._owners: dict[str, tuple[str, list[str]]] = {}
        self._read_at = None
        self._read_wall: datetime.datetime | None = None

    async def _read_owners(self) -> None:
        self._read_wall = datetime.datetime.now(UTC)
        owners = {}
        # only users with an active server: the culler hands over ready servers only
        for user in await self.hub.users(active_only=True):
            groups = list(user.get("groups") or [])
            for server in (user.get("servers") or {}).values():
                if server.get("url"):
                    owners[server["url"]] = (user["name"], groups)
        self._owners, self._read_at = owners, self.clock()

    async def owner(self, server: dict) -> tuple[str, list[str]] | None:
        url = server.get("url") or ""
        stale = self._read_at is None or self.clock() - self._read_at > self.refresh
        started = parse_time(server.get("started"))
        new = started is None or self._read_wall is None or started >= self._read_wall
        if stale or (url not in self._owners and new):
            await self._read_owners()
        return self._owners.get(url)

    async def __call__(self, *, inactive=None, inactive_limit=None, server: dict, **_kw) -> bool:
        owner = await self.owner(server)
        if owner is None:  # gone since the culler listed it
            return False
        user, groups = owner
        gpu = server_gpu(server)
        decision = self.settings.decide(groups=groups, gpu=gpu, started=parse_time(server.get("started")),
                                        last_activity=parse_time(server.get("last_activity")),
                                        now=datetime.datetime.now(UTC))
        if decision.action != "cull":
            return False
        name = f"{user}/{server.get('name')}" if server.get("name") else user
        log.info("Culling server %s (%s, GPU %s, groups %s): its limit was reached at %s", name,
                 decision.reason, gpu, ",".join(groups) or "-", decision.cull_at.isoformat())
        return True


def main(argv=None) -> None:
    """jupyterhub-idle-culler with :class:`PolicyArbiter`; exits with the hub."""
    import logging

    from jupyterhub_idle_culler import IdleCuller

    from .services import exit_with_hub

    settings = CullSettings.from_json(os.environ[SETTINGS_ENV])
    app = IdleCuller.instance()
    app.initialize(sys.argv[1:] if argv is None else argv)
    hub = HubClient.from_env()
    hub.back_off = True  # its listings never crowd out a busy hub's users
    app.cull_arbiter_hook = PolicyArbiter(settings, hub)
    logging.getLogger("cloudhop").handlers = app.log.handlers
    logging.getLogger("cloudhop").setLevel(logging.INFO)
    exit_with_hub()
    app.start()


if __name__ == "__main__":
    main()
