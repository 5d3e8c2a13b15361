"""What this server costs, for ``GET {server}/cloudhop/api/info`` (the JupyterLab status bar).

The price is the one the hub offered for this server's place: the hub's offers for this
user (the list the spawn form and a move's targets come from) are searched for the
offer this server runs on (``CLOUDHOP_PROVIDER``, ``_REGION``, ``_INSTANCE_TYPE``,
``_GPU``, ``_GPU_COUNT``, set at launch), at its spot price when the server was started
with ``spot`` (its user_options in the hub's model of it). The spend so far is that
price times the hours since the hub says the server started: an estimate (clouds bill
by their own rounding, and the hub's offers may have changed price since).

Both hub calls are made once per server process: the price and the start time of a
running server do not change. A failed lookup is retried at the next call and answers
with ``price_hour`` None and ``price_note`` saying why.

The hub's spend ledger, when the hub has one, has the last word: the usage API
(``GET /hub/api/cloudhop/usage/{user}``, asked at most every :data:`USAGE_SECONDS`) gives
this server's spend as recorded (``spend_source: "ledger"``) and the user's ``budget``:
the hub's notice ``{"kind", "fraction", "warning", "message"}`` once 80% of it is used
(the JupyterLab extension shows it as a notification), else None.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from urllib.parse import quote

from .hubclient import HubClient, HubError

KEYS = ("provider", "region", "instance_type", "gpu", "gpu_count")
#: seconds between two reads of the hub's usage API
USAGE_SECONDS = 15.0


def _here(env) -> dict:
    out = {k: env.get(f"CLOUDHOP_{k.upper()}") for k in KEYS}
    out["gpu_count"] = int(out["gpu_count"] or 0)
    return out


def _timestamp(iso: str | None) -> float | None:
    """Seconds since the epoch of the hub's ISO 8601 time (``2025-01-02T03:04:05.123Z``)."""
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class PriceLookup:
    """This server's price per hour and spend so far, read from the hub once."""

    def __init__(self, hub: HubClient, env=os.environ):
        self.hub = hub
        self.env = env
        self._found: dict | None = None
        self._usage: tuple[float, dict] | None = None

    async def _lookup(self) -> dict:
        here = _here(self.env)
        if not here["provider"] or not self.hub.configured:
            return {"price_hour": None, "spot": False, "started": None,
                    "price_note": "this server was not started by a Cloudhop hub"}
        model = await self.hub.server(self.hub.server_name) or {}
        spot = bool((model.get("user_options") or {}).get("spot"))
        started = _timestamp(model.get("started"))
        for offer in await self.hub.offers():
            if all(offer.get(k) == v for k, v in here.items()):
                price = offer.get("spot_price_hour" if spot else "price_hour")
                note = None if price is not None else "the hub knows no price for this offer"
                if price is not None and offer.get("price_partial"):
                    note = "the price leaves part of the machine out"
                return {"price_hour": price, "spot": spot, "started": started, "price_note": note}
        return {"price_hour": None, "spot": spot, "started": started,
                "price_note": "this server's offer is no longer among the hub's offers"}

    async def get(self, now: float | None = None) -> dict:
        """``{"price_hour", "spot", "started", "spend", "price_note"}``: USD/hour (None when
        unknown), the spot flag, the start (epoch seconds), USD spent so far (None
        without a price or a start time) and why a price is missing or partial."""
        if self._found is None:
            try:
                found = await self._lookup()
            except HubError as err:
                found = {"price_hour": None, "spot": False, "started": None,
                         "price_note": f"the hub did not say ({err})"}
            else:
                if found["price_hour"] is not None:
                    self._found = found
        else:
            found = self._found
        spend = None
        if found["price_hour"] is not None and found["started"] is not None:
            hours = max(0.0, ((now or time.time()) - found["started"]) / 3600)
            spend = round(found["price_hour"] * hours, 4)
        out = {**found, "spend": spend}
        usage = await self._read_usage()
        if usage:  # a hub with a spend ledger
            out.update(spend_source="estimate" if spend is not None else None,
                       budget=budget_warning(usage.get("budget") or {}))
            mine = [r for r in usage.get("running") or [] if r.get("server") == self.hub.server_name]
            if mine and isinstance(mine[0].get("spend"), (int, float)):
                out.update(spend=round(mine[0]["spend"], 4), spend_source="ledger")
        return out

    async def _read_usage(self) -> dict | None:
        """The hub's usage report of this server's user, at most every USAGE_SECONDS;
        None when the hub has no usage API or does not answer."""
        user = getattr(self.hub, "user", "")
        if not self.hub.configured or not user or not _here(self.env)["provider"]:
            return None
        if self._usage is not None and time.monotonic() - self._usage[0] < USAGE_SECONDS:
            return self._usage[1]
        try:
            usage = await self.hub.request("GET", f"/cloudhop/usage/{quote(user, safe='')}")
        except HubError:
            usage = None
        self._usage = (time.monotonic(), usage)
        return usage


def budget_warning(status: dict) -> dict | None:
    """The hub's budget notice (``budget["notice"]`` of the usage API: from 80% of the
    user's budget, and once it is used up) as ``{"kind", "fraction", "warning": True,
    "message"}``, else None."""
    notice = status.get("notice")
    if not isinstance(notice, dict) or not notice.get("message"):
        return None
    return {"kind": notice.get("kind"), "fraction": notice.get("fraction"), "warning": True,
            "message": notice["message"]}
