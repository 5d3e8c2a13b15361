"""Durable workspaces without a hub: ephemeral local regions really delete a stopped
server's workspace (and only then), a restore whose chunk is missing or corrupt names
the file and puts nothing in the workspace, a stop's snapshot call says why it failed,
and the settings are checked by name."""

from __future__ import annotations

import dataclasses
import json
import os
import socket

import pytest
from traitlets import TraitError

from cloudhop.extensions.snapshot import Manifest, StoreClient, restore_snapshot, take_snapshot
from cloudhop.extensions.snapshot.confined import RestoreError
from cloudhop.extensions.snapshot.snapshot import workspace_dest
from cloudhop.hub.store_backends import LocalBackend
from cloudhop.spawner import durable
from cloudhop.spawner.offers import Offer
from cloudhop.spawner.providers.base import TAG_HUB, TAG_USER, LaunchSpec
from cloudhop.spawner.providers.local import LocalProvider
from cloudhop.spawner.spawner import CloudhopSpawner

from .store_double import ACCESS, StoreHarness

SLEEPER = ["/bin/sh", "-c", "sleep 120 & wait"]


# -- ephemeral local regions ---------------------------------------------------------------

@pytest.fixture
def provider(tmp_path):
    p = LocalProvider(default_root=str(tmp_path / "ws"), isolation="none", stop_timeout=3,
                      regions={"gone": {"gpus": "none", "ephemeral": True}, "kept": {"gpus": "none"}})
    yield p
    for rec in p._records():
        p._kill_tree(rec)


def _spec(offer: Offer, rid: str, role: str = "notebook") -> LaunchSpec:
    return LaunchSpec(request_id=rid, offer=offer, cmd=SLEEPER, env={"PATH": "/usr/bin:/bin"},
                      tags={TAG_HUB: "hub-x", TAG_USER: "ada", "cloudhop-server": rid}, port=9999, role=role)


async def test_an_ephemeral_region_deletes_the_workspace_when_its_node_stops(provider):
    workspaces = {}
    for region in ("gone", "kept"):
        offer = next(o for o in provider.offers() if o.region == region)
        node = await provider.launch(_spec(offer, f"srv-{region}"))
        workspaces[region] = path = node.info["workspace"]
        with open(os.path.join(path, "work.txt"), "w") as f:
            f.write("made on the node\n")
        os.symlink("/etc", os.path.join(path, "link-out"))  # a link is removed, never followed
        await provider.terminate(node.id)
    assert not os.path.exists(workspaces["gone"]), "an ephemeral region keeps no workspace"
    assert open(os.path.join(workspaces["kept"], "work.txt")).read() == "made on the node\n"
    assert os.path.isdir("/etc") and os.listdir("/etc")


async def test_a_ray_worker_stopping_in_an_ephemeral_region_leaves_the_workspace(provider):
    offer = next(o for o in provider.offers() if o.region == "gone")
    node = await provider.launch(_spec(offer, "srv-ray", role="ray-worker"))
    await provider.terminate(node.id)
    assert os.path.isdir(node.info["workspace"])


def test_the_ephemeral_setting_is_checked_by_name(tmp_path):
    with pytest.raises((TraitError, ValueError), match=r"c.LocalProvider.regions\['r'\]\['ephemeral'\] must be True or False"):
        LocalProvider(default_root=str(tmp_path), isolation="none", regions={"r": {"ephemeral": "yes"}})


@pytest.mark.parametrize("name", ["hibernate_timeout", "restore_timeout"])
def test_phase_timeouts_are_checked_by_name(name):
    with pytest.raises(TraitError, match=rf"c.CloudhopSpawner.{name} must be a number of seconds above 0"):
        CloudhopSpawner(**{name: 0})


# -- a restore whose chunk is missing or corrupt ----------------------------------------

@pytest.fixture
def store(tmp_path):
    with StoreHarness(LocalBackend(str(tmp_path / "store")), {"tok": ("alice", [ACCESS])}) as h:
        yield h


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_bad_chunk_fails_the_restore_naming_its_file_and_writes_nothing(store, tmp_path, damage):
    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    (ws / "a.txt").write_bytes(b"a" * 50_000)
    (ws / "data" / "b.bin").write_bytes(os.urandom(300_000))
    client = StoreClient(store.url, "alice", "tok")
    sid, manifest, _ = take_snapshot(ws, client)
    entry = next(e for e in manifest.files if e.path == "data/b.bin")
    path = store.backend._chunk_path("alice", entry.chunks[-1][0])
    if damage == "missing":
        os.unlink(path)
    else:
        with open(path, "r+b") as f:
            f.write(b"\0\1\2")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("the workspace's own a.txt\n")
    with pytest.raises(RestoreError, match=r"^data/b\.bin: could not be restored") as err:
        restore_snapshot(Manifest.loads(client.get_manifest(sid)), client, workspace_dest(str(out)))
    assert "a.txt" not in str(err.value).split(":")[0]
    # nothing half-written: the workspace holds the files it held (at most an empty folder
    # made on the way), no temporary file is left
    assert sorted(p.name for p in out.rglob("*") if not p.is_dir()) == ["a.txt"]
    assert (out / "a.txt").read_text() == "the workspace's own a.txt\n"
    assert [s["id"] for s in client.list_snapshots()] == [sid], "the snapshot stays"


# -- the stop's snapshot call --------------------------------------------------------------

async def test_a_stop_whose_node_does_not_answer_says_so():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(durable.HibernateError, match="the node is unreachable"):
        await durable.hibernate(f"http://127.0.0.1:{port}/user/ada/", "tok", kernels=True, timeout=5)


def test_sizes_read_as_the_spawn_page_shows_them():
    assert durable.size_text(int(1.25 * durable.GIB)) == "1.2 GiB"
    assert durable.size_text(340 << 20) == "340.0 MiB"
    assert durable.size_text(12) == "12 bytes"


# -- a stop whose snapshot fails keeps the node, and the reaper spares it ---------------------

async def test_a_stop_whose_snapshot_fails_keeps_every_node_and_the_reaper_spares_them():
    from types import SimpleNamespace

    from instant_cloud import InstantCloud
    from test_state import HubDouble, as_hub_api, new_spawner

    from cloudhop.hub.reaper import Reaper

    cloud = InstantCloud()
    s = new_spawner(cloud)
    s.user_options = {"provider": "auto", "gpu": "none"}
    await s.start()
    assert s.serving
    # the node's address is a closed port: its server does not answer the snapshot call
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s.node = dataclasses.replace(s.node, ip="127.0.0.1", port=port)
    s.environment = {durable.STORE_URL_ENV: "http://127.0.0.1:9/services/cloudhop-store/"}
    s.api_token = "server-token"
    s.server = SimpleNamespace(base_url="/user/ada/")
    node_id = s.node.id
    await s.stop()
    assert cloud.live() == {node_id}, "nothing is terminated"
    s.clear_state()  # as the hub does after every stop
    state = json.loads(json.dumps(s.get_state()))
    [kept] = state["kept"]
    assert kept["reason"].startswith("snapshot failed: the node is unreachable")
    assert [n["id"] for n in kept["nodes"]] == [node_id]
    assert "server-token" not in json.dumps(state)
    assert s.will_resume, "the kept node's token is not deleted by the hub"
    # the reaper reads the stopped server's state and leaves the kept node alone
    reaper = Reaper({cloud.name: cloud}, HubDouble(as_hub_api(state, stopped=True)), "hub-state-test", grace=0)
    report = await reaper.sweep()
    assert report["providers"][cloud.name]["terminated"] == [] and cloud.live() == {node_id}
    # a server that never finished starting is not snapshotted: its stop terminates
    t = new_spawner(cloud)
    t.load_state(state)
    assert t.kept == state["kept"] and not t.serving


def test_a_snapshot_leaves_out_the_running_servers_runtime_files(tmp_path):
    """A server's connection files and cookie secret belong to the server that wrote them:
    a hibernate or a move does not carry them into the next server."""
    from cloudhop.extensions.snapshot.excludes import DEFAULT_PATTERNS, Excludes

    runtime = tmp_path / ".local" / "share" / "jupyter" / "runtime"
    runtime.mkdir(parents=True)
    (runtime / "jupyter_cookie_secret").write_text("secret")
    (runtime / "kernel-1.json").write_text("{}")
    (tmp_path / "work.txt").write_text("mine")
    ex = Excludes(patterns=DEFAULT_PATTERNS)
    kept = sorted(f.path for f in ex.walk(tmp_path))
    assert kept and "work.txt" in kept and not [p for p in kept if "runtime" in p]
    assert [(s.path, s.cache) for s in ex.skipped] == [(".local/share/jupyter/runtime", True)]


def test_a_server_started_before_hibernation_existed_hibernates_when_it_stops():
    """A state saved by an older hub has no "serving": its server had finished starting,
    so its stop snapshots it; one saved mid-start by this version says it had not."""
    from test_state import new_spawner

    from instant_cloud import InstantCloud

    cloud = InstantCloud()
    old = {"version": 1, "node": {"id": "r1/n-1", "provider": "instant", "region": "r1", "state": "running"},
           "nodes": [{"provider": "instant", "id": "r1/n-1", "role": "notebook", "region": "r1"}]}
    s = new_spawner(cloud)
    s.load_state(old)
    assert s.serving and s.get_state()["serving"] is True
    s.load_state(dict(old, serving=False))
    assert not s.serving and s.get_state()["serving"] is False
    s.load_state({})
    assert not s.serving


async def test_a_server_that_never_answered_is_stopped_without_a_snapshot():
    """JupyterHub stops a server that did not answer within its http_timeout while it still
    waits for that answer: nobody worked on it, so its node goes (no kept node)."""
    from types import SimpleNamespace

    from instant_cloud import InstantCloud
    from test_state import new_spawner

    cloud = InstantCloud()
    s = new_spawner(cloud)
    s.user_options = {"provider": "auto", "gpu": "none"}
    await s.start()
    s.environment = {durable.STORE_URL_ENV: "http://127.0.0.1:9/services/cloudhop-store/"}
    s.api_token, s.server = "server-token", SimpleNamespace(base_url="/user/ada/")
    s._waiting_for_response = True  # as JupyterHub's _wait_up leaves it when it gives up
    await s.stop()
    assert cloud.live() == set() and s.kept == []


# -- a move's new server, stopped before the move handed it over, keeps nothing ---------------

async def _stop_unreachable(server: str, book_file, records) -> tuple[list, set]:
    """Stop ``ada``'s server ``server`` whose node does not answer a snapshot call, with
    the hub's move book holding ``records`` ``(user, source, target, phase, settled)``;
    returns its kept entries (a snapshot was tried) and the nodes left running."""
    from types import SimpleNamespace

    from instant_cloud import InstantCloud
    from test_state import new_spawner
    from traitlets.config import Config

    from cloudhop.hub.move_book import book_at

    book = book_at(book_file)
    for user, source, target, phase, settled in records:
        m = book.open(user, source, target, expires_at=4e9)
        if phase != "snapshotting":
            book.advance(m, phase, "failed on purpose" if phase == "failed" else None)
        if settled:
            book.settle(m)
    config = Config()
    config.CloudhopMoves.record_file = str(book_file)
    cloud = InstantCloud()
    s = new_spawner(cloud)
    s.config = config
    s.user_options = {"provider": "auto", "gpu": "none"}
    await s.start()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens: a snapshot call fails, the node is kept
    s.node = dataclasses.replace(s.node, ip="127.0.0.1", port=port)
    s.environment = {durable.STORE_URL_ENV: "http://127.0.0.1:9/services/cloudhop-store/"}
    orm_server = object()  # the hub's row of the server, as JupyterHub's Spawner.server checks it
    s.orm_spawner = SimpleNamespace(name=server, display_name=server, server=None)
    s.orm_spawner.server = orm_server
    s.api_token, s.server = "server-token", SimpleNamespace(base_url=f"/user/ada/{server}/", orm_server=orm_server)
    await s.stop()
    return s.kept, cloud.live()


@pytest.mark.parametrize("phase", ["restoring", "failed", "awaiting-accept"])
async def test_a_moves_new_server_stops_without_a_snapshot(tmp_path, phase):
    """A failed move removes its new server (the source's rollback, the reconciler): that
    stop snapshots nothing (no junk snapshot, no delay), as the hub's record of the move says."""
    kept, live = await _stop_unreachable("site-b-1", tmp_path / "moves.json",
                                         [("ada", "", "site-b-1", phase, False)])
    assert kept == [] and live == set(), "no snapshot was tried: the node is terminated"


@pytest.mark.parametrize("record", [
    None,                                      # no move at all
    ("ada", "", "site-b-1", "done", False),    # a finished move: the new server is the user's now
    ("ada", "", "site-b-1", "failed", True),   # settled long ago: the name was reused since
    ("bob", "", "site-b-1", "restoring", False),  # another user's move to the same name
    ("ada", "site-b-1", "x", "restoring", False),  # the server is a move's source
])
async def test_no_other_server_skips_its_snapshot(tmp_path, record):
    kept, live = await _stop_unreachable("site-b-1", tmp_path / "moves.json", [record] if record else [])
    assert len(kept) == 1 and len(live) == 1, "the snapshot was tried (and failed): the node is kept"


def test_a_restore_leaves_a_running_kernels_history_database_writable(store, tmp_path):
    """On a local node HOME is the workspace, so IPython's history database lives in it,
    opened by every kernel. A restore renaming a copy over the open database made the
    kernel's next write fail ("attempt to write a readonly database"): the database is not
    in a snapshot (each kernel keeps its own), and the open one keeps working."""
    import sqlite3

    def history(ws, line):
        path = ws / ".ipython" / "profile_default" / "history.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path)  # as IPython's HistoryManager opens it
        db.execute("CREATE TABLE IF NOT EXISTS history (session, line, source)")
        db.execute("INSERT INTO history VALUES (1, 1, ?)", (line,))
        db.commit()
        return db

    ws, out = tmp_path / "ws", tmp_path / "out"
    old_kernel = history(ws, "x = 1")
    (ws / "a.txt").write_text("mine\n")
    client = StoreClient(store.url, "alice", "tok")
    sid, manifest, stats = take_snapshot(ws, client)
    assert [f.path for f in manifest.files if "history" in f.path] == []
    assert ".ipython/profile_default/history.sqlite" in [s.path for s in stats.skipped]
    old_kernel.close()
    new_kernel = history(out, "y = 2")  # the restored server's kernel is up before (or while) the files come
    restore_snapshot(Manifest.loads(client.get_manifest(sid)), client, workspace_dest(str(out)))
    assert (out / "a.txt").read_text() == "mine\n"
    new_kernel.execute("INSERT INTO history VALUES (1, 2, 'print(x)')")
    new_kernel.commit()
    new_kernel.close()


# -- a stopped node's kernels do not outlive it ------------------------------------------------

KERNEL_PARENT = ("import subprocess, sys\n"
                 "k = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"  # as jupyter_client starts a kernel
                 "open('kernel.pid', 'w').write(str(k.pid))\n"
                 "sys.exit(0) if sys.argv[1] == 'dies' else subprocess.call(['sleep', '300'])\n")


@pytest.mark.parametrize("server", ["runs", "dies"])
async def test_terminate_stops_the_kernels_in_sessions_of_their_own(provider, server):
    """Kernels run in sessions of their own; a terminate stops them with the node, also when
    the server process has already exited (its kernels then belong to init)."""
    import sys
    import time

    import psutil

    offer = next(o for o in provider.offers() if o.region == "kept")
    spec = dataclasses.replace(_spec(offer, f"srv-{server}"), cmd=[sys.executable, "-c", KERNEL_PARENT, server])
    node = await provider.launch(spec)
    pid_file = os.path.join(node.info["workspace"], "kernel.pid")
    for _ in range(200):
        if os.path.exists(pid_file) and open(pid_file).read():
            break
        time.sleep(0.05)
    kernel = psutil.Process(int(open(pid_file).read()))
    assert os.getsid(kernel.pid) == kernel.pid, "the kernel leads its own session"
    if server == "dies":
        provider._procs[node.id].wait(10)  # the server has exited: init holds the kernel
    await provider.terminate(node.id)
    try:
        kernel.wait(10)
    except psutil.TimeoutExpired:
        kernel.kill()
        pytest.fail("the kernel outlived its node")


# -- a cull's snapshot says so ------------------------------------------------------------------

def test_a_stop_past_the_culling_limit_snapshots_with_the_reason_cull():
    """The reason a stop's snapshot carries: ``cull`` when the hub culls and the server's
    limit under the policy (its groups' rule for its GPU, else the default) has passed."""
    import datetime
    from types import SimpleNamespace

    from instant_cloud import InstantCloud
    from test_state import new_spawner
    from traitlets.config import Config

    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)  # as JupyterHub's rows hold it
    config = Config()
    config.CloudhopCuller.enabled = True  # what add_idle_culler sets: a culler runs
    config.CloudhopCuller.idle_minutes = 30
    config.Policy.groups = {"long": {"idle_minutes": 120}}
    s = new_spawner(InstantCloud())
    s.config = config
    s.user_options = {"gpu": "none"}
    s.orm_spawner = SimpleNamespace(server=None, started=now - datetime.timedelta(hours=3),
                                    last_activity=now - datetime.timedelta(minutes=45))
    assert s._stop_reason() == "cull", "idle 45 minutes under a 30-minute limit"
    s.user.groups = [SimpleNamespace(name="long")]
    assert s._stop_reason() == "stop", "a group whose limit is 2 hours"
    s.user.groups = []
    s.orm_spawner.last_activity = now - datetime.timedelta(minutes=5)
    assert s._stop_reason() == "stop", "used 5 minutes ago"
    s.orm_spawner.last_activity = now - datetime.timedelta(minutes=45)
    config.CloudhopCuller.enabled = False
    s.config = config
    assert s._stop_reason() == "stop", "no culler runs on this hub"
    s.orm_spawner = None
    assert s._stop_reason() == "stop", "a server that never started"


async def test_the_stops_snapshot_call_names_its_reason():
    """``durable.hibernate`` sends the reason it is given; the server's endpoint takes
    ``cull`` as one of its reasons."""
    from tornado import httpserver, web

    from cloudhop.extensions.hibernate import REASONS

    assert "cull" in REASONS and "stop" in REASONS
    seen = []

    class Snap(web.RequestHandler):
        def post(self):
            seen.append((self.request.headers["Authorization"], json.loads(self.request.body)))
            self.write({"id": "s1"})

    server = httpserver.HTTPServer(web.Application([(r"/user/ada/cloudhop/api/snapshots", Snap)]))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server.listen(port, "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port}/user/ada/"
        assert (await durable.hibernate(url, "tok", kernels=True, timeout=5, reason="cull"))["id"] == "s1"
        assert (await durable.hibernate(url, "tok", kernels=False, timeout=5))["id"] == "s1"
    finally:
        server.stop()
    assert seen == [("token tok", {"reason": "cull", "kernels": True}),
                    ("token tok", {"reason": "stop", "kernels": False})]
