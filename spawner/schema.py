"""The user options' schema: every option's name, type, limits and messages.

One table (:data:`OPTIONS`) describes the options a user sends, from the spawn form
or as JSON (REST API, a move of a running project)::

    {"provider": "auto" | a provider name, "region": str?, "zone": str?,
     "instance_type": str?, "gpu": str ("none" for CPU), "gpu_count": int,
     "spot": bool, "image": str?, "ray": {"workers": int, "gpu": str, "gpu_count": int}?,
     "restore": str? (a snapshot id, "class:<name>" or "none")}

Two checks are built on it, so they cannot drift apart:

* :func:`check_shape` - each option's type, pattern and limits, nothing more. The
  server extension runs it before a move (``cloudhop.extensions.migrate``), on a node
  where only the standard library and Jupyter Server can be counted on.
* ``cloudhop.spawner.options.parse_options`` - the same checks plus the values
  against the offers the user may launch (and ``spawner.policy`` the group rules).

Both raise :class:`OptionError`, whose ``str()`` is ``"field: message"`` and safe to
show in HTML (values and unknown keys are escaped). This module is standard library
only. Adding an option means adding an :class:`Option` here, its attribute on
``LaunchRequest`` (a test holds the two together) and, if users pick it in the form,
an input in ``templates/form.html``. See docs/architecture.md.
"""

from __future__ import annotations

import difflib
import html
import re
from dataclasses import dataclass
from typing import Iterable

#: GPUs per node (the notebook's, and each Ray worker's)
MAX_GPUS = 16
#: Ray worker nodes per server
MAX_RAY_WORKERS = 32

#: names (region, zone, instance type, GPU): letters, digits and a few separators;
#: no markup, no slashes (``..`` is refused separately)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+@-]{0,127}$")
#: container image references: registry/path:tag@digest
IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]{0,254}$")
#: snapshot ids (the hub's snapshot store names them so)
SNAPSHOT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
#: the ``restore`` option: a snapshot id, "none", or "class:<name>" (a class snapshot)
RESTORE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9_-]{0,127}|class:[A-Za-z0-9][A-Za-z0-9_.-]{0,63})$")
#: what a form checkbox (or a text field) sends for "true"
FORM_TRUE = ("on", "true", "1", "yes")


class OptionError(ValueError):
    """A user option is wrong: ``field`` (``"gpu_count"``, ``"ray.gpu"``), ``message``
    (what is wrong and what is valid) and ``status``, the HTTP status a handler answers
    (400; 403 for :class:`~cloudhop.spawner.policy.PolicyError`).

    ``str(err)`` is ``"field: message"`` (just the message when no field is known) and
    is safe to show in HTML: values the user sent are escaped."""

    def __init__(self, field: str, message: str, status: int = 400):
        self.field = field
        self.message = message
        self.status = status
        super().__init__(f"{field}: {message}" if field else message)

    @property
    def status_code(self) -> int:
        """``status``, under the name JupyterHub's ``SpawnException`` uses."""
        return self.status


# -- the checks every option is made of ---------------------------------------------


def brief(value) -> str:
    """A user's value as a message quotes it: ``repr``, shortened."""
    text = repr(value)
    return text[:57] + "..." if len(text) > 60 else text


def show(value) -> str:
    """:func:`brief`, HTML-escaped."""
    return html.escape(brief(value), quote=False)


def closest(value, valid: Iterable[str]) -> str | None:
    """The choice of ``valid`` closest to ``value`` (exact spelling first, then any case),
    or None when none is close."""
    valid = list(valid)
    close = difflib.get_close_matches(str(value), valid, n=1, cutoff=0.5)
    if not close:
        low = {v.casefold(): v for v in valid}
        close = [low[c] for c in difflib.get_close_matches(str(value).casefold(), list(low), n=1, cutoff=0.5)]
    return close[0] if close else None


def quote_all(names: Iterable[str], limit: int = 20, escape: bool = True) -> str:
    """``'none', 'T4'``: each name quoted (so a choice called ``none`` never reads as "no
    choices"), HTML-escaped unless ``escape`` is false, at most ``limit`` of them and how
    many more."""
    names = list(names)
    shown = ", ".join(repr(str(n)) for n in names[:limit])
    shown += f" (and {len(names) - limit} more)" if len(names) > limit else ""
    return html.escape(shown, quote=False) if escape else shown


def unknown_choice(what: str, value, valid: Iterable[str], limit: int = 20) -> str:
    """The plain-text sentence for a value not among ``valid``: the value, the closest
    choice and the choices, each quoted: ``unknown gpu 'T5'; did you mean 'T4'? Valid
    choices: 'none', 'T4'.`` Every "unknown value" message, of the options and of the
    CLIs' flags, is made here."""
    valid = sorted(set(valid), key=str.casefold)
    msg = f"unknown {what} {brief(value)}"
    close = closest(value, valid)
    msg += f"; did you mean {close!r}?" if close else "."
    if valid:
        return msg + f" Valid choices: {quote_all(valid, limit, escape=False)}."
    return msg + " There is nothing to choose from here."


def choices(field: str, value, valid: Iterable[str]) -> OptionError:
    """The error for a value not among ``valid`` (:func:`unknown_choice`, HTML-escaped)."""
    return OptionError(field, html.escape(unknown_choice(field, value, valid), quote=False))


def name(field: str, value, *, optional: bool = True, pattern: re.Pattern = NAME) -> str | None:
    """A name matching ``pattern``; None for a missing (or, when optional, empty) one."""
    if value is None or (optional and value == ""):
        return None
    if not isinstance(value, str):
        raise OptionError(field, f"must be a string, not {type(value).__name__} {show(value)}")
    if ".." in value or not pattern.fullmatch(value):
        raise OptionError(
            field,
            f"{show(value)} is not a valid name (letters, digits and . _ - : only; "
            "no markup, spaces or path separators)",
        )
    return value


def whole(field: str, value, low: int, high: int) -> int:
    """A whole number from ``low`` to ``high`` (a string of digits counts; a bool not)."""
    if isinstance(value, str) and re.fullmatch(r"\s*\d{1,4}\s*", value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(field, f"must be a whole number from {low} to {high}, not {show(value)}")
    if not low <= value <= high:
        raise OptionError(field, f"must be from {low} to {high}, not {value}")
    return value


def boolean(field: str, value) -> bool:
    if isinstance(value, bool):
        return value
    raise OptionError(field, f"must be true or false, not {show(value)}")


def unknown_keys(field: str, data: dict, known: Iterable[str]) -> None:
    """Refuse the first key of ``data`` not in ``known`` (``field`` is the object's
    name, ``""`` for the options themselves), suggesting the closest known one."""
    known = tuple(known)
    for key in data:
        if key not in known:
            err = choices(f"{field} option" if field else "option", key, known)
            # the key is user input too: the field name is escaped like the message
            key_name = html.escape(str(key)[:40])
            raise OptionError(f"{field}.{key_name}" if field else key_name, err.message)


# -- the table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One user option.

    ``kind`` says how it is checked: ``"choice"`` (a string the spawner looks up among
    the enabled providers), ``"name"`` (a string matching ``pattern``), ``"count"`` (a
    whole number from 0 to ``high``), ``"bool"``, or ``"object"`` (a dict of the
    options ``fields``). ``matched``: the spawner also checks the value against the
    offers; the others are passed on as their shape check returns them (``default``
    when absent). In the form an option is an input of the same name (``ray_<name>``
    inside ``ray``).
    """

    name: str
    kind: str
    pattern: re.Pattern = NAME
    high: int = 0
    matched: bool = True
    default: object = None
    fields: tuple = ()
    example: str = ""

    def check(self, value, prefix: str = ""):
        """The shape check: ``value`` normalised (``"2"`` -> 2), None for an absent
        one; raises :class:`OptionError` naming ``prefix + name``."""
        field = prefix + self.name
        if self.kind == "choice":
            if not value:
                return None
            if not isinstance(value, str):
                raise OptionError(field, f"must be a string, not {show(value)}")
            return value
        if self.kind == "name":
            return name(field, value, pattern=self.pattern)
        if self.kind == "count":
            return whole(field, value, 0, self.high)
        if self.kind == "bool":
            return boolean(field, value)
        data = self.object(value, prefix)
        return None if data is None else _each(data, self.fields, f"{field}.")

    def object(self, value, prefix: str = "") -> dict | None:
        """For an ``"object"`` option: None when it is absent (``None``, ``False``,
        ``0``), else the dict, refused when it is not one or has unknown keys."""
        if value in (None, False):
            return None
        field = prefix + self.name
        if not isinstance(value, dict):
            raise OptionError(field, f"must be an object like {self.example}, not {show(value)}")
        unknown_keys(field, value, (o.name for o in self.fields))
        return value


#: the ``ray`` option's own options (form inputs ``ray_workers``, ...)
RAY_OPTIONS = (
    Option("workers", "count", high=MAX_RAY_WORKERS),
    Option("gpu", "name"),
    Option("gpu_count", "count", high=MAX_GPUS),
)

#: every user option
OPTIONS = (
    Option("provider", "choice"),
    Option("region", "name"),
    Option("zone", "name"),
    Option("instance_type", "name"),
    Option("gpu", "name"),
    Option("gpu_count", "count", high=MAX_GPUS),
    Option("spot", "bool", default=False),
    Option("image", "name", pattern=IMAGE, matched=False),
    Option("ray", "object", fields=RAY_OPTIONS,
           example='{"workers": 1, "gpu": "none", "gpu_count": 0}'),
    Option("restore", "name", pattern=RESTORE, matched=False),
)

#: options of a move only (``POST {server}/cloudhop/api/migrations``), never of a spawn
#: (the hub neither sees nor checks them): ``accept_skipped`` lets the move stop its
#: source although it left out something of the user's; ``strict`` fails the move when
#: a kernel's variable or module state could not be moved as it was (docs/migration.md)
MOVE_OPTIONS = (
    Option("accept_skipped", "bool", matched=False, default=False),
    Option("strict", "bool", matched=False, default=False),
)

SCHEMA = {o.name: o for o in OPTIONS}
RAY_SCHEMA = {o.name: o for o in RAY_OPTIONS}
FIELDS = tuple(SCHEMA)
RAY_FIELDS = tuple(RAY_SCHEMA)


def check_shape(raw, options: Iterable[Option] = OPTIONS) -> dict:
    """Check each option's type, pattern and limits (not its value against offers or
    policy): the options normalised, with absent ones (``None``, ``""``) left out.
    Raises :class:`OptionError` for the first bad or unknown key."""
    options = tuple(options)
    if not isinstance(raw, dict):
        raise OptionError("user_options", f"must be a JSON object, not {type(raw).__name__}")
    unknown_keys("", raw, (o.name for o in options))
    return _each(raw, options, "")


def _each(data: dict, options: Iterable[Option], prefix: str) -> dict:
    by_name = {o.name: o for o in options}
    out = {}
    for key, value in data.items():
        if value is None:
            continue
        checked = by_name[key].check(value, prefix)
        if checked is not None:
            out[key] = checked
    return out
