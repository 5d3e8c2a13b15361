"""Which local isolation the tests' hubs and providers use.

A root hub runs each user's server as the user's own system account
(``c.LocalProvider.isolation = "users"``), which works only when every user may read the
hub's Python and Cloudhop's packages. CI builds its virtual environment where they can
(``.ci/run``), so there every test runs with real isolation. On a developer's machine
whose Python sits in a private folder (a private home folder, a 0700 temporary folder), or as a
non-root user, the tests fall back to ``"none"``; the isolation attack tests then skip
with the reason (``python_unreachable``). ``CLOUDHOP_TEST_ISOLATION`` forces a mode.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cloudhop.spawner.providers import workspaces
from cloudhop.spawner.providers.accounts import Account

#: an account that owns nothing of the hub's (no owner or group permission applies)
NOBODY = Account(name="nobody", uid=65534, gid=65534, groups=(65534,), shell="/bin/sh")


def python_unreachable() -> str | None:
    """Why other users cannot run this Python (its files in a private folder), or None."""
    import jupyterhub

    import cloudhop

    for path in (os.path.realpath(sys.executable), cloudhop.__file__, jupyterhub.__file__):
        why = workspaces.unreachable(Path(os.path.realpath(path)), NOBODY)
        if why:
            return f"{path}: {why}"
    return None


def test_isolation() -> str:
    """``"users"`` where a root hub can run servers as users' own accounts, else ``"none"``."""
    forced = os.environ.get("CLOUDHOP_TEST_ISOLATION")
    if forced:
        return forced
    if os.geteuid() == 0 and python_unreachable() is None:
        return "users"
    return "none"


TEST_ISOLATION = test_isolation()
