"""What an account can actually launch: the recorded result of ``cloudhop catalog check``.

``cloudhop catalog check --provider aws`` asks the provider's own API (through
``Provider.check_catalog``) which of the catalog's instance types are offered to these
credentials in which regions and zones, and writes the answer as JSON::

    {"version": 1, "provider": "aws", "checked_at": "2026-11-22T21:00:00+00:00",
     "regions": ["us-east-1", ...],          # regions that were asked
     "offers": [{"instance_type": "p5.48xlarge", "region": "us-east-1",
                 "zones": ["use1-az4"]}, ...]}

The loader then keeps, in the regions that were asked, only the listed types, with the
listed zones; rows in regions that were not asked stay as the catalog has them.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path
from typing import Iterable

from ..offers import Offer

CHECK_VERSION = 1


def check_path(directory: str | os.PathLike, provider: str) -> Path:
    """Where the check result for ``provider`` lives in ``directory``."""
    return Path(directory) / f"catalog-check-{provider}.json"


def normalise_entries(entries: Iterable) -> list[dict]:
    """Accept what ``Provider.check_catalog`` returns — ``(instance_type, region,
    zones)`` tuples or dicts with those keys — as sorted plain dicts."""
    out = {}
    for entry in entries:
        if isinstance(entry, dict):
            itype, region, zones = entry["instance_type"], entry["region"], entry.get("zones") or ()
        else:
            itype, region, zones = entry
        key = (str(itype), str(region))
        merged = set(out.get(key, {}).get("zones", ())) | {str(z) for z in zones or ()}
        out[key] = {"instance_type": key[0], "region": key[1], "zones": sorted(merged)}
    return [out[k] for k in sorted(out)]


def record_check(path: Path, provider: str, regions: Iterable[str], entries: Iterable,
                 *, merge: bool = True) -> dict:
    """Write a check result atomically. With ``merge``, an earlier result's regions that
    were not asked this time are kept, so checking one region does not forget others."""
    regions = sorted(set(regions))
    offers = normalise_entries(entries)
    if merge:
        old = read_check(path)
        if old and old.get("provider") == provider:
            asked = set(regions)
            offers = normalise_entries(
                [o for o in old["offers"] if o["region"] not in asked] + offers
            )
            regions = sorted(asked | set(old["regions"]))
    result = {
        "version": CHECK_VERSION,
        "provider": provider,
        "checked_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "regions": regions,
        "offers": offers,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return result


def read_check(path: Path) -> dict | None:
    """The recorded result, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != CHECK_VERSION:
        return None
    return data


def apply_check(offers: list[Offer], result: dict | None) -> list[Offer]:
    """Drop the offers a recorded check says the account cannot launch; narrow zones."""
    if not result:
        return offers
    asked = set(result.get("regions", ()))
    allowed = {(o["instance_type"], o["region"]): tuple(o.get("zones") or ()) for o in result.get("offers", ())}
    out = []
    for offer in offers:
        if offer.region not in asked:
            out.append(offer)
            continue
        zones = allowed.get((offer.instance_type, offer.region))
        if zones is None:
            continue
        out.append(dataclasses.replace(offer, zones=zones) if zones else offer)
    return out
