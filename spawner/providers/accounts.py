"""System accounts for the local provider: one per hub user, so servers cannot reach
each other (the model: JupyterHub's LocalProcessSpawner and The Littlest JupyterHub).

A hub user's account name comes from ``c.LocalProvider.system_user_template``
(:func:`system_username`): a name ``useradd`` accepts, and never the same for two hub
users. :func:`ensure_account` makes the account on a first spawn (with ``useradd``, in
the calling thread, never on the hub's event loop) and marks it, in its comment field,
as Cloudhop's account of that hub user; an account that exists without that mark (a
person's own login, a system account, another hub user's) is refused, so a user who
picks a name cannot run as someone else. :class:`Account` is what the local provider
starts a server as (``subprocess.Popen``'s ``user``, ``group``, ``extra_groups`` and
``umask``: the child drops to the account before it runs anything).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import subprocess
import time
import threading
from dataclasses import dataclass

from ..validate import SettingError
from .base import ProviderError

#: useradd's exit status when /etc/passwd or /etc/group is locked, and how often to try
USERADD_LOCKED = 10
USERADD_TRIES = 5
#: the longest name useradd and utmp take
MAX_NAME = 32
#: a portable account name (what Debian's adduser and most tools take)
VALID_NAME = re.compile(r"[a-z_][a-z0-9_-]*")
#: how a hub user's name appears unchanged in an account name: no '_', which only the
#: suffix of a changed name has, so a kept name never equals a changed one
_KEPT = re.compile(r"[a-z0-9-]+")
#: the hash suffix a changed name ends with: "_" and this many hex digits
HASH_DIGITS = 8
#: the comment (GECOS) field's prefix on the accounts Cloudhop makes
MARK = "Cloudhop account"

_create_lock = threading.Lock()


class AccountError(ProviderError):
    """A hub user's system account cannot be used (not made, or not Cloudhop's for them)."""

    reason = "account"
    status_code = 500


def check_template(template: str) -> str:
    """``template`` if it can name accounts (``c.LocalProvider.system_user_template``),
    else a :class:`~cloudhop.spawner.validate.SettingError` naming the setting."""
    where = "c.LocalProvider.system_user_template"
    if "{username}" not in template:
        raise SettingError(f"{where} must contain {{username}}, not {template!r}")
    try:
        sample = template.format(username="a")
    except (IndexError, KeyError, ValueError) as err:
        raise SettingError(f"{where}: {template!r} is not a format string with only {{username}} ({err})") from None
    if not VALID_NAME.fullmatch(sample) or len(sample) > MAX_NAME - HASH_DIGITS - 2:
        raise SettingError(
            f"{where}: {template!r} would make names like {sample!r}; account names are lowercase "
            f"letters, digits, '_' and '-', start with a letter or '_', and the template "
            f"leaves room for a name ({MAX_NAME - HASH_DIGITS - 2} characters at most with a one-letter user)")
    return template


def system_username(template: str, hub_user: str) -> str:
    """The account name of ``hub_user``: the template filled with the name when that is
    a valid account name of at most :data:`MAX_NAME` characters and the hub name is
    kept as it is (lowercase letters, digits and '-'). Otherwise the name is lowercased,
    every other character made '-', cut to fit, and ``_`` plus a hash of the hub name
    added, so ``Alice``, ``alice.b`` and a long name each get their own account."""
    name = template.format(username=hub_user)
    if _KEPT.fullmatch(hub_user) and VALID_NAME.fullmatch(name) and len(name) <= MAX_NAME:
        return name
    cleaned = re.sub(r"[^a-z0-9-]+", "-", hub_user.lower()).strip("-") or "user"
    digest = hashlib.sha256(hub_user.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_DIGITS]
    suffix = f"_{digest}"
    base = template.format(username=cleaned)
    if not VALID_NAME.fullmatch(base[:1]):
        base = "u" + base
    return base[: MAX_NAME - len(suffix)] + suffix


def mark(hub_user: str) -> str:
    """The comment field of ``hub_user``'s account: :data:`MARK` and a hash of the name
    (a hub name may hold characters a comment field cannot)."""
    return f"{MARK} {hashlib.sha256(hub_user.encode('utf-8', 'surrogatepass')).hexdigest()[:32]}"


@dataclass(frozen=True)
class Account:
    """A system account a server runs as."""

    name: str
    uid: int
    gid: int
    #: every group the account is in (its own first), nothing of the hub's
    groups: tuple[int, ...]
    shell: str

    def env(self, home: str) -> dict[str, str]:
        """The identity variables of a process of this account whose home is ``home``."""
        return {"HOME": home, "USER": self.name, "LOGNAME": self.name, "SHELL": self.shell}

    def popen_kwargs(self) -> dict:
        """``subprocess.Popen`` arguments that start the child as this account: in the
        child, before it runs anything, supplementary groups are set to the account's,
        then the group and user ids (real and effective), and the umask to 077."""
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups), "umask": 0o077}


def lookup(name: str) -> Account | None:
    """The account ``name`` as the system knows it, None if there is none."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    groups = os.getgrouplist(name, entry.pw_gid)
    ordered = (entry.pw_gid, *sorted(g for g in set(groups) if g != entry.pw_gid))
    return Account(name=name, uid=entry.pw_uid, gid=entry.pw_gid, groups=ordered,
                   shell=entry.pw_shell or "/bin/sh")


def ensure_account(name: str, hub_user: str, log=None) -> Account:
    """``hub_user``'s account ``name``, made with ``useradd`` if it does not exist (with
    its own group, no home folder and no password, so nobody logs in as it). Idempotent
    and safe to call from several threads at once. Raises :class:`AccountError` when
    useradd fails or ``name`` exists but is not Cloudhop's account of ``hub_user``.
    Blocks: call it off the event loop."""
    with _create_lock:
        account = lookup(name)
        if account is None:
            _useradd(name, hub_user)
            account = lookup(name)
            if account is None:
                raise AccountError(f"useradd reported success but there is no account {name!r}")
            if log is not None:
                log.info("local: made system account %s (uid %s) for hub user %r", name, account.uid, hub_user)
    comment = pwd.getpwnam(name).pw_gecos
    if comment != mark(hub_user) or account.uid == 0 or account.gid == 0:
        raise AccountError(
            f"the system account {name!r} exists but is not the one Cloudhop made for this hub user, "
            f"so the server will not run as it; remove it or choose another "
            f"c.LocalProvider.system_user_template")
    return account


def _useradd(name: str, hub_user: str) -> None:
    shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    cmd = [useradd, "--no-create-home", "--home-dir", "/nonexistent", "--user-group", "--no-log-init",
           "--shell", shell, "--comment", mark(hub_user), name]
    for attempt in range(USERADD_TRIES):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise AccountError(f"could not make the system account {name!r}: {err}") from err
        # 10: the account files were locked (another hub, or an admin's useradd): try again
        if done.returncode != USERADD_LOCKED or lookup(name) is not None:
            break
        time.sleep(0.2 * (attempt + 1))
    if done.returncode != 0 and lookup(name) is None:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise AccountError(f"could not make the system account {name!r}: useradd exited with "
                           f"{done.returncode}" + (f": {detail[-1]}" if detail else ""))
