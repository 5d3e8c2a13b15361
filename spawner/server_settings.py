"""The user's server's own settings, written in the hub's config.

``c.CloudhopMigration.*`` (moves and hibernation: timeouts, excludes, the largest file a
snapshot takes) is read by each user's server, not by the hub (``extensions/migrate.py``).
An operator writes it where every other Cloudhop setting goes, the hub's config, so the
hub passes that section on: :func:`forward` checks it by name when the hub loads its
config (a bad value stops the hub, as on the server) and puts it in every server's
environment as ``CLOUDHOP_SERVER_SETTINGS`` (JSON, ``{"CloudhopMigration": {...}}``, on
every provider: the variable travels with the rest of a server's environment). The server
applies it with :func:`apply` under its own config: a value the server's own config sets
(``c.Spawner.args``, a jupyter_server config file) wins.

Only plain values (numbers, strings, lists of strings) go through; nothing secret belongs
in these sections.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from traitlets.config import Config, Configurable

from .validate import SettingError

#: the environment variable that carries the sections
ENV = "CLOUDHOP_SERVER_SETTINGS"
#: the sections a server reads, by class name
SECTIONS = ("CloudhopMigration",)


def _server_classes() -> dict:
    from cloudhop.extensions.migrate import CloudhopMigration

    return {"CloudhopMigration": CloudhopMigration}


def forward(c: Config) -> dict:
    """Check the hub config's server sections by name and add them to every server's
    environment; returns what was forwarded (``{}`` when the config sets none)."""
    sections = {}
    for name, cls in _server_classes().items():
        if name not in c or not c[name]:
            continue
        values = dict(c[name])
        unknown = sorted(set(values) - set(cls.class_trait_names(config=True)))
        if unknown:
            raise SettingError(f"c.{name} has no setting {unknown[0]!r}; its settings are "
                               f"{', '.join(sorted(cls.class_trait_names(config=True)))}")
        cls(config=Config({name: values}))  # a bad value raises, naming the setting
        try:
            sections[name] = json.loads(json.dumps(values))
        except (TypeError, ValueError):
            raise SettingError(f"c.{name} must hold plain values (numbers, strings, lists), "
                               f"which the hub passes on to each server") from None
    if sections:
        # a dict the config set, or the lazy value of earlier .update() calls: both update
        c.Spawner.environment.update({ENV: json.dumps(sections, sort_keys=True)})
    return sections


def apply(obj: Configurable, environ: Mapping[str, str]) -> None:
    """Set on ``obj`` the settings of its section the hub forwarded in ``environ``,
    except those the server's own config sets. A value that fails its check raises
    the setting's error, naming it."""
    raw = environ.get(ENV)
    if not raw:
        return
    name = type(obj).__name__
    try:
        values = json.loads(raw).get(name) or {}
    except (ValueError, AttributeError):
        raise SettingError(f"${ENV} must be the JSON the hub writes, not {raw[:80]!r}") from None
    own = obj.config[name] if name in obj.config else {}
    traits = obj.trait_names(config=True)
    for key, value in values.items():
        if key in own:
            continue
        if key not in traits:
            raise SettingError(f"c.{name} has no setting {key!r} (from the hub's config)")
        setattr(obj, key, value)
