"""A server shared with a group: the members' tokens (how a server knows its visitors)
carry access to it, nobody else's do, and the access ends with the share or the
membership. Against JupyterHub's own database and scope resolution, without a hub."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from cloudhop.hub.group_shares import install
from jupyterhub import orm, scopes

ACCESS = "access:servers!server=zoe/"


@pytest.fixture
def db():
    install()
    session = orm.new_session_factory("sqlite://")()
    session.add(orm.OAuthClient(identifier="jupyterhub"))
    role = orm.Role(name="user", scopes=["self"])
    session.add(role)
    users = {name: orm.User(name=name) for name in ("zoe", "bob", "eve")}
    for user in users.values():
        user.roles.append(role)
        session.add(user)
    session.commit()
    for name in ("zoe", "bob"):
        spawner = orm.Spawner(user=users[name], name="")
        session.add(spawner)
        session.commit()
        session.add(orm.OAuthClient(identifier=f"jupyterhub-user-{name}", spawner=spawner))
    session.add(orm.Group(name="helpers", users=[users["bob"]]))
    session.commit()
    yield session
    session.close()


def _user(db, name):
    return orm.User.find(db, name)


def _server_token(db, visitor: str, server_owner: str = "zoe") -> orm.APIToken:
    """The OAuth token ``visitor`` gets when they open ``server_owner``'s server."""
    client = db.query(orm.OAuthClient).filter_by(identifier=f"jupyterhub-user-{server_owner}").one()
    token = orm.APIToken.new(user=_user(db, visitor), scopes=["read:users:name!user"], oauth_client=client)
    return orm.APIToken.find(db, token)


def _share_with_group(db) -> orm.Share:
    zoe = _user(db, "zoe")
    return orm.Share.grant(db, zoe.orm_spawners[""], orm.Group.find(db, "helpers"))


def test_a_group_members_server_token_gets_access_and_a_non_members_does_not(db):
    _share_with_group(db)
    assert ACCESS in scopes.get_scopes_for(_user(db, "bob")), "JupyterHub grants the member"
    assert ACCESS in scopes.get_scopes_for(_server_token(db, "bob")), "and so does his token for zoe's server"
    assert ACCESS not in scopes.get_scopes_for(_server_token(db, "eve")), "eve is in no group zoe shared with"


def test_a_token_gets_no_more_than_it_may_hold(db):
    _share_with_group(db)
    # bob's token for his own server, and a token he made for reading his name only,
    # are not widened to zoe's server
    assert ACCESS not in scopes.get_scopes_for(_server_token(db, "bob", server_owner="bob"))
    narrow = orm.APIToken.find(db, orm.APIToken.new(user=_user(db, "bob"), scopes=["read:users:name!user"]))
    assert ACCESS not in scopes.get_scopes_for(narrow)
    # a token that inherits all bob may do includes it
    full = orm.APIToken.find(db, orm.APIToken.new(user=_user(db, "bob"), scopes=["inherit"]))
    assert ACCESS in scopes.get_scopes_for(full)


def test_access_ends_with_the_share_the_membership_or_the_expiry(db):
    share = _share_with_group(db)
    token = _server_token(db, "bob")
    assert ACCESS in scopes.get_scopes_for(token)

    orm.Share.revoke(db, share.spawner, orm.Group.find(db, "helpers"))
    db.expire_all()
    assert ACCESS not in scopes.get_scopes_for(token), "revoked"

    _share_with_group(db)
    group = orm.Group.find(db, "helpers")
    group.users.remove(_user(db, "bob"))
    db.commit()
    db.expire_all()
    assert ACCESS not in scopes.get_scopes_for(token), "bob left the group"

    group.users.append(_user(db, "bob"))
    share = orm.Share.find(db, _user(db, "zoe").orm_spawners[""], group)
    share.expires_at = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(minutes=1)
    db.commit()
    assert ACCESS not in scopes.get_scopes_for(token), "the share expired"


def test_installing_twice_wraps_once():
    install()
    first = scopes.get_scopes_for
    install()
    assert scopes.get_scopes_for is first
    from jupyterhub.apihandlers import base

    assert base.get_scopes_for is first, "the token model the hub's API shows uses it too"


def _discards(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("discarding scopes")]


def test_a_group_members_token_logs_no_discard_but_a_real_discard_is_still_logged(db, caplog):
    """JupyterHub warns "discarding scopes" for the access the wrapper gives back to a
    group member's token: that warning is dropped, and only that one."""
    import logging

    caplog.set_level(logging.DEBUG, logger="tornado.application")
    _share_with_group(db)
    assert ACCESS in scopes.get_scopes_for(_server_token(db, "bob"))
    assert _discards(caplog) == [], "the access the group share gives back is not reported as discarded"

    # eve is in no group zoe shared with: her token for zoe's server loses that access,
    # and JupyterHub's warning for it stands
    assert ACCESS not in scopes.get_scopes_for(_server_token(db, "eve"))
    lost = _discards(caplog)
    assert len(lost) == 1 and ACCESS in lost[0] and "User(eve " in lost[0], lost

    # bob's token that also holds a scope no share gives (reading eve's name): that discard
    # is logged, even while the group share's access is given back
    client = db.query(orm.OAuthClient).filter_by(identifier="jupyterhub-user-zoe").one()
    wide = orm.APIToken.find(db, orm.APIToken.new(user=_user(db, "bob"), scopes=["read:users:name!user"],
                                                  oauth_client=client))
    wide.scopes = ["read:users:name!user", "read:users:name!user=eve"]  # as if a role that granted it was taken away
    db.commit()
    caplog.clear()
    assert ACCESS in scopes.get_scopes_for(wide)
    lost = _discards(caplog)
    assert len(lost) == 1 and "read:users:name!user=eve" in lost[0], lost
    from cloudhop.hub.group_shares import _HUB_SCOPES_LOG

    assert _HUB_SCOPES_LOG.filters == [], "the filter lives only for the call"


def test_discarded_scopes_reads_only_jupyterhubs_line():
    from cloudhop.hub.group_shares import discarded_scopes

    line = "discarding scopes [{'access:servers!server=zoe/', 'read:users:name!user=zoe'}], not present in roles of owner <User(bob 0/1 running)>"
    assert discarded_scopes(line) == {"access:servers!server=zoe/", "read:users:name!user=zoe"}
    assert discarded_scopes(line.replace("[{", "[frozenset({").replace("}]", "})]")) == discarded_scopes(line)
    assert discarded_scopes("discarding scopes [{1, 2}], not present in roles of owner x") is None
    assert discarded_scopes("discarding scopes [{__import__('os')}], not present in roles of owner x") is None
    assert discarded_scopes("User bob is slow to start") is None
