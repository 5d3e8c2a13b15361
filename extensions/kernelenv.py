"""What a server's kernels, terminals and other child processes inherit from it: never the
server's own hub token.

The hub starts a single-user server with its own token in ``JUPYTERHUB_API_TOKEN`` (and
the legacy ``JPY_API_TOKEN``), and everything the server starts later inherits its
``os.environ``. When the Cloudhop extension loads, :func:`keep_token_from_children`

1. makes JupyterHub's own parts of the server (its ``HubOAuth`` objects: login, activity
   reports) hold the server's token, and keeps it for Cloudhop's calls
   (:func:`.hubclient.hold_server_token`); then takes both variables out of ``os.environ``;
2. asks the hub for the kernels' token (:mod:`cloudhop.hub.tokens_api`: ``access:servers``
   on this one server) and puts it in ``os.environ`` as ``JUPYTERHUB_API_TOKEN``, where
   ``cloudhop.panel()``, ``cloudhop.migrate()`` and ``cloudhop.ray_panel()`` find it.
   When the hub has no such endpoint, or does not answer, kernels get no token.

Extensions load in name order, so ``cloudhop.extensions`` loads before JupyterHub's own
extension reads its token; step 1 sets the token on every ``hub_auth`` it finds instead
of relying on that order.

This keeps the token out of what code in a kernel reads from its environment. Code that
runs as the server's OS user can still read the server's own process environment
(``/proc/<pid>/environ``); the server's token is therefore scoped to what a move needs
(:data:`cloudhop.hub.tokens_api.SERVER_TOKEN_SCOPES`).
"""

from __future__ import annotations

import logging
import os

from .hubclient import HubClient, hold_server_token

log = logging.getLogger("cloudhop.kernelenv")
#: seconds the server waits at startup for the kernels' token
KERNEL_TOKEN_TIMEOUT = 20


def _hub_auths(serverapp) -> list:
    """Every JupyterHub ``HubAuth`` the server's identity provider and extensions hold."""
    owners = [getattr(serverapp, "identity_provider", None)]
    manager = getattr(serverapp, "extension_manager", None)
    if manager is not None:
        for apps in manager.extension_apps.values():
            owners += list(apps)
    out = []
    for owner in owners:
        auth = getattr(owner, "hub_auth", None)
        if auth is not None and hasattr(auth, "api_token") and all(auth is not a for a in out):
            out.append(auth)
    return out


def keep_token_from_children(serverapp, hub: HubClient, env=os.environ) -> str | None:
    """Take the server's own token out of ``env`` and put the kernels' token there
    (see the module docstring); returns the kernels' token, or None."""
    token = env.get("JUPYTERHUB_API_TOKEN") or env.get("JPY_API_TOKEN")
    if not token:
        return None
    for auth in _hub_auths(serverapp):
        if not auth.api_token:  # the first read takes it from the environment, still there
            auth.api_token = token
    hold_server_token(env)
    if not hub.configured:
        return None
    try:
        kernel_token = serverapp.io_loop.run_sync(hub.kernel_token, timeout=KERNEL_TOKEN_TIMEOUT)
    except Exception as err:  # noqa: BLE001 - the server runs on; its kernels have no token
        serverapp.log.warning("Cloudhop: no token for this server's kernels (%s); cloudhop.panel() "
                              "and cloudhop.ray_panel() will not reach the server's API", err)
        return None
    env["JUPYTERHUB_API_TOKEN"] = kernel_token
    serverapp.log.info("Cloudhop: kernels get a token for this server's API only")
    return kernel_token
