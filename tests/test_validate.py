"""The one module that checks operator settings: rules, and messages naming the setting."""

from __future__ import annotations

import math

import pytest
from traitlets import Float, TraitError, Unicode, validate
from traitlets.config import Config, Configurable

from cloudhop.spawner.validate import (
    Number, SettingError, check_number, check_url, require_number, require_url,
)


class Base(Configurable):
    delay = Float(1.0).tag(config=True)
    endpoint = Unicode("").tag(config=True)

    @validate("delay")
    def _delay(self, proposal):
        return check_number(proposal, minimum=0, strict=True)

    @validate("endpoint")
    def _endpoint(self, proposal):
        return check_url(proposal)


class Child(Base):
    """Inherits Base's settings: a bad value is named as the class that declares it."""


def test_a_setting_error_is_both_a_trait_error_and_a_value_error():
    with pytest.raises(SettingError) as err:
        require_number(-1, "c.X.y", minimum=0)
    assert isinstance(err.value, TraitError) and isinstance(err.value, ValueError)


@pytest.mark.parametrize("value, rule, message", [
    (-1, dict(minimum=0), "c.X.y must be a number of seconds >= 0, not -1"),
    (0, dict(minimum=0, strict=True), "c.X.y must be a number of seconds > 0, not 0"),
    (2.5, dict(minimum=1, integer=True, unit="attempts"), "c.X.y must be a whole number of attempts >= 1, not 2.5"),
    (0, dict(minimum=1, integer=True, what="a port number"), "c.X.y must be a port number >= 1, not 0"),
    (70000, dict(minimum=0, maximum=65535, integer=True, what="a port number"),
     "c.X.y must be a port number from 0 to 65535, not 70000"),
    (True, dict(minimum=0), "c.X.y must be a number of seconds >= 0, not True"),
    ("5", dict(minimum=0), "c.X.y must be a number of seconds >= 0, not '5'"),
    (math.inf, dict(minimum=0, must="a number of seconds above 0"), "c.X.y must be a number of seconds above 0, not inf"),
    (math.nan, dict(minimum=0), "c.X.y must be a number of seconds >= 0, not nan"),
])
def test_require_number_refuses_with_the_setting_and_what_would_be_valid(value, rule, message):
    with pytest.raises(SettingError) as err:
        require_number(value, "c.X.y", **rule)
    assert str(err.value) == message


@pytest.mark.parametrize("value, rule", [
    (0, dict(minimum=0)), (0.5, dict(minimum=0, strict=True)), (3, dict(minimum=1, integer=True)),
    (65535, dict(minimum=0, maximum=65535, integer=True)),
])
def test_require_number_returns_a_good_value_unchanged(value, rule):
    assert require_number(value, "c.X.y", **rule) is value


def test_validators_name_the_class_that_declares_the_setting():
    with pytest.raises(TraitError, match=r"^c\.Base\.delay must be a number of seconds > 0, not -2\.0$"):
        Child(config=Config({"Child": {"delay": -2}}))
    with pytest.raises(TraitError, match=r"^c\.Base\.endpoint must be an http:// or https:// URL, not 'ftp://x'"):
        Child(config=Config({"Child": {"endpoint": "ftp://x"}}))
    assert Child(config=Config({"Child": {"endpoint": " https://api.example/ "}})).endpoint == "https://api.example/"
    assert Child(config=Config({"Child": {"endpoint": ""}})).endpoint == ""


@pytest.mark.parametrize("url", ["cloudhop-store", "http://", "https:///path", "ftp://host/"])
def test_require_url_refuses_what_has_no_http_scheme_and_host(url):
    with pytest.raises(SettingError, match=r"^c\.X\.url must be an http:// or https:// URL, not "):
        require_url(url, "c.X.url")


class Timed(Configurable):
    every = Number(300, rule=dict(minimum=0, strict=True)).tag(config=True)


@pytest.mark.parametrize("value", ["soon", -5, 0, [1], None])
def test_a_number_setting_refuses_anything_bad_by_name(value):
    with pytest.raises(SettingError, match=r"^c\.Timed\.every must be a number of seconds > 0, not "):
        Timed(config=Config({"Timed": {"every": value}}))


def test_a_number_setting_takes_a_number_written_as_text():
    assert Timed(config=Config({"Timed": {"every": "30"}})).every == 30.0
    assert Timed(config=Config({"Timed": {"every": 45}})).every == 45.0
    assert Timed().every == 300
