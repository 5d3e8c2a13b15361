"""A spawn the hub refuses, and what it leaves behind: nothing.

A refusal is a bad option, a group policy's rule or a request no offer matches (400 or
403). :class:`Refused` is the ``SpawnException`` the spawner raises for it: the user
sees its message alone (the field, the value, what is allowed), never the exception's
class or reason label, on the spawn form, the progress page and in the REST answer
(JupyterHub shows an exception's ``jupyterhub_message`` where it has one).

JupyterHub makes a named server's database row before the spawner sees the options (the
REST ``POST /users/{name}/servers/{server}`` and the spawn form both do), so a refused
first start would leave an empty server on the Home and Admin pages.
:func:`forget_after_refusal` removes such a server once the hub has answered the
refusal, as ``DELETE ... {"remove": true}`` would; a server that has run before, and
the default server, stay.
"""

from __future__ import annotations

import asyncio

from jupyterhub.spawner import SpawnException


class Refused(SpawnException):
    """A refused spawn: ``message`` is what the user reads (already safe for HTML, as
    :class:`~cloudhop.spawner.schema.OptionError` messages are)."""

    def __init__(self, message: str, *, reason: str, status_code: int = 400):
        super().__init__(message, reason=reason, status_code=status_code)
        #: what JupyterHub's pages and API show instead of str(exception)
        self.jupyterhub_message = message

    def __str__(self) -> str:  # the hub's log line: the message, then the status and label
        return f"{self.message} ({self.status_code}, {self.reason})"


def refused(err: SpawnException) -> bool:
    """Whether a spawn failed because the hub refused it (400 or 403), not on the way."""
    return err.status_code in (400, 403)


def shown_plainly(err: SpawnException) -> None:
    """Make JupyterHub show ``err``'s message alone, as :class:`Refused` does (a
    ``SpawnException`` raised elsewhere, e.g. by the Ray launcher, reads
    ``400 SpawnException(reason=...): ...`` otherwise)."""
    if not getattr(err, "jupyterhub_message", None):
        err.jupyterhub_message = err.message


def never_ran(spawner) -> bool:
    """Whether ``spawner`` is a named server that has never run (read when its spawner
    object is made: JupyterHub stamps ``last_activity`` on every start and stop)."""
    orm = getattr(spawner, "orm_spawner", None)
    return bool(orm is not None and orm.name and orm.started is None and orm.last_activity is None)


def forget_after_refusal(spawner) -> None:
    """Once the spawn that ``spawner.start`` refused has ended (the hub has stopped it
    and answered the request with the refusal), delete the named server it made."""
    future = getattr(spawner, "_spawn_future", None)
    if future is None:  # start called outside the hub's spawn (a unit test)
        return
    future.add_done_callback(lambda _f: asyncio.ensure_future(_forget(spawner)))


async def _forget(spawner) -> None:
    user = spawner.user
    name = spawner.name
    # a new spawn of the same name may have begun meanwhile: then it stays
    if not name or spawner.active or user.spawners.get(name) is not spawner:
        return
    db = user.db
    try:
        db.delete(spawner.orm_spawner)
        user.spawners.pop(name, None)
        db.commit()
    except Exception as err:  # never break the hub over a leftover row
        db.rollback()
        spawner.log.warning("Could not remove the refused server %s: %s", spawner._log_name, err)
        return
    spawner.log.info("Removed server %s: its first start was refused", spawner._log_name)
