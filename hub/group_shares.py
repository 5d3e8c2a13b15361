"""A server shared with a group: its members' tokens carry the access the share grants.

JupyterHub (checked with 6.1) computes the scopes of a *user* from their roles, the shares
made with them and the shares made with their groups; but the scopes of a *token*
(``scopes.get_scopes_for(APIToken)``) are the token's scopes intersected with an owner's
scopes that count only the shares made with the user by name
(``owner.shared_with_me``), not those made with their groups. A single-user server
knows its visitors only by their OAuth token (``GET /hub/api/user``), so a member of a
group the server is shared with passes JupyterHub's authorize page (cookie: the user's
scopes) and is then refused by the server: the hub logs "discarding scopes
[{'access:servers!server=owner/name'}], not present in roles of owner".

:func:`install` wraps ``get_scopes_for`` so a user's token also gets what their groups'
shares grant, intersected with what the token may hold, exactly as JupyterHub does for
shares made with the user by name. Where JupyterHub already counts group shares, the
wrapper adds nothing. Membership is read at each request: a user added to or removed
from the group, or a group share revoked, counts from the hub's next answer.

JupyterHub logs its "discarding scopes [...]" warning inside the call the wrapper wraps,
before the wrapper gives those scopes back; every visit of a group member would log one.
While it calls JupyterHub for a token the group shares add scopes to, the wrapper drops
that warning (of the calling thread) when every scope it names is one the wrapper gives
back (:class:`RestoredDiscards`). A discard of anything else is logged as before.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import logging
import re
import threading

import sqlalchemy as sa
from jupyterhub import orm
from jupyterhub import scopes as hub_scopes

#: the modules that call ``get_scopes_for`` for tokens by name (``scopes`` itself, the
#: request handlers; ``apihandlers.base`` imported it into its namespace for token models)
_CALLERS = ("jupyterhub.scopes", "jupyterhub.apihandlers.base")

#: the logger JupyterHub's scope resolution warns on (``tornado.log.app_log``)
_HUB_SCOPES_LOG = logging.getLogger("tornado.application")
#: its line: ``discarding scopes [{...}], not present ...`` (the set may print as ``frozenset({...})``)
_DISCARDING = re.compile(r"^discarding scopes \[(?:frozenset\((\{.*\})\)|(\{.*\}))\], not present in roles of owner ",
                         re.S)


def group_share_scopes(user: orm.User) -> frozenset[str]:
    """The expanded scopes granted to ``user`` by shares made with their groups (not
    expired)."""
    granted: set[str] = set()
    for group in user.groups:
        for share in group.shared_with_me:
            if not share.expired:
                granted |= hub_scopes.expand_share_scopes(share)
    return frozenset(granted)


def token_group_share_scopes(token: orm.APIToken) -> frozenset[str]:
    """What the shares with ``token``'s owner's groups add to the token: the granted
    scopes the token may hold (its own scopes, and for an OAuth token access to the
    server or service that issued it)."""
    user = token.user
    if user is None:
        return frozenset()
    granted = group_share_scopes(user)
    if not granted:
        return frozenset()
    if "inherit" in token.scopes:
        return granted
    held = set(hub_scopes.expand_scopes(token.scopes, owner=user, oauth_client=token.oauth_client))
    if token.client_id != "jupyterhub":
        held |= hub_scopes.access_scopes(token.oauth_client)
    return frozenset(hub_scopes._intersect_expanded_scopes(
        frozenset(held), granted, db=sa.inspect(token).session))


def discarded_scopes(message: str) -> frozenset[str] | None:
    """The scopes a JupyterHub "discarding scopes [{...}], not present in roles of owner
    ..." line names; None for any other line (or one that does not read as a set of
    scope strings)."""
    match = _DISCARDING.match(message)
    if not match:
        return None
    try:
        scopes = ast.literal_eval(match.group(1) or match.group(2))
    except (ValueError, SyntaxError):
        return None
    if not isinstance(scopes, (set, frozenset)) or not all(isinstance(s, str) for s in scopes):
        return None
    return frozenset(scopes)


class RestoredDiscards(logging.Filter):
    """Drops JupyterHub's "discarding scopes" warning logged by this thread when every
    scope it names is in ``restored`` (what group shares give the token back)."""

    def __init__(self, restored: frozenset[str]):
        super().__init__()
        self.restored = restored
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread:
            return True
        discarded = discarded_scopes(record.getMessage())
        return discarded is None or not discarded <= self.restored


@contextlib.contextmanager
def _quiet_restored(restored: frozenset[str]):
    quiet = RestoredDiscards(restored)
    _HUB_SCOPES_LOG.addFilter(quiet)
    try:
        yield
    finally:
        _HUB_SCOPES_LOG.removeFilter(quiet)


def _with_group_shares(get_scopes_for):
    @functools.wraps(get_scopes_for)
    def wrapped(orm_object):
        if not isinstance(orm_object, orm.APIToken):
            return get_scopes_for(orm_object)
        extra = token_group_share_scopes(orm_object)
        if not extra:
            return get_scopes_for(orm_object)
        with _quiet_restored(extra):
            found = get_scopes_for(orm_object)
        if extra - found:
            return frozenset(found) | extra
        return found

    wrapped.cloudhop_group_shares = True
    return wrapped


def install() -> None:
    """Make JupyterHub count group shares for tokens (once per process)."""
    import importlib

    current = hub_scopes.get_scopes_for
    if not getattr(current, "cloudhop_group_shares", False):
        current = _with_group_shares(current)
    for name in _CALLERS:
        module = importlib.import_module(name)
        if getattr(module, "get_scopes_for", None) is not None:
            module.get_scopes_for = current
