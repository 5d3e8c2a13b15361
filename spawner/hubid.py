"""The hub id: a random name a hub keeps in a private file, so that every node it launches
carries it (the ``cloudhop-hub`` tag), and a restarted hub and its reaper find exactly
the nodes it owns. Two hubs sharing a cloud account therefore never take each other's
nodes for their own, whatever folder they were started from.

``cloudhop up`` keeps the id in its data folder (``hub_id``); any other hub that sets no
``c.CloudhopSpawner.hub_id`` keeps it in ``cloudhop_hub_id`` beside its cookie secret
(by default the hub's working folder, where its database is). See docs/architecture.md
(hub identity).
"""

from __future__ import annotations

import functools
import os
import secrets
from collections.abc import Callable
from pathlib import Path

#: the file a hub that sets no hub id keeps its id in, beside its cookie secret
HUB_ID_FILE = "cloudhop_hub_id"


def kept_secret(path: Path | str, make: Callable[[], str]) -> str:
    """The value kept in file ``path``: on first use ``make()`` is written there, created
    with mode 0600 (the owner alone can read it). Two processes creating it at once both
    get the value that was written first."""
    path = Path(path)
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(make() + "\n")
        os.link(tmp, path)  # atomic, and refused if another process got there first
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return _read(path)


def _read(path: Path) -> str:
    value = path.read_text().strip()
    if not value:
        raise ValueError(f"{path} is empty; delete it to make a new one")
    return value


def hub_id_in(path: Path | str) -> str:
    """The hub id kept in file ``path``: ``hub-`` and ten random hex digits made on first
    use (valid as a tag and label value on every provider). A file an older version wrote
    (a URL-safe token) keeps the id it gave, so its nodes are still found."""
    token = kept_secret(path, lambda: secrets.token_hex(5))
    return "hub-" + token.lower().replace("_", "-")


def default_hub_id() -> str:
    """The id of a hub whose config sets none: kept in :data:`HUB_ID_FILE` in the folder
    of the running hub's ``c.JupyterHub.cookie_secret_file`` (its working folder unless
    that is set elsewhere). Outside a hub process (a tool, a test) there is no folder of
    the hub's, so it is random for this process."""
    from jupyterhub.app import JupyterHub

    if not JupyterHub.initialized():
        return _process_hub_id()
    secret = os.path.abspath(os.path.expanduser(JupyterHub.instance().cookie_secret_file))
    return _hub_id_at(os.path.join(os.path.dirname(secret), HUB_ID_FILE))


@functools.lru_cache(maxsize=None)
def _hub_id_at(path: str) -> str:
    # read once per hub: every spawner of the hub gets the same id, without a file read each
    return hub_id_in(path)


@functools.lru_cache(maxsize=1)
def _process_hub_id() -> str:
    return "hub-" + secrets.token_hex(5)
