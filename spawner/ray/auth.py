"""The token of one Ray cluster: made by the hub, held by the cluster's nodes and the
owner's kernels, checked by Ray on every call.

Ray's token authentication (``RAY_AUTH_MODE=token``) makes every Ray gRPC server (GCS,
raylet, object manager, worker processes, the client server) and the dashboard's HTTP
API refuse a caller without the cluster's token. Cloudhop turns it on for every
cluster it starts:

* the hub makes one token per cluster (:func:`new_token`), keeps it in the server's
  state (a restarted hub launches new workers with it) and never logs it;
* each node's launcher (head or worker) gets it in its environment as
  ``RAY_AUTH_TOKEN`` (:func:`node_env`) - from the local provider's process
  environment, or from the root-only env file a VM's user-data writes - and, before
  it starts anything, moves it into a 0600 file in a 0700 folder of its own account
  (:func:`take_token`): Ray, the notebook server and its kernels get only
  ``RAY_AUTH_TOKEN_PATH`` and ``RAY_AUTH_MODE=token``, so ``ray.init()`` in a kernel
  works with no argument, and the token is in no command line;
* the server's dashboard proxy and the notebook's panel send it to the dashboard
  (:func:`auth_headers`); the browser never gets it.
"""

from __future__ import annotations

import os
import secrets

#: Ray's own variables (ray/_private/authentication)
MODE_VAR = "RAY_AUTH_MODE"
TOKEN_VAR = "RAY_AUTH_TOKEN"
PATH_VAR = "RAY_AUTH_TOKEN_PATH"


def new_token() -> str:
    """A fresh cluster token (256 random bits)."""
    return secrets.token_urlsafe(32)


def node_env(token: str | None) -> dict:
    """What a node's launcher gets in its environment for a cluster with ``token``
    (nothing for a cluster made before tokens, so it still joins its unauthenticated head)."""
    return {MODE_VAR: "token", TOKEN_VAR: token} if token else {}


def write_token_file(path: str, token: str) -> str:
    """Write ``token`` to ``path`` with mode 0600, replacing what is there and never
    following a link (``path``'s folder must be the account's own, 0700)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(token)
    return path


def take_token(env: dict, path: str) -> str | None:
    """Move ``env``'s ``RAY_AUTH_TOKEN`` into the file ``path`` (:func:`write_token_file`)
    and point ``env`` at it (``RAY_AUTH_TOKEN_PATH``, ``RAY_AUTH_MODE=token``), so
    nothing this process starts inherits the token itself. Returns the file's path, or
    None when ``env`` holds no token (Ray then runs as the environment says)."""
    token = env.pop(TOKEN_VAR, None)
    if not token:
        return None
    write_token_file(path, token)
    env[PATH_VAR] = path
    env[MODE_VAR] = "token"
    return path


def read_token(env=os.environ) -> str | None:
    """The cluster's token as a Ray client finds it: ``RAY_AUTH_TOKEN``, else the file
    at ``RAY_AUTH_TOKEN_PATH``; None when neither is there or readable."""
    if env.get(TOKEN_VAR):
        return env[TOKEN_VAR].strip()
    path = env.get(PATH_VAR)
    if not path:
        return None
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def auth_headers(env=os.environ) -> dict:
    """The ``Authorization`` header Ray's dashboard wants from a caller of its API
    (empty when the cluster has no token)."""
    token = read_token(env)
    return {"Authorization": f"Bearer {token}"} if token else {}
