"""Checks of operator settings, one rule and one message per kind of value.

Every Cloudhop setting an operator writes (``c.<Class>.<setting>`` in a JupyterHub or
Jupyter server config) that is a count, a duration, a port or an endpoint is checked
here, wherever it lives: the spawner, the providers, the hub's services, the server
extension on a node. A bad value is refused with a :class:`SettingError` whose message
names the setting as the operator writes it and says what would be valid, e.g.::

    c.CloudhopReaper.grace must be a number of seconds >= 0, not -5.0

Apart from ``traitlets`` (which every one of those configurable classes already uses)
this module needs only the standard library, so it imports anywhere Cloudhop runs,
a node included. See docs/architecture.md (configuration).
"""

from __future__ import annotations

import math
import re

from traitlets import CFloat, TraitError

__all__ = ["SettingError", "setting_name", "require_number", "check_number", "require_url",
           "check_url", "Number"]


class SettingError(TraitError, ValueError):
    """A setting has a value Cloudhop refuses. A :class:`~traitlets.TraitError`, so
    traitlets handles it as any refused value, and a :class:`ValueError`, so code that
    checks plain arguments can let it through as one."""


def setting_name(owner, trait) -> str:
    """``c.<Class>.<name>``: the setting as an operator writes it. The class is the one
    that declares the trait (so a subclass's instance names its base's setting), else
    ``owner``'s class."""
    cls = getattr(trait, "this_class", None) or type(owner)
    return f"c.{cls.__name__}.{trait.name}"


def require_number(value, name: str, *, minimum: float, maximum: float | None = None,
                   strict: bool = False, integer: bool = False, unit: str = "seconds",
                   what: str | None = None, must: str | None = None):
    """``value`` if it is a finite number ``>= minimum`` (``> minimum`` when ``strict``),
    ``<= maximum`` when one is given, and a whole number when ``integer``; else a
    :class:`SettingError` naming ``name``.

    The message says the value must be "a (whole) number of <unit> <bound>"; ``what``
    replaces the "a (whole) number of <unit>" part, ``must`` the whole phrase."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and (isinstance(value, int) or not integer) and math.isfinite(value)
          and (value > minimum if strict else value >= minimum)
          and (maximum is None or value <= maximum))
    if not ok:
        if must is None:
            kind = what or (f"a whole number of {unit}" if integer else f"a number of {unit}")
            if maximum is None:
                bound = f"{'>' if strict else '>='} {minimum:g}"
            else:
                bound = f"from {minimum:g} to {maximum:g}"
            must = f"{kind} {bound}"
        raise SettingError(f"{name} must be {must}, not {value!r}")
    return value


def check_number(proposal, **rule):
    """A traitlets ``@validate`` body for a count or a duration: :func:`require_number`
    of the proposed value, naming the setting (see :func:`setting_name`). ``rule`` is
    :func:`require_number`'s keywords (``minimum``, ``strict``, ``integer``, ...)."""
    return require_number(proposal["value"], setting_name(proposal["owner"], proposal["trait"]), **rule)


_URL = re.compile(r"https?://[^/\s]+")


def require_url(value: str, name: str) -> str:
    """``value`` stripped, if it is empty (the default applies) or an ``http(s)://`` URL
    with a host; else a :class:`SettingError` naming ``name``."""
    url = value.strip()
    if url and not _URL.match(url):
        raise SettingError(f"{name} must be an http:// or https:// URL, not {url[:80]!r} (or empty for the default)")
    return url


def check_url(proposal) -> str:
    """A traitlets ``@validate`` body for an endpoint setting: :func:`require_url` of
    the proposed value, naming the setting."""
    return require_url(proposal["value"], setting_name(proposal["owner"], proposal["trait"]))


class Number(CFloat):
    """A number setting that carries its rule (:func:`require_number`'s keywords) and
    refuses any bad value by name, a word (``"soon"``) included. A number written as
    text (``"300"``) is taken, as for settings that were read with ``float()``."""

    def __init__(self, default_value: float, *, rule: dict, **kwargs):
        self.rule = rule
        super().__init__(default_value, **kwargs)

    def validate(self, obj, value):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass  # refused below, by name
        return float(require_number(value, setting_name(obj, self), **self.rule))
