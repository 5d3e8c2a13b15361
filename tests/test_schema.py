"""One options schema and one provider registry: the spawner, a move's shape check and
every list of provider names agree, because they are built from the same two tables."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import pytest
from traitlets import TraitError

from cloudhop.extensions import migrate
from cloudhop.spawner import options, policy, providers, schema
from cloudhop.spawner.catalog import CATALOG_PROVIDERS, LIVE_PROVIDERS
from cloudhop.spawner.catalog.loader import DATA_DIR
from cloudhop.spawner.offers import Offer
from cloudhop.spawner.schema import MAX_GPUS, MAX_RAY_WORKERS, OptionError

OFFERS = [
    Offer("aws", "us-east-1", "c5.large", "none", 0, price_hour=0.1),
    Offer("aws", "us-east-1", "g4dn.xlarge", "T4", 1, price_hour=0.5, spot_price_hour=0.2),
]


def spawner_error(raw) -> OptionError:
    with pytest.raises(OptionError) as err:
        options.parse_options(raw, OFFERS, providers=["aws"])
    return err.value


def move_error(raw) -> OptionError:
    with pytest.raises(OptionError) as err:
        migrate.check_options(raw)
    return err.value


# -- one error type ------------------------------------------------------------------


def test_one_option_error_with_field_message_and_status():
    assert migrate.OptionError is options.OptionError is schema.OptionError
    err = OptionError("gpu_count", "must be from 0 to 16, not 17")
    assert str(err) == "gpu_count: must be from 0 to 16, not 17"
    assert (err.field, err.message, err.status, err.status_code) == (
        "gpu_count", "must be from 0 to 16, not 17", 400, 400)
    with pytest.raises(AttributeError):
        err.status_code = 500  # an alias of status, read-only
    relayed = OptionError("", "region: unknown region 'x'", 403)
    assert str(relayed) == "region: unknown region 'x'" and relayed.status == 403


def test_policy_error_is_an_option_error_with_status_403():
    err = policy.PolicyError("gpu", "gpus", "students", "'H100' is not allowed")
    assert isinstance(err, OptionError)
    assert (err.status, err.status_code, err.rule, err.group) == (403, 403, "gpus", "students")
    assert str(err) == "gpu: 'H100' is not allowed"


# -- the same limits, names and messages ---------------------------------------------


@pytest.mark.parametrize("raw", [
    {"gpu": "T4", "gpu_count": MAX_GPUS + 1},
    {"gpu": "T4", "gpu_count": 64},
    {"gpu": "T4", "gpu_count": "lots"},
    {"gpu": "T4", "gpu_count": True},
    {"region": "us/east"},
    {"region": "<b>x</b>"},
    {"region": 7},
    {"zone": "a/../b"},
    {"gpu": "T 4"},
    {"instance_type": "g4dn/xlarge"},
    {"image": "Upper/Case:tag"},
    {"spot": "yes"},
    {"provider": ["aws"]},
    {"ray": []},
    {"ray": {"workers": MAX_RAY_WORKERS + 1}},
    {"ray": {"workers": "many"}},
    {"ray": {"workers": 1, "gpus": 1}},
    {"ray": {"workers": 1, "gpu": "T4", "gpu_count": MAX_GPUS + 1}},
    {"<script>": 1},
    [],
])
def test_a_move_and_a_spawn_refuse_a_bad_shape_alike(raw):
    on_spawn, on_move = spawner_error(raw), move_error(raw)
    assert on_move.field == on_spawn.field
    assert on_move.status == on_spawn.status == 400
    assert "<b>" not in str(on_move) and "<script" not in str(on_move)
    if not (isinstance(raw, dict) and any(k not in schema.FIELDS for k in raw)):
        assert str(on_move) == str(on_spawn)
    else:  # an unknown key: the same message; the choices (and so the closest match)
        # differ by what only one takes: "restore" a spawn, accept_skipped and strict a move
        def head(err):
            return str(err).split(";")[0].split(" Valid")[0]

        assert head(on_move) == head(on_spawn)
        assert "restore" in str(on_spawn) and "restore" not in str(on_move)


def test_a_move_takes_what_a_spawn_takes():
    raw = {"provider": "aws", "region": "us-east-1", "gpu": "T4", "gpu_count": MAX_GPUS,
           "spot": True, "image": "ghcr.io/org/img:1.2", "ray": {"workers": MAX_RAY_WORKERS,
                                                                  "gpu": "T4", "gpu_count": 1}}
    assert migrate.check_options(raw) == raw
    # absent values are left out; a count may come as digits, as a form sends it
    assert migrate.check_options({"region": "", "zone": None, "gpu_count": "2", "ray": False}) == {"gpu_count": 2}


def test_a_move_sets_restore_itself():
    assert move_error({"restore": "abc"}).field == "restore"
    assert spawner_error({"restore": "../x"}).field == "restore"  # a spawn takes a snapshot id


def test_the_limits_are_the_schemas():
    assert schema.SCHEMA["gpu_count"].high == schema.RAY_SCHEMA["gpu_count"].high == MAX_GPUS
    assert schema.RAY_SCHEMA["workers"].high == MAX_RAY_WORKERS
    assert options.MAX_GPUS == MAX_GPUS and options.MAX_RAY_WORKERS == MAX_RAY_WORKERS
    assert "from 0 to 16" in str(move_error({"gpu_count": 17}))


# -- adding an option is one place ---------------------------------------------------


def test_the_request_carries_every_option_of_the_schema():
    assert tuple(f.name for f in dataclasses.fields(options.LaunchRequest)) == schema.FIELDS
    assert tuple(f.name for f in dataclasses.fields(options.RayRequest)) == schema.RAY_FIELDS


def test_the_form_reads_every_option_of_the_schema():
    form = {"provider": ["aws"], "region": ["us-east-1"], "zone": ["use1-az1"],
            "instance_type": ["g4dn.xlarge"], "gpu": ["T4"], "gpu_count": ["1"], "spot": ["on"],
            "image": ["img:1"], "restore": ["snap1"], "ray_workers": ["2"], "ray_gpu": ["T4"],
            "ray_gpu_count": ["1"]}
    opts = options.options_from_form(form)
    assert set(opts) == set(schema.FIELDS)
    assert set(opts["ray"]) == set(schema.RAY_FIELDS)


# -- one registry of provider names --------------------------------------------------


def test_every_list_of_providers_comes_from_the_registry():
    from cloudhop.hub import offers_cli, reaper
    from cloudhop.spawner.spawner import CloudhopSpawner

    names = tuple(providers.REGISTRY)
    assert providers.PROVIDERS == options.PROVIDERS == names
    assert set(CATALOG_PROVIDERS) | set(LIVE_PROVIDERS) == set(names)
    assert not set(CATALOG_PROVIDERS) & set(LIVE_PROVIDERS)
    assert set(providers.DEFAULT_LISTED) <= set(names)
    help_text = CloudhopSpawner.class_traits()["providers"].help
    for spec in providers.SPECS:
        assert f'"{spec.name}"' in help_text
        assert spec.class_name in reaper.CONFIG_SECTIONS
    # a policy may name every registered provider, and no other
    assert policy.parse_group_policy("g", {"providers": list(names)}).providers == names
    with pytest.raises(TraitError, match="known: " + ", ".join(names)):
        policy.parse_group_policy("g", {"providers": ["paperspace"]})
    assert offers_cli.enabled_providers(offers_cli.Config(), None) == list(providers.DEFAULT_LISTED)


def test_each_registered_provider_is_its_class():
    for spec in providers.SPECS:
        cls = providers.provider_class(spec.name)
        assert cls.__name__ == spec.class_name and cls.name == spec.name
        assert (DATA_DIR / f"{spec.name}.csv").exists() == spec.catalog


def _imports(module: str) -> set[str]:
    code = textwrap.dedent(f"""
        import sys
        before = set(sys.modules)
        import {module}
        print(" ".join(sorted(m.split(".")[0] for m in set(sys.modules) - before)))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_registry_and_the_schema_need_only_the_standard_library():
    for module in ("cloudhop.spawner.providers", "cloudhop.spawner.schema"):
        third_party = _imports(module) - set(sys.stdlib_module_names) - {"cloudhop"}
        assert not third_party, f"{module} imports {third_party}"


@pytest.mark.parametrize("field, value", [("region", "us-east-1\n"), ("image", "python:3\n"),
                                          ("restore", "snap1\n"), ("zone", "a\r\n")])
def test_a_trailing_newline_is_not_a_valid_name(field, value):
    """``$`` matches before a final newline; names are matched whole."""
    with pytest.raises(schema.OptionError) as err:
        schema.check_shape({field: value}, schema.OPTIONS)
    assert err.value.field == field
