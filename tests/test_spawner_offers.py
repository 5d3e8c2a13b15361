"""The spawner's view of providers' offers: one broken provider never breaks the form
or a spawn, and a pinned zone only goes with offers that have it."""

from __future__ import annotations

from types import SimpleNamespace

from cloudhop.spawner import CloudhopSpawner
from cloudhop.spawner.offers import Offer
from cloudhop.spawner.options import LaunchRequest
from cloudhop.spawner.providers.base import Provider
from cloudhop.spawner.spawner import _zone_for

GOOD = Offer("aws", "us-east-1", "g4dn.xlarge", "T4", 1, price_hour=0.526, zones=("us-east-1a", "us-east-1b"))


class Fine(Provider, partial=True):
    name = "fine"

    async def check_available(self):
        return None

    def offers(self):
        return [GOOD]


class BrokenCatalog(Fine, partial=True):
    name = "broken"

    def offers(self):
        raise ValueError("row 3 of /srv/override.csv: price_hour 'abc' is not a number")


def new_spawner():
    return CloudhopSpawner(
        user=SimpleNamespace(name="ada", url="/user/ada/", escaped_name="ada", groups=[]),
        providers=[f"{__name__}:BrokenCatalog", f"{__name__}:Fine"],
    )


async def test_a_provider_whose_offers_fail_is_unavailable_and_the_rest_still_offer():
    s = new_spawner()
    statuses = await s.provider_status()
    assert await s.all_offers(statuses) == [GOOD]
    broken = next(p for p in statuses if p["name"].endswith("BrokenCatalog"))
    assert broken["available"] is False and "could not be read" in broken["reason"]
    assert "/srv/override.csv" not in broken["reason"], "the form shows no hub file paths"
    form = await s.get_options_form()
    assert "g4dn.xlarge" in form


def test_a_pinned_zone_goes_only_with_offers_that_have_it():
    request = LaunchRequest(provider="aws", region="us-east-1", zone="us-east-1b", gpu="T4", gpu_count=1)
    assert _zone_for(GOOD, request) == "us-east-1b"
    elsewhere = Offer("aws", "us-west-2", "g4dn.xlarge", "T4", 1, zones=("us-west-2a",))
    assert _zone_for(elsewhere, request) is None, "a failover offer in another region uses its own zones"
    zoneless = Offer("local", "us-east-1", "cpu", "none", 0)
    assert _zone_for(zoneless, request) == "us-east-1b"
    assert _zone_for(GOOD, LaunchRequest(gpu="T4", gpu_count=1)) is None


async def test_the_price_rule_at_spawn_counts_the_ray_workers():
    import pytest
    from jupyterhub.spawner import SpawnException
    from traitlets.config import Config

    c = Config()
    c.Policy.groups = {"default": {"max_price_hour": 1.0}}
    s = CloudhopSpawner(
        user=SimpleNamespace(name="ada", url="/user/ada/", escaped_name="ada", groups=[]),
        providers=[f"{__name__}:Fine"], config=c,
    )
    base = {"provider": "auto", "region": "us-east-1", "gpu": "T4", "gpu_count": 1}
    s.user_options = base
    assert (await s.parse_request()).gpu == "T4", "one T4 at $0.526/h is within $1/h"
    s.user_options = {**base, "ray": {"workers": 1, "gpu": "T4", "gpu_count": 1}}
    with pytest.raises(SpawnException) as err:
        await s.parse_request()
    assert err.value.status_code == 403 and "$1.05/h" in str(err.value) and "at most $1.00/h" in str(err.value)
