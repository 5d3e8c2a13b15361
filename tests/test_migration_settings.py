"""c.CloudhopMigration.* settings: a bad value fails when the server loads them, naming the setting."""

from __future__ import annotations

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
