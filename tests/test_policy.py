"""Group policy: refused requests name the rule and what is allowed; offers are filtered."""

from __future__ import annotations

import datetime

import pytest
from traitlets import TraitError
from traitlets.config import Config

from cloudhop.spawner.catalog import all_catalog_offers
from cloudhop.spawner.options import OptionError
from cloudhop.spawner.policy import Policy, PolicyError, period_start, validate_request

CLOUDS = ["aws", "gcp", "oci"]

GROUPS = {
    "default": {"providers": ["oci"], "max_gpus": 1},
    "students": {"providers": ["gcp"], "gpus": ["L4", "T4"], "max_gpus": 1, "max_price_hour": 1.5,
                 "budget": {"usd": 20, "period": "week"}},
    "research": {"providers": ["aws"], "regions": ["us-*"], "max_gpus": 8, "max_ray_workers": 2},
}


@pytest.fixture(scope="module")
def offers():
    return all_catalog_offers(providers=CLOUDS)


@pytest.fixture
def policy():
    return Policy(groups=GROUPS)


def check(raw, offers, policy, groups):
    return validate_request(raw, offers, policy, groups, providers=CLOUDS)


def test_students_cannot_get_an_h100_and_are_told_which_rule(offers, policy):
    with pytest.raises(PolicyError) as err:
        check({"provider": "gcp", "gpu": "H100", "gpu_count": 1}, offers, policy, ["students"])
    assert isinstance(err.value, OptionError)  # becomes a 4xx naming the field
    assert err.value.field == "gpu" and err.value.rule == "gpus"
    assert str(err.value) == "gpu: 'H100' is not allowed for group 'students'; allowed GPUs: L4, T4"


def test_students_get_their_l4_on_gcp(offers, policy):
    req = check({"gpu": "l4", "gpu_count": 1}, offers, policy, ["students"])
    assert (req.gpu, req.gpu_count) == ("L4", 1)


@pytest.mark.parametrize("raw,field,rule,says", [
    ({"provider": "aws", "gpu": "T4", "gpu_count": 1}, "provider", "providers", "allowed providers: gcp"),
    ({"gpu": "L4", "gpu_count": 2}, "gpu_count", "max_gpus", "at most 1"),
    ({"gpu": "L4", "gpu_count": 1, "ray": {"workers": 1, "gpu": "L4", "gpu_count": 1}}, "ray.gpu_count", "max_gpus", "Ray workers included"),
    ({"gpu": "L4", "gpu_count": 1, "ray": {"workers": 1, "gpu": "A100", "gpu_count": 1}}, "ray.gpu", "gpus", "allowed GPUs: L4, T4"),
])
def test_each_rule_names_itself(offers, policy, raw, field, rule, says):
    with pytest.raises(PolicyError) as err:
        check(raw, offers, policy, ["students"])
    assert (err.value.field, err.value.rule) == (field, rule)
    assert says in str(err.value) and "'students'" in str(err.value)


def test_regions_are_patterns(offers, policy):
    with pytest.raises(PolicyError, match=r"region: 'eu-west-1' is not allowed for group 'research'; allowed regions: us-\*"):
        check({"provider": "aws", "region": "eu-west-1", "gpu": "T4", "gpu_count": 1}, offers, policy, ["research"])
    assert check({"provider": "aws", "region": "us-east-1", "gpu": "H100", "gpu_count": 8}, offers, policy, ["research"]).region == "us-east-1"


def test_max_ray_workers(offers, policy):
    with pytest.raises(PolicyError, match="3 Ray workers is more than group 'research' allows: at most 2") as err:
        check({"gpu": "L4", "gpu_count": 1, "ray": {"workers": 3}}, offers, policy, ["research"])
    assert err.value.field == "ray.workers"


def test_price_rule_filters_offers_and_refuses_by_price(offers, policy):
    allowed = policy.filter_offers(offers, ["students"])
    assert allowed and all(o.provider == "gcp" and o.gpu in ("L4", "T4") and o.gpu_count == 1 for o in allowed)
    assert all(min(p for p in (o.price_hour, o.spot_price_hour) if p is not None) <= 1.5 for o in allowed)
    with pytest.raises(PolicyError, match=r"\$2.00/h is more than group 'students' allows: at most \$1.50/h") as err:
        validate_request({"gpu": "L4", "gpu_count": 1}, offers, policy, ["students"], providers=CLOUDS,
                         price_of=lambda req, offers: 2.0)
    assert err.value.field == "instance_type" and err.value.rule == "max_price_hour"


def test_several_groups_get_the_union_without_mixing_rules(offers, policy):
    both = ["students", "research"]
    assert check({"provider": "aws", "region": "us-east-1", "gpu": "H100", "gpu_count": 8}, offers, policy, both)
    assert check({"provider": "gcp", "gpu": "T4", "gpu_count": 1}, offers, policy, both)
    # gcp from students and H100 from research do not combine into a GCP H100
    with pytest.raises(PolicyError):
        check({"provider": "gcp", "gpu": "H100", "gpu_count": 8}, offers, policy, both)
    providers = {o.provider for o in policy.filter_offers(offers, both)}
    assert providers == {"aws", "gcp"}


def test_default_applies_only_to_users_in_no_listed_group(offers, policy):
    assert {o.provider for o in policy.filter_offers(offers, ["someone-else"])} == {"oci"}
    assert {o.provider for o in policy.filter_offers(offers, [])} == {"oci"}
    assert {o.provider for o in Policy().filter_offers(offers, [])} == {"aws", "gcp", "oci"}


def test_budget_really_compares_spend(policy):
    spent = {}
    policy.spend = lambda user, group, since: spent.get(group, 0.0)
    policy.check_budget(["students"], "ana", 0.7)  # nothing spent
    spent["students"] = 19.5
    with pytest.raises(PolicyError, match=r"one hour at \$0.70/h is more than the \$0.50 left") as err:
        policy.check_budget(["students"], "ana", 0.7)
    assert err.value.field == "budget"
    spent["students"] = 20.0
    with pytest.raises(PolicyError, match=r"has spent \$20.00 of its \$20.00 budget this week"):
        policy.check_budget(["students"], "ana", 0.1)
    # a group without a budget is not limited
    policy.check_budget(["research"], "ana", 50.0)


def test_budget_without_accounting_still_refuses_an_hour_over_budget():
    policy = Policy(groups={"default": {"budget": {"usd": 1, "period": "day"}}})
    policy.check_budget([], "ana", 0.5)
    with pytest.raises(PolicyError, match="budget"):
        policy.check_budget([], "ana", 2.0)


def test_budget_periods_start_on_utc_boundaries():
    now = datetime.datetime(2026, 11, 19, 15, 30, tzinfo=datetime.timezone.utc)  # a Thursday
    assert period_start("day", now) == now.replace(hour=0, minute=0)
    assert period_start("week", now).day == 16
    assert period_start("month", now).day == 1


@pytest.mark.parametrize("groups,says", [
    ({"students": ["gcp"]}, r"Policy.groups\['students'\] must be a dict"),
    ({"students": {"gpu": ["L4"]}}, r"unknown rule 'gpu'; did you mean 'gpus'\?"),
    ({"students": {"providers": "gcp"}}, r"\['providers'\] must be a list of names"),
    ({"students": {"providers": ["paperspace"]}}, r"unknown provider 'paperspace'"),
    ({"students": {"regions": [""]}}, r"\['regions'\] must be a list of names"),
    ({"students": {"gpus": [1]}}, r"\['gpus'\] must be a list of names"),
    ({"students": {"max_gpus": -1}}, r"\['max_gpus'\] must be a whole number"),
    ({"students": {"max_gpus": 1.5}}, r"\['max_gpus'\] must be a whole number"),
    ({"students": {"max_ray_workers": "two"}}, r"\['max_ray_workers'\] must be a whole number"),
    ({"students": {"max_price_hour": "cheap"}}, r"\['max_price_hour'\] must be a number"),
    ({"students": {"budget": 50}}, r"\['budget'\] must be \{'usd'"),
    ({"students": {"budget": {"usd": -5}}}, r"\['budget'\]\['usd'\] must be a number"),
    ({"students": {"budget": {"usd": 5, "period": "year"}}}, r"\['budget'\]\['period'\] must be one of day, week, month"),
    ({"": {}}, r"keys must be group names"),
])
def test_bad_policy_config_names_the_key(groups, says):
    with pytest.raises(TraitError, match=says):
        Policy(groups=groups)


def test_policy_comes_from_traitlets_config(offers):
    c = Config()
    c.Policy.groups = {"default": {"providers": ["gcp"], "gpus": ["T4"]}}
    policy = Policy(config=c)
    assert {(o.provider, o.gpu) for o in policy.filter_offers(offers, [])} == {("gcp", "T4")}


def test_a_servers_price_counts_its_ray_workers(offers):
    from dataclasses import replace

    from cloudhop.spawner.options import LaunchRequest, RayRequest
    from cloudhop.spawner.policy import server_price

    base = offers[0]
    notebook = replace(base, price_hour=1.0, spot_price_hour=0.4)
    worker, dearer = replace(base, price_hour=0.5, spot_price_hour=0.2), replace(base, price_hour=9.0)
    ray = RayRequest(workers=3)
    assert server_price(LaunchRequest(), notebook) == 1.0
    assert server_price(LaunchRequest(ray=ray), notebook, [worker, dearer]) == 2.5  # the first worker offer
    assert server_price(LaunchRequest(ray=ray, spot=True), notebook, [worker]) == pytest.approx(1.0)
    assert server_price(LaunchRequest(ray=RayRequest(workers=0)), notebook, [worker]) == 1.0
    # a price the policy cannot know is not made up
    assert server_price(LaunchRequest(ray=ray), replace(base, price_hour=None), [replace(base, price_hour=None)]) is None



@pytest.mark.parametrize("groups,says", [
    ({"students": {"images": "quay.io/jupyter/*"}}, r"\['images'\] must be a list of image names or patterns"),
    ({"students": {"images": [""]}}, r"\['images'\] must be a list of names"),
    ({"students": {"image_override": "yes"}}, r"\['image_override'\] must be True or False"),
    ({"students": {"max_servers": -1}}, r"\['max_servers'\] must be a whole number"),
    ({"students": {"max_server": 1}}, r"unknown rule 'max_server'; did you mean 'max_servers'\?"),
])
def test_bad_limits_config_names_the_key(groups, says):
    with pytest.raises(TraitError, match=says):
        Policy(groups=groups)


def test_images_are_exact_names_or_patterns_and_none_without_a_list(offers):
    policy = Policy(groups={"default": {"images": ["nvcr.io/nvidia/pytorch:*", "quay.io/jupyter/scipy-notebook:2024-05-27"]},
                            "free": {"images": "*"}})
    ok = {"provider": "gcp", "gpu": "T4", "gpu_count": 1}
    for image in ("nvcr.io/nvidia/pytorch:24.05-py3", "quay.io/jupyter/scipy-notebook:2024-05-27"):
        assert check({**ok, "image": image}, offers, policy, []).image == image
    for image in ("nvcr.io/nvidia/pytorch-evil:1", "quay.io/jupyter/scipy-notebook:latest"):
        with pytest.raises(PolicyError) as err:
            check({**ok, "image": image}, offers, policy, [])
        assert (err.value.field, err.value.rule, err.value.status) == ("image", "images", 403)
    assert check({**ok, "image": "docker.io/x/y:1"}, offers, policy, ["free"]).image == "docker.io/x/y:1"
    # no rule: no image option, but the provider's default image is fine
    with pytest.raises(PolicyError, match="allows no image option"):
        check({**ok, "image": "docker.io/x/y:1"}, offers, Policy(), [])
    assert check(ok, offers, Policy(), []).image is None


def test_replacing_a_profiles_image_needs_a_group_that_allows_both():
    policy = Policy(groups={"a": {"images": ["x/*"]}, "b": {"images": ["y/*"], "image_override": True}})
    assert not policy.may_replace_profile_image("x/1", ["a", "b"]), "rules are not mixed across groups"
    assert policy.may_replace_profile_image("y/1", ["a", "b"])
    assert not policy.may_replace_profile_image(None, ["b"])


def test_totals_count_the_users_other_servers(offers):
    from cloudhop.spawner.limits import Usage
    from cloudhop.spawner.options import LaunchRequest, RayRequest

    policy = Policy(groups={"default": {"max_gpus": 4, "max_servers": 3, "max_price_hour": 10}})
    two = LaunchRequest(gpu="T4", gpu_count=2)
    policy.check_request(two, [], 5.0, Usage(servers=2, gpus=2, price_hour=5.0))
    with pytest.raises(PolicyError, match="2 GPU.s. for this server and 3 on your other servers") as err:
        policy.check_request(two, [], 1.0, Usage(servers=1, gpus=3))
    assert (err.value.field, err.value.rule) == ("gpu_count", "max_gpus")
    with pytest.raises(PolicyError) as err:
        policy.check_request(LaunchRequest(ray=RayRequest(workers=2, gpu="T4", gpu_count=1)), [], 1.0, Usage(1, 3))
    assert (err.value.field, err.value.rule) == ("ray.gpu_count", "max_gpus")
    with pytest.raises(PolicyError, match=r"at most 3 at once \(max_servers\)") as err:
        policy.check_request(LaunchRequest(), [], 0.0, Usage(servers=3))
    assert err.value.field == "servers"
    with pytest.raises(PolicyError, match=r"\$6.00/h for this server and \$5.00/h for your other servers"):
        policy.check_request(LaunchRequest(), [], 6.0, Usage(servers=1, price_hour=5.0))
    # a server that adds neither GPUs nor cost is not refused for what the others hold
    policy.check_request(LaunchRequest(), [], 0.0, Usage(servers=1, gpus=9, price_hour=50.0))


def test_the_budget_counts_an_hour_of_the_other_servers_too():
    from cloudhop.spawner.limits import Usage

    policy = Policy(groups={"default": {"budget": {"usd": 10, "period": "day"}}})
    calls = []
    policy.spend = lambda user, group, since: calls.append(group) or 4.0
    spent: dict = {}
    policy.check_budget([], "ana", 3.0, others=Usage(servers=1, price_hour=3.0), spent=spent)
    with pytest.raises(PolicyError, match=r"\$3.00/h for this server and \$3.50/h for your other servers is more "
                                          r"than the \$6.00 left"):
        policy.check_budget([], "ana", 3.0, others=Usage(servers=1, price_hour=3.5), spent=spent)
    assert calls == ["default"], "the spend hook is asked once per group across checks that share 'spent'"
