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
"""

from __future__ import annotations

import functools

import sqlalchemy as sa
from jupyterhub import orm
from jupyterhub import scopes as hub_scopes

#: the modules that call ``get_scopes_for`` for tokens by name (``scopes`` itself, the
#: request handlers; ``apihandlers.base`` imported it into its namespace for token models)
_CALLERS = ("jupyterhub.scopes", "jupyterhub.apihandlers.base")


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


def _with_group_shares(get_scopes_for):
    @functools.wraps(get_scopes_for)
    def wrapped(orm_object):
        found = get_scopes_for(orm_object)
        if isinstance(orm_object, orm.APIToken):
            extra = token_group_share_scopes(orm_object)
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
