"""c.CloudhopMigration.* settings: a bad value fails when the server loads them, naming the setting."""

from __future__ import annotations

import json

import pytest
from traitlets import TraitError
from traitlets.config import Config

from cloudhop.extensions.server import CloudhopMigration


def settings_from(**values):
    return CloudhopMigration(config=Config({"CloudhopMigration": values})).settings()


def test_defaults_and_sensible_values_are_accepted():
    s = settings_from(store_url="http://127.0.0.1:10101/services/cloudhop-store/", stop_delay=0,
                      kernel_timeout=0.5, max_file_bytes=1 << 20, exclude=["*.tmp"])
    assert (s.stop_delay, s.kernel_timeout, s.excludes.max_file_bytes, s.excludes.patterns) == \
        (0, 0.5, 1 << 20, ("*.tmp",))
    assert settings_from().launch_timeout == 900


@pytest.mark.parametrize("name, value, must", [
    ("launch_timeout", -1, "a number of seconds above 0"),
    ("launch_timeout", 0, "a number of seconds above 0"),
    ("restore_timeout", -30.0, "a number of seconds above 0"),
    ("restore_timeout", float("inf"), "a number of seconds above 0"),
    ("kernel_timeout", float("nan"), "a number of seconds above 0"),
    ("kernel_timeout", 0, "a number of seconds above 0"),
    ("stop_delay", -0.5, "a number of seconds, 0 or more"),
    ("save_timeout", -1, "a number of seconds, 0 or more"),
    ("save_timeout", float("nan"), "a number of seconds, 0 or more"),
    ("max_file_bytes", 0, "a number of bytes above 0"),
    ("max_file_bytes", -1024, "a number of bytes above 0"),
    ("max_file_bytes", float("inf"), "a number of bytes above 0"),
    ("max_file_bytes", float("nan"), "a number of bytes above 0"),
    ("store_url", "cloudhop-store", "an http:// or https:// URL"),
    ("store_url", "ftp://hub/services/cloudhop-store/", "an http:// or https:// URL"),
    ("exclude", ["*.tmp", "  "], "a list of non-empty glob patterns"),
])
def test_a_bad_value_names_the_setting_and_what_would_be_valid(name, value, must):
    with pytest.raises(TraitError, match=f"^c.CloudhopMigration.{name} must be {must}, not "):
        settings_from(**{name: value})


# -- the same settings written in the hub's config (cloudhop.spawner.server_settings) -----

def test_the_hubs_section_is_checked_and_passed_to_every_server():
    from cloudhop.spawner.server_settings import ENV, forward

    c = Config()
    c.Spawner.environment = {"KEEP": "1"}
    c.CloudhopMigration.stop_delay = 30
    c.CloudhopMigration.exclude = ["*.tmp", "scratch/**"]
    assert forward(c) == {"CloudhopMigration": {"stop_delay": 30, "exclude": ["*.tmp", "scratch/**"]}}
    assert c.Spawner.environment["KEEP"] == "1"
    assert json.loads(c.Spawner.environment[ENV]) == {"CloudhopMigration": {"exclude": ["*.tmp", "scratch/**"],
                                                                            "stop_delay": 30}}
    empty = Config()
    assert forward(empty) == {} and "environment" not in empty.Spawner


@pytest.mark.parametrize("values, message", [
    ({"stop_delay": -1}, "^c.CloudhopMigration.stop_delay must be a number of seconds, 0 or more, not -1"),
    ({"kernel_timeout": 0}, "^c.CloudhopMigration.kernel_timeout must be a number of seconds above 0"),
    ({"exclude": [""]}, "^c.CloudhopMigration.exclude must be a list of non-empty glob patterns"),
    ({"stop_dealy": 5}, "^c.CloudhopMigration has no setting 'stop_dealy'; its settings are .*stop_delay"),
])
def test_a_bad_value_in_the_hubs_config_stops_the_hub_naming_it(values, message):
    from cloudhop.spawner.server_settings import forward

    c = Config({"CloudhopMigration": values})
    with pytest.raises((TraitError, ValueError), match=message):
        forward(c)
    assert "environment" not in c.Spawner


def test_the_server_applies_the_hubs_settings_under_its_own(monkeypatch):
    from cloudhop.spawner.server_settings import ENV

    monkeypatch.setenv(ENV, json.dumps({"CloudhopMigration": {"stop_delay": 30, "kernel_timeout": 77,
                                                              "exclude": ["*.tmp"]}}))
    s = settings_from(stop_delay=5)  # the server's own config: c.Spawner.args, a config file
    assert (s.stop_delay, s.kernel_timeout, s.exclude) == (5, 77, ["*.tmp"])
    monkeypatch.setenv(ENV, json.dumps({"CloudhopMigration": {"max_file_bytes": -1}}))
    with pytest.raises(TraitError, match="^c.CloudhopMigration.max_file_bytes must be a number of bytes above 0"):
        settings_from()
    monkeypatch.setenv(ENV, "{not json")
    with pytest.raises(ValueError, match="CLOUDHOP_SERVER_SETTINGS must be the JSON the hub writes"):
        settings_from()


def test_the_hubs_section_joins_an_environment_built_with_update():
    from cloudhop.spawner.server_settings import ENV, forward

    c = Config()
    c.Spawner.environment.update({"CLOUDHOP_STORE_LOCAL_URL": "http://127.0.0.1:1/"})  # as the store's setup does
    c.CloudhopMigration.stop_delay = 0
    forward(c)
    env = c.Spawner.environment.get_value({})
    assert env["CLOUDHOP_STORE_LOCAL_URL"] == "http://127.0.0.1:1/" and ENV in env
