"""The failover list: the user's choice first, then cheapest alternatives by locality."""

from __future__ import annotations

import pytest

from cloudhop.spawner.catalog import all_catalog_offers
from cloudhop.spawner.offers import Offer
from cloudhop.spawner.optimizer import auto_pick, describe, effective_price, rank, ranking_price
from cloudhop.spawner.options import LaunchRequest


def offer(provider, region, itype, price, spot=None, gpu="A100", count=1, **kw):
    return Offer(provider=provider, region=region, instance_type=itype, gpu=gpu, gpu_count=count,
                 price_hour=price, spot_price_hour=spot, **kw)


OFFERS = [
    offer("aws", "us-east-1", "p4d", 4.0, 1.5),
    offer("aws", "us-east-1", "p4x", 5.0),
    offer("aws", "us-west-2", "p4d", 3.0, 1.2),
    offer("gcp", "us-central1", "a2", 2.0, 0.8),
    offer("oci", "us-ashburn-1", "BM", 2.5),
    offer("gcp", "us-central1", "a2-2", 4.0, 1.6, count=2),
    offer("gcp", "us-central1", "g2", 0.7, 0.2, gpu="L4"),
    offer("local", "this-machine", "gpu0", 0.0, gpu="a100"),
]


def keys(ranked):
    return [o.key for o in ranked]


def test_open_request_is_cheapest_first_everywhere():
    ranked = rank(LaunchRequest(gpu="A100", gpu_count=1), OFFERS)
    assert keys(ranked) == [
        "local/this-machine/gpu0", "gcp/us-central1/a2", "oci/us-ashburn-1/BM",
        "aws/us-west-2/p4d", "aws/us-east-1/p4d", "aws/us-east-1/p4x",
    ]


def test_explicit_choice_first_then_same_region_same_provider_other_clouds():
    req = LaunchRequest(provider="aws", region="us-east-1", instance_type="p4d", gpu="A100", gpu_count=1)
    assert keys(rank(req, OFFERS)) == [
        "aws/us-east-1/p4d",      # the choice, though not the cheapest
        "aws/us-east-1/p4x",      # same region
        "aws/us-west-2/p4d",      # same provider
        "local/this-machine/gpu0", "gcp/us-central1/a2", "oci/us-ashburn-1/BM",  # other clouds by price
    ]


@pytest.mark.parametrize("spread,expected", [
    ("none", ["aws/us-east-1/p4d"]),
    ("region", ["aws/us-east-1/p4d", "aws/us-east-1/p4x"]),
    ("provider", ["aws/us-east-1/p4d", "aws/us-east-1/p4x", "aws/us-west-2/p4d"]),
])
def test_spread_limits_how_far_alternatives_go(spread, expected):
    req = LaunchRequest(provider="aws", region="us-east-1", instance_type="p4d", gpu="A100", gpu_count=1)
    assert keys(rank(req, OFFERS, spread=spread)) == expected


def test_bad_spread_is_refused_by_name():
    with pytest.raises(ValueError, match="spread must be one of"):
        rank(LaunchRequest(), OFFERS, spread="galaxy")


def test_spot_uses_spot_prices_and_skips_offers_without_a_spot_market():
    ranked = rank(LaunchRequest(gpu="A100", gpu_count=1, spot=True), OFFERS)
    # oci and aws p4x have no spot price; the free local GPU runs either way
    assert keys(ranked) == ["local/this-machine/gpu0", "gcp/us-central1/a2", "aws/us-west-2/p4d", "aws/us-east-1/p4d"]


def test_provider_only_request_prefers_that_provider():
    ranked = rank(LaunchRequest(provider="oci", gpu="A100", gpu_count=1), OFFERS)
    assert ranked[0].provider == "oci" and len(ranked) == 6


def test_gpu_count_and_model_must_match_and_nothing_matches_gives_empty():
    assert keys(rank(LaunchRequest(gpu="a100", gpu_count=2), OFFERS)) == ["gcp/us-central1/a2-2"]
    assert rank(LaunchRequest(gpu="H100", gpu_count=8), OFFERS) == []


def test_partial_prices_rank_with_an_estimate_for_the_host():
    partial = offer("gcp", "us-central1", "n1-standard-8+T4x1", 0.35, gpu="T4", vcpus=8, price_partial=True)
    whole = offer("aws", "us-east-1", "g4dn.xlarge", 0.526, gpu="T4", vcpus=4)
    # 0.35 + an N1 host (about 0.38) is more than 0.526
    assert keys(rank(LaunchRequest(gpu="T4", gpu_count=1), [partial, whole]))[0] == "aws/us-east-1/g4dn.xlarge"
    assert ranking_price(partial) > effective_price(partial) == 0.35


def test_auto_pick_and_describe_for_the_form():
    assert auto_pick(OFFERS, gpu="L4").key == "gcp/us-central1/g2"
    assert auto_pick(OFFERS, gpu="A100", gpu_count=2, spot=True).key == "gcp/us-central1/a2-2"
    assert auto_pick(OFFERS, gpu="H100") is None
    assert describe(auto_pick(OFFERS, gpu="L4"), spot=True) == "gcp us-central1 g2: 1 x L4, $0.20/h spot"
    assert describe(None) == "nothing fits"


def test_full_catalog_h100x8_in_us_east_1_starts_there_then_elsewhere():
    offers = all_catalog_offers()
    ranked = rank(LaunchRequest(provider="aws", region="us-east-1", gpu="H100", gpu_count=8), offers)
    assert ranked[0].key == "aws/us-east-1/p5.48xlarge"
    providers = [o.provider for o in ranked]
    # all AWS alternatives before any other cloud
    assert providers == sorted(providers, key=lambda p: p != "aws")
    assert "gcp" in providers
