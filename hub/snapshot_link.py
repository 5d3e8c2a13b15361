"""The hub's link to the snapshot store service, and what the spawner asks through it.

The store trusts calls that carry the key the hub made for it at this start
(``CLOUDHOP_STORE_HUB_KEY``, in the service's environment only; :data:`SCHEME`); the hub
decides who may do what (:mod:`.snapshots_api`, the spawner), the store does it
(:mod:`.snapshot_hub_routes`). Every call is awaited on tornado's async client: nothing
blocks the hub's loop. The spawner asks for the spawn form's "Start from" list
(:func:`start_choices`) and, for ``"restore": "class:NAME"``, the user's own copy of the
class snapshot (:func:`class_copy`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .snapshot_classes import visible

#: the store service's name (``cloudhop.hub.snapshot_store.SERVICE_NAME``)
SERVICE_NAME = "cloudhop-store"
#: the Authorization scheme of the hub's own calls
SCHEME = "cloudhop-hub"

#: the store service's environment variable holding the hub's key
KEY_ENV = "CLOUDHOP_STORE_HUB_KEY"


def new_key() -> str:
    return secrets.token_hex(32)


class StoreUnavailable(RuntimeError):
    """The store did not answer (down, restarting)."""


@dataclass
class StoreLink:
    """The hub's calls to the store service: ``url`` its base (``.../services/cloudhop-store/``)."""

    url: str
    key: str

    @classmethod
    def from_config(cls, config) -> "StoreLink | None":
        """The link to the store a hub ``config`` runs (None when it runs none)."""
        try:
            services = config.JupyterHub.services if "services" in config.JupyterHub else []
        except AttributeError:
            return None
        for service in services or []:
            if isinstance(service, dict) and service.get("name") == SERVICE_NAME:
                key = (service.get("environment") or {}).get(KEY_ENV)
                if key and service.get("url"):
                    return cls(service["url"].rstrip("/") + f"/services/{SERVICE_NAME}/", key)
        return None

    async def call(self, method: str, path: str, body: dict | None = None, *, timeout: float = 60):
        """``(status, JSON reply)`` of one call (an error status is returned, not raised)."""
        request = HTTPRequest(self.url + path, method=method,
                              headers={"Authorization": f"{SCHEME} {self.key}",
                                       "Content-Type": "application/json"},
                              body=json.dumps(body) if body is not None else (b"" if method == "POST" else None),
                              request_timeout=timeout, connect_timeout=min(timeout, 10))
        try:
            reply = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as err:
            raise StoreUnavailable(f"the snapshot store did not answer ({type(err).__name__})") from None
        if reply.code == 599:
            raise StoreUnavailable("the snapshot store did not answer")
        try:
            data = json.loads(reply.body or b"{}")
        except ValueError:
            data = {}
        return reply.code, data

    # -- the calls the hub makes ---------------------------------------------------------
    async def snapshots(self, user: str, server: str | None = None) -> list[dict]:
        query = "" if server is None else "?" + urlencode({"server": server})
        status, data = await self.call("GET", f"api/hub/users/{quote(user, safe='')}/snapshots{query}")
        if status != 200:
            raise StoreUnavailable(data.get("message") or f"the snapshot store answered {status}")
        return data.get("snapshots") or []

    async def classes(self) -> list[dict]:
        status, data = await self.call("GET", "api/hub/classes")
        if status != 200:
            raise StoreUnavailable(data.get("message") or f"the snapshot store answered {status}")
        return data.get("classes") or []

    async def restore(self, user: str, server: str, restore: str, groups: list[str]) -> tuple[int, dict]:
        """Let ``user``'s ``server`` restore ``restore`` (an id, ``class:NAME`` - a copy of
        the class is made for the user - or ``latest``): ``(status, {"id", "summary"})``."""
        return await self.call("POST", f"api/hub/users/{quote(user, safe='')}/restore",
                               {"server": server, "restore": restore, "groups": groups})


def add_hub_key(environment: dict) -> None:
    """Give the store service's ``environment`` the hub's key (a new one per hub start)."""
    environment[KEY_ENV] = new_key()


# -- what the spawner asks --------------------------------------------------------------
def _when(created) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(created)) if isinstance(created, (int, float)) else "?"


def choice_label(summary: dict) -> str:
    """``2026-12-04 09:12 UTC, 1.2 GiB, aws/us-east-1 A10G``: a snapshot as the form shows it."""
    from cloudhop.spawner.durable import size_text

    source = summary.get("source") or {}
    where = "/".join(p for p in (source.get("provider"), source.get("region")) if p)
    gpu = source.get("gpu")
    if gpu and gpu != "none":
        where = f"{where} {gpu}".strip()
    parts = [_when(summary.get("created")), size_text(int(summary.get("bytes") or 0))]
    if where:
        parts.append(where)
    if (summary.get("kernels") or {}).get("count"):
        parts.append(f"{summary['kernels']['count']} kernel(s)")
    return ", ".join(parts)


async def start_choices(config, user: str, server: str, groups: list[str]) -> dict:
    """The spawn form's "Start from" list: ``{"line": [{"value", "label"}], "classes":
    [...], "error": str | None}``; the newest of the line is the default (value ``""``)."""
    link = StoreLink.from_config(config)
    if link is None:
        return {"line": [], "classes": [], "error": None}
    # the two calls go out together: the form waits for the slower one, not for both in turn
    line, records = await asyncio.gather(link.snapshots(user, server), link.classes(), return_exceptions=True)
    for answer in (line, records):
        if isinstance(answer, StoreUnavailable):
            return {"line": [], "classes": [], "error": str(answer)}
        if isinstance(answer, BaseException):
            raise answer
    out = []
    for i, summary in enumerate(line):
        label = choice_label(summary)
        out.append({"value": "" if i == 0 else summary["id"],
                    "label": f"Last session ({label})" if i == 0 else f"{summary['id']} ({label})"})
    classes = [{"value": f"class:{r['name']}", "label": f"Class: {r['name']} ({choice_label(r.get('summary') or {})})"}
               for r in records if visible(r, groups) or r.get("owner") == user]
    return {"line": out, "classes": classes, "error": None}


async def class_copy(config, user: str, server: str, name: str, groups: list[str]) -> dict:
    """The user's own copy of class snapshot ``name`` in ``server``'s line, which that
    server may restore (its summary). Raises LookupError (404: not shared with the user,
    or no such class) or StoreUnavailable."""
    link = StoreLink.from_config(config)
    if link is None:
        raise StoreUnavailable("the hub runs no snapshot store")
    status, data = await link.restore(user, server, f"class:{name}", groups)
    if status == 404:
        raise LookupError(data.get("message") or f"restore: no class snapshot {name!r} is shared with you")
    if status != 200:
        raise StoreUnavailable(data.get("message") or f"the snapshot store answered {status}")
    return data["summary"]
