"""Numeric settings of the cloud providers and the spawner refuse nonsense when the
config is loaded, with an error that names the setting as the operator wrote it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from traitlets import TraitError
from traitlets.config import Config

from cloudhop.spawner import CloudhopSpawner
from cloudhop.spawner.providers.aws import AWSProvider
from cloudhop.spawner.providers.gcp import GCPProvider
from cloudhop.spawner.providers.oci import OCIProvider

BAD = [
    # (class configured, class named in the message, setting, bad value)
    (GCPProvider, "CloudProvider", "launch_attempts", 0),
    (AWSProvider, "CloudProvider", "launch_attempts", -3),
    (OCIProvider, "CloudProvider", "launch_attempts", True),
    (GCPProvider, "CloudProvider", "status_cache_seconds", -1.0),
    (GCPProvider, "CloudProvider", "status_cache_seconds", math.nan),
    (GCPProvider, "CloudProvider", "retry_base_delay", -0.5),
    (AWSProvider, "CloudProvider", "retry_base_delay", math.inf),
    (AWSProvider, "CloudProvider", "terminate_timeout", 0),
    (OCIProvider, "CloudProvider", "fresh_node_seconds", -10),
    (GCPProvider, "CloudProvider", "available_cache_seconds", -1),
    (AWSProvider, "AWSProvider", "api_attempts", 0),
    (OCIProvider, "OCIProvider", "api_attempts", -1),
    (GCPProvider, "GCPProvider", "operation_timeout", 0),
    (GCPProvider, "GCPProvider", "operation_timeout", -5.0),
]


@pytest.mark.parametrize("cls, owner, name, value", BAD, ids=lambda v: getattr(v, "__name__", repr(v)))
def test_bad_numbers_are_refused_naming_the_setting(cls, owner, name, value):
    with pytest.raises(TraitError) as err:
        cls(**{name: value})
    assert str(err.value).startswith(f"c.{owner}.{name} must be "), str(err.value)
    assert repr(value) in str(err.value)


@pytest.mark.parametrize("section", ["CloudProvider", "GCPProvider"])
def test_a_bad_number_in_the_config_file_is_refused(section):
    c = Config()
    c[section].launch_attempts = 0
    with pytest.raises(TraitError, match=r"c\.CloudProvider\.launch_attempts must be a whole number of attempts >= 1, not 0"):
        GCPProvider(config=c)


def test_a_wrong_type_names_the_setting_too():
    with pytest.raises(TraitError, match="launch_attempts"):
        GCPProvider(launch_attempts="many")


def test_good_numbers_are_kept():
    p = GCPProvider(launch_attempts=1, status_cache_seconds=0, retry_base_delay=0, terminate_timeout=0.5,
                    fresh_node_seconds=0, available_cache_seconds=0, operation_timeout=1)
    assert (p.launch_attempts, p.status_cache_seconds, p.terminate_timeout, p.operation_timeout) == (1, 0, 0.5, 1)
    assert AWSProvider(api_attempts=1).api_attempts == 1 and OCIProvider(api_attempts=2).api_attempts == 2


def new_spawner(**kw):
    return CloudhopSpawner(user=SimpleNamespace(name="ada", url="/user/ada/", escaped_name="ada"), **kw)


@pytest.mark.parametrize("value", [0, -1.0, math.nan])
def test_spawner_poll_interval_must_be_positive(value):
    with pytest.raises(TraitError, match=r"^c\.CloudhopSpawner\.node_poll_interval must be a number of seconds > 0"):
        new_spawner(node_poll_interval=value)
    assert new_spawner(node_poll_interval=0.01).node_poll_interval == 0.01


@pytest.mark.parametrize("value", [0, -0.1, math.nan, math.inf])
def test_spawner_listen_poll_interval_must_be_positive(value):
    with pytest.raises(TraitError, match=r"^c\.CloudhopSpawner\.listen_poll_interval must be a number of seconds > 0"):
        new_spawner(listen_poll_interval=value)
    assert new_spawner(listen_poll_interval=0.5).listen_poll_interval == 0.5


@pytest.mark.parametrize("cls, name, value, must", [
    ("KubernetesProvider", "api_retries", 0, "a whole number of attempts >= 1"),
    ("KubernetesProvider", "node_port", 0, "a port number >= 1"),
    ("KubernetesProvider", "retry_delay", -1.0, "a number of seconds >= 0"),
    ("KubernetesProvider", "refresh_interval", math.nan, "a number of seconds >= 0"),
    ("KubernetesProvider", "delete_grace_period", -1, "a whole number of seconds >= 0"),
    ("LocalProvider", "stop_timeout", -1.0, "a number of seconds >= 0"),
    ("LocalProvider", "cpu_price_hour", math.inf, "a number of USD per hour >= 0"),
])
def test_kubernetes_and_local_numbers_name_the_setting(cls, name, value, must):
    from cloudhop.spawner.providers.kubernetes import KubernetesProvider
    from cloudhop.spawner.providers.local import LocalProvider

    provider = {"KubernetesProvider": KubernetesProvider, "LocalProvider": LocalProvider}[cls]
    with pytest.raises(TraitError, match=rf"^c\.{cls}\.{name} must be {must}, not "):
        provider(**{name: value})
