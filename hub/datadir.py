"""The data folder of ``cloudhop up``: what it keeps, and that it keeps it private.

The folder is the hub user's, mode 0700. The files holding secrets or state
(:data:`PRIVATE_FILES`: the database, cookie secret, passwords, hub id and the kept
internal ports) are created with mode 0600, and an older folder's are made so at start.
The internal ports (the hub's API, the proxy's API, the snapshot store) are picked free at
the first start and kept, so a restarted hub is where its running servers expect it and two
hubs on one machine never share one. See docs/architecture.md (cloudhop up) and
docs/security.md.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from cloudhop.hub.snapshot_store import stable_port
from cloudhop.spawner.hubid import hub_id_in, kept_secret

DATABASE = "jupyterhub.sqlite"
COOKIE_SECRET = "jupyterhub_cookie_secret"
#: files only the hub's user may read
PRIVATE_FILES = (DATABASE, COOKIE_SECRET, "user_password", "admin_password", "hub_id",
                 "hub_port", "proxy_api_port", "store_port")
#: JupyterHub's own ports, which a data folder from before ports were kept still uses (its
#: servers were given them)
LEGACY_PORTS = {"hub_port": 8081, "proxy_api_port": 8001}


class DataDirError(Exception):
    """The data folder cannot be used (its owner is another user)."""


def prepare(folder: Path) -> Path:
    """Make ``folder`` ready for a hub: created with mode 0700 (an existing one made
    0700), its private files that exist made 0600, the database created empty with mode
    0600 so SQLite keeps that mode (its journals take the database's). Refuses a folder
    another user owns."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_uid != os.getuid():
        raise DataDirError(f"{folder} belongs to another user; the hub's data folder must be "
                           "its own")
    folder.chmod(0o700)
    for name in PRIVATE_FILES:
        path = folder / name
        if path.is_file() and stat.S_IMODE(path.stat().st_mode) != 0o600:
            path.chmod(0o600)
    touch_private(folder / DATABASE)  # an empty file is an empty SQLite database
    return folder


def touch_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def secret_file(path: Path, nbytes: int = 12) -> str:
    """A generated secret kept in ``path`` (mode 0600), made on first use."""
    return kept_secret(path, lambda: secrets.token_urlsafe(nbytes))


def hub_id(folder: Path) -> str:
    """This hub's id, random and kept in the folder's ``hub_id`` file."""
    return hub_id_in(folder / "hub_id")


def kept_port(folder: Path, name: str) -> int:
    """A free port picked at the first start and kept in the folder's file ``name``
    (mode 0600). A folder whose hub already ran before ports were kept (it has a
    database) keeps :data:`LEGACY_PORTS`, where its running servers reach it."""
    path = folder / name
    if not path.exists() and name in LEGACY_PORTS and _has_run(folder):
        kept_secret(path, lambda: str(LEGACY_PORTS[name]))
    touch_private(path)  # stable_port rewrites the file in place, keeping this mode
    return stable_port(str(path))


def _has_run(folder: Path) -> bool:
    db = folder / DATABASE
    return db.is_file() and db.stat().st_size > 0


def keep_internal_ports(c, folder: Path) -> None:
    """Give the hub's API and the proxy's API in config ``c`` ports of their own, kept in
    ``folder``, unless the operator's config chose them (``c.JupyterHub.hub_port`` or
    ``.hub_bind_url``; ``c.ConfigurableHTTPProxy.api_url`` or the older
    ``c.JupyterHub.proxy_api_port``/``.proxy_api_ip``)."""
    chosen = set(c.JupyterHub)
    if not chosen & {"hub_port", "hub_bind_url"}:
        c.JupyterHub.hub_port = kept_port(folder, "hub_port")
    if "api_url" not in c.ConfigurableHTTPProxy and not chosen & {"proxy_api_port", "proxy_api_ip"}:
        c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{kept_port(folder, 'proxy_api_port')}"
