"""One name per concept across the providers (docs/clouds.md): the settings that were
spelled differently per cloud have one name now, and each old name still works - it
sets the new one, reads it back, and logs a warning naming both."""

from __future__ import annotations

import logging

import pytest
from traitlets import TraitError
from traitlets.config import Config

from cloudhop.spawner.providers.aws import AWSProvider
from cloudhop.spawner.providers.gcp import GCPProvider
from cloudhop.spawner.providers.kubernetes import KubernetesProvider
from cloudhop.spawner.providers.oci import OCIProvider
from tests.cloudkit import cheapest, spec_for

RENAMED = [
    # (class, old name, new name, a value that is not the default)
    (AWSProvider, "associate_public_ip", "public_ip", False),
    (GCPProvider, "external_ip", "public_ip", False),
    (OCIProvider, "assign_public_ip", "public_ip", False),
    (AWSProvider, "endpoint_url", "api_endpoint", "http://127.0.0.1:5000"),
    (OCIProvider, "service_endpoint", "api_endpoint", "http://127.0.0.1:5001"),
    (OCIProvider, "boot_volume_gb", "disk_gb", 200),
    (KubernetesProvider, "api_retries", "api_attempts", 7),
    (KubernetesProvider, "retry_delay", "retry_base_delay", 0.25),
    (KubernetesProvider, "default_image", "singleuser_image", "example/singleuser:1"),
]
ids = [f"{cls.__name__}.{old}" for cls, old, *_ in RENAMED]


def deprecations(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "deprecated" in r.getMessage()]


@pytest.mark.parametrize("cls, old, new, value", RENAMED, ids=ids)
def test_the_old_name_sets_the_new_one_and_warns(cls, old, new, value, caplog):
    caplog.set_level(logging.WARNING)
    provider = cls(**{old: value})
    assert getattr(provider, new) == value and getattr(provider, old) == value
    owner = cls.class_traits()[old].this_class.__name__
    assert deprecations(caplog) == [f"c.{owner}.{old} is deprecated: use c.{owner}.{new}"]


@pytest.mark.parametrize("cls, old, new, value", RENAMED, ids=ids)
def test_the_old_name_works_in_a_config_file(cls, old, new, value, caplog):
    caplog.set_level(logging.WARNING)
    c = Config()
    c[cls.__name__][old] = value
    provider = cls(config=c)
    assert getattr(provider, new) == value
    assert len(deprecations(caplog)) == 1 and old in deprecations(caplog)[0]


@pytest.mark.parametrize("cls, old, new, value", RENAMED, ids=ids)
def test_the_new_name_is_read_through_the_old_and_does_not_warn(cls, old, new, value, caplog):
    caplog.set_level(logging.WARNING)
    provider = cls(**{new: value})
    assert getattr(provider, old) == value
    assert deprecations(caplog) == []


def test_one_name_per_concept_across_the_vm_providers():
    for cls in (AWSProvider, GCPProvider, OCIProvider):
        names = set(cls.class_trait_names(config=True))
        assert {"public_ip", "api_endpoint", "singleuser_image", "retry_base_delay"} <= names, cls
    assert {"disk_gb"} <= set(GCPProvider.class_trait_names()) & set(OCIProvider.class_trait_names())
    kube = set(KubernetesProvider.class_trait_names(config=True))
    assert {"api_attempts", "retry_base_delay", "singleuser_image"} <= kube
    assert "api_attempts" in AWSProvider.class_trait_names() and "api_attempts" in OCIProvider.class_trait_names()


def test_a_bad_value_under_the_old_name_is_refused_naming_it():
    with pytest.raises(TraitError, match=r"^c\.OCIProvider\.boot_volume_gb must be a whole number of GB"):
        OCIProvider(boot_volume_gb=40000)
    with pytest.raises(TraitError, match=r"^c\.AWSProvider\.endpoint_url must be"):
        AWSProvider(endpoint_url="localhost:5000")
    with pytest.raises(TraitError, match="associate_public_ip"):
        AWSProvider(associate_public_ip="yes please")


def test_the_old_public_ip_setting_still_reaches_the_launch_request():
    provider = AWSProvider(associate_public_ip=False, image_id="ami-0123456789abcdef0")
    spec = spec_for(cheapest("aws", "us-east-1", "T4", 1))
    params = provider.run_instances_params(spec, provider.node_tags(spec), "#cloud-config")
    assert params["NetworkInterfaces"][0]["AssociatePublicIpAddress"] is False


def test_every_cloud_checks_its_api_endpoint_with_the_one_check_naming_its_own_setting():
    """``api_endpoint`` is checked once, on CloudProvider; each cloud's error still names
    that cloud's setting (and an old name, the old name), and a good URL is kept."""
    from cloudhop.spawner.providers import PROVIDERS, provider_class
    from cloudhop.spawner.providers.cloud import CloudProvider

    clouds = [provider_class(name) for name in PROVIDERS]
    clouds = [cls for cls in clouds if issubclass(cls, CloudProvider)]
    assert {"aws", "gcp", "oci", "azure", "lambda", "digitalocean", "yandex"} <= {c.name for c in clouds}
    for cls in clouds:
        assert cls._valid_endpoint is CloudProvider._valid_endpoint, cls  # no cloud has its own
        with pytest.raises(TraitError, match=rf"^c\.{cls.__name__}\.api_endpoint must be an http"):
            cls(api_endpoint="localhost:5000")
        assert cls(api_endpoint="http://127.0.0.1:5000").api_endpoint == "http://127.0.0.1:5000"
    with pytest.raises(TraitError, match=r"^c\.OCIProvider\.service_endpoint must be an http"):
        OCIProvider(service_endpoint="ftp://example.org")
