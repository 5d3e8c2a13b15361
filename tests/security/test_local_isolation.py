"""Local provider isolation: on a root hub each hub user's servers run as their own system
account, so code in one user's kernel cannot reach another user's files, another server's
environment (its hub token), the hub's secrets or the services' credentials. A hub that
is not root serves one user unless the operator opts out with isolation = "none", which
the form and the log then say plainly. See docs/security.md (Local provider isolation).

The tests that make accounts or start servers as them need root (CI runs as root) and a
Python that other users may run (not one inside a private folder such as root's home).
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from traitlets import TraitError
from traitlets.config import Config

from cloudhop.spawner.failover import NoOfferLaunched, launch_first
from cloudhop.spawner.providers import accounts, workspaces
from cloudhop.spawner.providers.accounts import MAX_NAME, VALID_NAME, Account, AccountError, system_username
from cloudhop.spawner.providers.base import TAG_HUB, TAG_USER, LaunchSpec
from cloudhop.spawner.providers.local import IsolationError, LocalProvider
from isolation import NOBODY, python_unreachable

ROOT = Path(__file__).resolve().parents[2]
SECRET = "planted-cloud-secret-" + secrets.token_hex(6)

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (CI runs as root): only a root hub runs servers as users' own "
    "accounts, and only root can make accounts")


@pytest.fixture
def make_account():
    """``make_account(hub_user)``: Cloudhop's account of a made-up hub user, deleted after."""
    made = []

    def make(hub_user: str, template: str = "chtest-{username}") -> Account:
        name = system_username(template, hub_user)
        made.append(name)
        return accounts.ensure_account(name, hub_user)

    yield make
    for name in made:
        subprocess.run(["userdel", name], capture_output=True, check=False)


def shared_tmp() -> Path:
    """A new folder other users may pass through (pytest's own tmp folder is 0700, which
    would keep them out whatever the code under test does)."""
    folder = Path(tempfile.mkdtemp(prefix="cloudhop-iso-"))
    folder.chmod(0o711)
    return folder


# -- account names -------------------------------------------------------------------

def test_account_names_are_valid_and_never_shared():
    hub_users = ["alice", "Alice", "ALICE", "alice.", "alice_", "alice-", "al ice", "josé", "李",
                 "42", "", "a" * 60, "a" * 61, "x" * 200, "-x", "root", "a/b", "a\nb"]
    hub_users.append(system_username("{username}", "Alice"))  # a name made to look like a changed one
    for template in ("jupyter-{username}", "{username}", "c_{username}"):
        names = {u: system_username(template, u) for u in hub_users}
        for user, name in names.items():
            assert VALID_NAME.fullmatch(name) and len(name) <= MAX_NAME, (template, user, name)
        assert len(set(names.values())) == len(hub_users), f"two hub users share an account ({template})"
    assert system_username("jupyter-{username}", "alice") == "jupyter-alice"  # a plain name is kept
    assert system_username("jupyter-{username}", "Alice") != "jupyter-alice"
    assert re.fullmatch(r"jupyter-alice_[0-9a-f]{8}", system_username("jupyter-{username}", "Alice"))


@pytest.mark.parametrize("template", ["jupyter", "{user}", "Jupyter-{username}", "{username}:x",
                                      "{username}{0}", "a" * 30 + "{username}"])
def test_a_bad_template_is_refused_naming_the_setting(template):
    with pytest.raises(TraitError, match=r"system_user_template"):
        LocalProvider(system_user_template=template)


def test_isolation_takes_only_known_values():
    with pytest.raises(TraitError, match="isolation"):
        LocalProvider(isolation="off")


# -- accounts (real useradd) ----------------------------------------------------------

@needs_root
def test_account_creation_is_idempotent_and_marked(make_account):
    hub_user = "Iso " + secrets.token_hex(3)  # a name that needs cleaning
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(make_account(hub_user))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1, results
    account = results[0]
    entry = pwd.getpwnam(account.name)
    assert entry.pw_uid == account.uid != 0 and entry.pw_gecos == accounts.mark(hub_user)
    assert account.groups == (account.gid,), "the account is in its own group only"
    assert make_account(hub_user) == account, "a second spawn reuses the account"


@needs_root
def test_an_account_cloudhop_did_not_make_for_that_user_is_refused(make_account):
    with pytest.raises(AccountError, match="not the one Cloudhop made"):
        accounts.ensure_account("daemon", "daemon")  # a system account a hub user names
    with pytest.raises(AccountError, match="not the one Cloudhop made"):
        accounts.ensure_account("root", "root")
    theirs = make_account("owner-" + secrets.token_hex(3))
    with pytest.raises(AccountError, match="not the one Cloudhop made"):
        accounts.ensure_account(theirs.name, "someone-else")


def test_a_failing_useradd_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(accounts.shutil, "which", lambda name: "/bin/false")
    monkeypatch.setattr(accounts, "lookup", lambda name: None)
    with pytest.raises(AccountError, match=r"could not make the system account 'jupyter-x': useradd exited with 1"):
        accounts.ensure_account("jupyter-x", "x")


# -- workspaces -----------------------------------------------------------------------

def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@needs_root
def test_workspaces_are_private_and_an_older_one_is_handed_over(make_account):
    top = shared_tmp()
    try:
        account = make_account("ws-" + secrets.token_hex(3))
        root = top / "ws"
        # a workspace an older version made as root, with a link out and a hard link in it
        old = root / "local" / "ada" / "default"
        (old / "sub").mkdir(parents=True)
        (old / "sub" / "notes.txt").write_text("mine")
        (old / "passwd-link").symlink_to("/etc/passwd")
        outside = top / "outside.txt"
        outside.write_text("the hub's")
        os.link(outside, old / "hard-link")
        (root / "local").chmod(0o755)

        ws = workspaces.prepare(old, account, pass_through=[root])
        assert ws == old
        for folder in (old.parent, old):
            st = os.lstat(folder)
            assert (st.st_uid, st.st_gid, mode(folder)) == (account.uid, account.gid, 0o700), folder
        assert mode(root) == mode(root / "local") == 0o711, "users pass through, but may not list"
        assert os.lstat(old / "sub" / "notes.txt").st_uid == account.uid
        assert os.lstat(old / "sub").st_uid == account.uid
        assert os.lstat(old / "passwd-link").st_uid == account.uid, "the link itself is handed over"
        assert os.stat("/etc/passwd").st_uid == 0, "never what a link points to"
        assert outside.stat().st_uid == 0, "a file with another hard link is never given away"

        # another account's workspace is never handed over (two hub names, one folder name)
        other = make_account("ws2-" + secrets.token_hex(3))
        with pytest.raises(workspaces.WorkspaceError, match="belongs to another system account"):
            workspaces.prepare(old, other)
        assert os.lstat(old / "sub" / "notes.txt").st_uid == account.uid

        # a link put where a workspace goes is refused, not followed
        (old.parent / "other").symlink_to("/etc")
        with pytest.raises(workspaces.WorkspaceError, match="not a folder"):
            workspaces.prepare(old.parent / "other", account)
        assert os.stat("/etc").st_uid == 0 and mode("/etc") == 0o755
    finally:
        shutil.rmtree(top)


@needs_root
def test_a_workspace_in_the_former_root_is_moved(make_account):
    top = shared_tmp()
    try:
        account = make_account("mv-" + secrets.token_hex(3))
        former = top / "data" / "workspaces" / "local" / "ada" / "default"
        former.mkdir(parents=True)
        (former / "work.py").write_text("print(1)")
        ws = top / "new" / "local" / "ada" / "default"
        workspaces.prepare(ws, account, former=former)
        assert (ws / "work.py").read_text() == "print(1)" and not former.exists()
        assert os.lstat(ws / "work.py").st_uid == account.uid
    finally:
        shutil.rmtree(top)


def test_cloudhop_up_keeps_a_root_hubs_workspaces_out_of_its_data_folder(tmp_path):
    as_root = workspaces.cloudhop_up_settings(tmp_path, "hub-0123456789", as_root=True)
    assert not Path(as_root["default_root"]).is_relative_to(tmp_path)
    assert as_root["default_root"].endswith("hub-0123456789"), "two hubs never share a folder"
    assert as_root["state_dir"] == str(tmp_path / "workspaces" / ".nodes"), "node records stay private"
    assert as_root["former_root"] == str(tmp_path / "workspaces")
    assert workspaces.cloudhop_up_settings(tmp_path, "hub-x", as_root=False) == {
        "default_root": str(tmp_path / "workspaces")}


# -- the kernel's own rule: another uid's /proc/<pid>/environ -------------------------------

@needs_root
def test_another_accounts_process_environment_is_unreadable(make_account):
    account = make_account("proc-" + secrets.token_hex(3))
    hub_side = subprocess.Popen(["sleep", "60"], env={"CLOUD_SECRET": SECRET})
    try:
        environ = Path(f"/proc/{hub_side.pid}/environ")
        for _ in range(100):  # until the child has exec'd (before, its environ reads empty)
            if SECRET.encode() in environ.read_bytes():
                break
            time.sleep(0.05)
        assert SECRET.encode() in environ.read_bytes()  # root reads it
        probe = subprocess.run(
            ["/bin/sh", "-c", f"cat /proc/{hub_side.pid}/environ; echo rc=$?; cat /proc/self/environ"],
            capture_output=True, check=False, user=account.uid, group=account.gid, extra_groups=[account.gid],
            env={"OWN": "visible"})
        assert b"Permission denied" in probe.stderr and b"rc=1" in probe.stdout
        assert SECRET.encode() not in probe.stdout
        assert b"OWN=visible" in probe.stdout, "its own environment it may read"
    finally:
        hub_side.kill()
        hub_side.wait()


# -- a hub that is not root ---------------------------------------------------------

SLEEP = ["/bin/sh", "-c", "sleep 60"]


def spec(provider, user, rid):
    [cpu] = [o for o in provider.offers() if o.gpu_count == 0][:1]
    return LaunchSpec(request_id=rid, offer=cpu, cmd=SLEEP, env={"PATH": "/usr/bin:/bin"},
                      tags={TAG_HUB: "hub-x", TAG_USER: user}, port=9999)


@pytest.fixture
def not_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 4242)


async def stop_all(*providers):
    for p in providers:
        for node in await p.list_nodes({TAG_HUB: "hub-x"}):
            await p.terminate(node.id)


async def test_a_hub_that_is_not_root_serves_one_user_only(tmp_path, not_root):
    p = LocalProvider(default_root=str(tmp_path / "ws"), stop_timeout=2)
    assert p.isolation == "users" and not p.isolating and p.form_notice is None
    try:
        ada = await p.launch(spec(p, "ada-lovelace", "r1"))
        assert ada.state == "running"
        with pytest.raises(IsolationError) as err:
            await p.launch(spec(p, "bob", "r2"))
        assert err.value.status_code == 403 and 'c.LocalProvider.isolation = "none"' in err.value.message
        assert "lovelace" not in err.value.message, "the refusal names no other user"
        await p.launch(spec(p, "ada-lovelace", "r3"))  # the user it serves keeps working, more servers too

        # a restarted hub still serves ada only, also once her servers stopped
        await stop_all(p)
        again = LocalProvider(default_root=str(tmp_path / "ws"), stop_timeout=2)
        with pytest.raises(IsolationError):
            await again.launch(spec(again, "bob", "r4"))

        # the spawn fails as a 403 naming the setting
        with pytest.raises(NoOfferLaunched) as refused:
            await launch_first([spec(again, "bob", "r5").offer], lambda o: spec(again, "bob", "r5"),
                               lambda name: again)
        assert refused.value.status_code == 403 and "c.LocalProvider.isolation" in str(refused.value)
    finally:
        await stop_all(p)


async def test_isolation_none_shares_and_says_so(tmp_path, not_root, caplog):
    with caplog.at_level(logging.WARNING):
        p = LocalProvider(default_root=str(tmp_path / "ws"), isolation="none", stop_timeout=2)
    assert "can read and change each other's files" in caplog.text
    assert "not isolated" in p.form_notice and "see and change your files" in p.form_notice
    try:
        for user in ("ada", "bob"):
            assert (await p.launch(spec(p, user, f"r-{user}"))).state == "running"
    finally:
        await stop_all(p)


async def form_of(tmp_path, isolation: str) -> str:
    from cloudhop.spawner import CloudhopSpawner

    c = Config()
    c.LocalProvider.default_root = str(tmp_path / "ws")
    c.LocalProvider.isolation = isolation
    s = CloudhopSpawner(user=SimpleNamespace(name="ada", url="/user/ada/", escaped_name="ada", groups=[]),
                        providers=["local"], config=c)
    return await s.get_options_form()


async def test_the_form_says_plainly_when_users_share(tmp_path):
    shared = await form_of(tmp_path, "none")
    assert re.search(r'<p class="ch-notice"[^>]*>Local \(this machine\): servers are not isolated from each '
                     r"other, so other users of this hub can see and change your files.</p>", shared)
    assert 'class="ch-notice"' not in await form_of(tmp_path, "users")


# -- images ---------------------------------------------------------------------------

@pytest.mark.parametrize("image", ["hub", "singleuser"])
def test_images_run_as_a_user_that_is_not_root(image):
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "images" / image / "Dockerfile").read_text(), re.MULTILINE)
    assert users, f"images/{image}/Dockerfile has no USER: everything in it runs as root"
    assert users[-1].split(":")[0] not in ("root", "0")


# -- a real root hub, two users, attacks from A's kernel ------------------------------

PROBE = r"""
import errno, json, os
def attempt(action, path):
    try:
        if action == "read":
            open(path, "rb").read()
        elif action == "write":
            open(path, "ab").write(b"x")
        else:
            os.listdir(path)
        return "allowed"
    except OSError as err:
        return errno.errorcode.get(err.errno, str(err.errno))
targets = json.loads(%r)
out = {name: attempt(action, path) for name, (action, path) in targets.items()}
secret = %r.encode()
seen = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    for part in ("environ", "cmdline"):
        try:
            if secret in open(f"/proc/{pid}/{part}", "rb").read():
                seen.append(f"{pid}/{part}")
        except OSError:
            pass
out["secret seen in /proc"] = seen
out["secret in own env"] = any(secret.decode() in v for v in os.environ.values())
out["uid"] = os.getuid()
print(json.dumps(out))
"""


def hub_processes(hub) -> dict[str, psutil.Process]:
    """The hub and what it started as root: proxy, store and reaper (by what they run)."""
    root = psutil.Process(hub.proc.pid)
    found = {}
    for p in [root, *root.children(recursive=True)]:
        cmd = " ".join(p.cmdline())
        for name, needle in (("hub", "cloudhop.hub.cli up"), ("proxy", "configurable-http-proxy"),
                             ("proxy", "cloudhop.hub.proxy"), ("store", "cloudhop.hub.snapshot_store"), ("reaper", "cloudhop.hub.reaper")):
            if needle in cmd and p.uids().real == 0:
                found.setdefault(name, p)
    return found


@pytest.fixture
def root_hub(tmp_path):
    from hubfixture import HubProcess

    if os.geteuid() != 0:
        pytest.skip("needs root (CI runs as root): only a root hub runs servers as users' own accounts")
    why = python_unreachable()
    if why:
        pytest.skip(f"other users cannot run this Python ({why}); install it where every user may read it")
    top = shared_tmp()
    hub = HubProcess(tmp_path, data_dir=top / "data", extra_config='c.LocalProvider.isolation = "users"\n',
                     env={"AWS_SECRET_ACCESS_KEY": SECRET, "CLOUDHOP_TEST_SECRET": SECRET})
    hub.start()
    users = [f"iso-{c}-{secrets.token_hex(2)}" for c in "ab"]
    yield hub, users
    for user in users:
        if hub.server_model(user) is not None:
            hub.stop_server(user)
    hub_id = (hub.data_dir / "hub_id").read_text().strip()
    hub.stop()
    shutil.rmtree(Path(workspaces.ROOT_HUB_WORKSPACES) / f"hub-{hub_id}", ignore_errors=True)
    shutil.rmtree(top, ignore_errors=True)
    for user in users:
        subprocess.run(["userdel", system_username("jupyter-{username}", user)], capture_output=True, check=False)


@pytest.mark.e2e
def test_a_users_kernel_cannot_reach_another_user_the_hub_or_its_services(root_hub):
    hub, (a, b) = root_hub
    models = {u: hub.spawn(u, {"provider": "local", "gpu": "none"}) for u in (a, b)}
    ws = {u: Path(m["state"]["node"]["info"]["workspace"]) for u, m in models.items()}
    assert not ws[a].is_relative_to(hub.data_dir), "workspaces live outside the hub's data folder"

    kb = hub.kernel(b)
    b_kernel = int(kb.execute(
        "import os; os.makedirs('.cloudhop/kernels', exist_ok=True)\n"
        "open('b-private.txt', 'w').write('for b only'); print(os.getpid())").strip())
    kb.close()
    accounts_of = {u: pwd.getpwnam(system_username("jupyter-{username}", u)) for u in (a, b)}
    for u in (a, b):
        st = ws[u].stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (accounts_of[u].pw_uid, 0o700)

    services = hub_processes(hub)
    assert set(services) == {"hub", "proxy", "store", "reaper"}, services
    for name in ("hub", "reaper"):  # the cloud credential is really there for A to look for
        assert SECRET.encode() in Path(f"/proc/{services[name].pid}/environ").read_bytes(), name
    targets = {
        "B's file (read)": ("read", str(ws[b] / "b-private.txt")),
        "B's file (write)": ("write", str(ws[b] / "b-private.txt")),
        "B's workspace (list)": ("list", str(ws[b])),
        "B's new file": ("write", str(ws[b] / "planted.py")),
        "B's kernel checkpoints": ("write", str(ws[b] / ".cloudhop" / "kernels" / "evil.pkl")),
        "the users' folder (list)": ("list", str(ws[b].parent.parent)),
        "B's server environment": ("read", f"/proc/{models[b]['state']['node']['info']['pid']}/environ"),
        "B's kernel environment": ("read", f"/proc/{b_kernel}/environ"),
        "cookie secret": ("read", str(hub.data_dir / "jupyterhub_cookie_secret")),
        "admin password": ("read", str(hub.data_dir / "admin_password")),
        "database": ("read", str(hub.data_dir / "jupyterhub.sqlite")),
        "node records": ("list", str(hub.data_dir / "workspaces" / ".nodes")),
        **{f"{name} environment": ("read", f"/proc/{p.pid}/environ") for name, p in services.items()},
    }
    ka = hub.kernel(a)
    result = json.loads(ka.execute(PROBE % (json.dumps(targets), SECRET)).strip())
    ka.close()
    assert result.pop("uid") == accounts_of[a].pw_uid != 0
    assert result.pop("secret seen in /proc") == [] and result.pop("secret in own env") is False
    assert result == {name: "EACCES" for name in targets}, result
    assert (ws[b] / "b-private.txt").read_text() == "for b only"
