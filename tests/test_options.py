"""User options: one validation step that names the field and the valid choices."""

from __future__ import annotations

import pytest

from cloudhop.spawner.offers import Offer
from cloudhop.spawner.options import OptionError, options_from_form, parse_options

OFFERS = [
    Offer("local", "local", "cpu", "none", 0, price_hour=0.0),
    Offer("local", "local", "T4x1", "T4", 1, gpu_memory_gib=15, price_hour=0.0),
    Offer("local", "local", "T4x2", "T4", 2, gpu_memory_gib=15, price_hour=0.0),
    Offer("aws", "us-east-1", "g4dn.xlarge", "T4", 1, price_hour=0.526, spot_price_hour=0.2, zones=("use1-az1",)),
    Offer("aws", "us-east-1", "p4de.24xlarge", "A100-80GB", 8, price_hour=40.9),
]


def parse(**raw):
    return parse_options(raw, OFFERS, providers=["local", "aws"])


def refused(field, **raw) -> str:
    with pytest.raises(OptionError) as err:
        parse(**raw)
    assert err.value.field == field, str(err.value)
    return str(err.value)


def test_defaults_and_normalisation():
    req = parse()
    assert (req.provider, req.gpu, req.gpu_count, req.spot, req.ray) == ("auto", "none", 0, False, None)
    req = parse(provider="aws", region="us-east-1", gpu="t4")
    assert (req.gpu, req.gpu_count) == ("T4", 1), "GPU names match case-insensitively; a GPU implies one"
    req = parse(provider="local", ray={"workers": 2, "gpu": "t4", "gpu_count": 1})
    assert req.ray.workers == 2 and req.ray.gpu == "T4"


def test_did_you_mean_and_choices():
    msg = refused("provider", provider="awz")
    assert "did you mean 'aws'" in msg and "Valid choices: 'auto', 'aws', 'local'." in msg
    assert "did you mean 'us-east-1'" in refused("region", provider="aws", region="us-east-2")
    assert "did you mean 'A100-80GB'" in refused("gpu", gpu="a100-80gb-x")
    assert "available counts: 1, 2" in refused("gpu_count", provider="local", gpu="T4", gpu_count=3)
    assert "did you mean 'g4dn.xlarge'" in refused("instance_type", provider="aws", gpu="T4", instance_type="g4dn.xlarg")


@pytest.mark.parametrize("raw, field", [
    ({"gpu_count": -1, "gpu": "T4"}, "gpu_count"),
    ({"gpu_count": 1.5, "gpu": "T4"}, "gpu_count"),
    ({"gpu_count": True, "gpu": "T4"}, "gpu_count"),
    ({"gpu_count": 100000, "gpu": "T4"}, "gpu_count"),
    ({"gpu": "none", "gpu_count": 2}, "gpu_count"),
    ({"spot": "true"}, "spot"),
    ({"spot": 1}, "spot"),
    ({"ray": []}, "ray"),
    ({"ray": {"workers": "many"}}, "ray.workers"),
    ({"ray": {"workers": 1, "gpus": 1}}, "ray.gpus"),
    ({"ray": {"workers": 1, "gpu": "none", "gpu_count": 1}}, "ray.gpu_count"),
    ({"ray": {"workers": 1, "gpu": "Z9"}}, "ray.gpu"),
    ({"region": "<b>x</b>"}, "region"),
    ({"region": "a/../../b"}, "region"),
    ({"zone": 7}, "zone"),
    ({"image": "x y"}, "image"),
    ({"restore": "../../etc/passwd"}, "restore"),
    ({"provider": ["aws"]}, "provider"),
    ({"spot": True, "provider": "aws", "gpu": "A100-80GB", "gpu_count": 8}, "spot"),
])
def test_bad_values_name_the_field(raw, field):
    msg = refused(field, **raw)
    assert "<b>" not in msg and "<script" not in msg


def test_unknown_key_is_refused_with_a_suggestion():
    with pytest.raises(OptionError) as err:
        parse(gpu_cuont=1)
    assert err.value.field == "gpu_cuont" and "did you mean 'gpu_count'" in str(err.value)


@pytest.mark.parametrize("raw", [{"<script>x": 1}, {"ray": {"workers": 1, "<img src=x>": 1}}])
def test_unknown_markup_key_is_escaped_in_field_and_message(raw):
    with pytest.raises(OptionError) as err:
        parse(**raw)
    assert "<script" not in str(err.value) and "<img" not in str(err.value)
    assert "&lt;" in err.value.field


def test_not_an_object():
    with pytest.raises(OptionError) as err:
        parse_options(["aws"], OFFERS)
    assert err.value.field == "user_options"


def test_form_parsing_is_pure():
    form = {"provider": ["aws"], "region": ["us-east-1"], "gpu": ["T4"], "gpu_count": ["1"],
            "spot": ["on"], "ray_workers": ["2"], "ray_gpu": ["none"], "ray_gpu_count": ["0"]}
    before = {k: list(v) for k, v in form.items()}
    opts = options_from_form(form)
    assert form == before
    assert opts == {"provider": "aws", "region": "us-east-1", "gpu": "T4", "gpu_count": 1, "spot": True,
                    "ray": {"workers": 2, "gpu": "none", "gpu_count": 0}}
    assert parse(**opts).spot is True
    assert options_from_form({"ray_workers": ["0"]}) == {"spot": False}
