"""A move's speed without weaker guarantees: the target starts while the snapshot is sent
(with nothing to restore) and restores it when the source asks; a failure on either
side ends the other and leaves the source as it was and no target; the target's kernels
start while the files arrive and load their state only once every file is in place; the
source learns of the target's readiness from the hub's progress stream.

The snapshot and the restore are the product's own (real store service); the hub and the
target's API are stand-ins that run the product's :class:`Restorer` in this process."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace

import pytest
from tornado import httpserver, web
from traitlets.config import Config

from cloudhop.extensions import migrate
from cloudhop.extensions.hubclient import HubClient, HubError
from cloudhop.extensions.migrate import CloudhopMigration, Migrator, Restorer
from cloudhop.extensions.snapshot import StoreError, take_snapshot
from cloudhop.extensions.target import default_proxy_url

from store_double import free_port
from test_move_skipped import finished, tree


class Hub:
    """The hub as a move sees it: a started target runs (nothing restored) once
    ``boot`` is set; ``fail_start`` makes its start fail instead."""

    def __init__(self, migrator_ref: list):
        self.user, self.server_name, self.token = "alice", "", "tok-alice"
        self.models: dict[str, dict] = {}
        self.started: list[tuple[str, dict, str | None]] = []  # (name, options, snapshot id then)
        self.stopped: list[str] = []
        self.fail_start: str | None = None
        self._migrator = migrator_ref

    async def move_token(self, target, lifetime):
        return {"token": self.token}

    def with_token(self, token):
        return self

    async def check_options(self, options):
        pass

    async def start_server(self, name, options):
        m = next(iter(self._migrator[0].migrations.values()))
        self.started.append((name, options, m.snapshot_id))
        self.models[name] = {"ready": False, "pending": "spawn", "url": f"/user/alice/{name}/"}

    async def wait_ready(self, name, timeout):
        if self.fail_start:
            self.models.pop(name, None)
            raise RuntimeError(self.fail_start)
        self.models[name].update(ready=True, pending=None)
        return self.models[name]["url"]

    async def server(self, name):
        return self.models.get(name)

    async def stop_server(self, name, remove=False):
        self.stopped.append(name)
        self.models.pop(name, None)


class TargetAPI:
    """The target server's restore API (:class:`cloudhop.extensions.target.Target`),
    answered by the product's :class:`Restorer` restoring into ``root``."""

    instances: list["TargetAPI"] = []

    def __init__(self, proxy_url, url, token, *, root, store_url, settings):
        app = SimpleNamespace(root_dir=str(root))
        self.url = url
        self.restorer = Restorer(app, HubClient("http://hub/api", token, "alice"), settings)
        TargetAPI.instances.append(self)

    async def restore(self, snapshot_id):
        self.restorer.start(snapshot_id)

    async def wait_restored(self, timeout):
        return (await self.restorer.wait(timeout)).to_json()


@pytest.fixture
def move(tmp_path, snapshot_store, monkeypatch):
    """``(migrator, hub, source workspace, target workspace)``: moves whose target starts
    while the snapshot is sent (a proxy URL is known)."""
    harness, _ = snapshot_store
    ws, target = tmp_path / "source", tmp_path / "target"
    tree(ws, {"notes.md": b"# notes\n", "data/results.csv": b"a,b\n1,2\n"})
    target.mkdir()
    settings = CloudhopMigration(config=Config({"CloudhopMigration": {
        "store_url": harness.url, "proxy_url": "http://proxy.invalid:8000", "stop_delay": 0}})).settings()
    TargetAPI.instances = []
    monkeypatch.setattr(migrate, "Target", lambda proxy, url, token: TargetAPI(
        proxy, url, token, root=target, store_url=harness.url, settings=settings))
    ref: list = []
    hub = Hub(ref)

    async def no_sessions():
        return []

    app = SimpleNamespace(root_dir=str(ws), session_manager=SimpleNamespace(list_sessions=no_sessions))
    ref.append(Migrator(app, hub, settings))
    return ref[0], hub, ws, target


async def test_the_target_starts_while_the_snapshot_is_sent_and_restores_it_when_asked(move):
    migrator, hub, _, target = move
    m = await finished(migrator, migrator.start({"region": "site-b"}))
    assert m.state == "done", m.error
    # asked for before the snapshot was stored, with nothing to restore at its start
    [(name, options, snapshot_then)] = hub.started
    assert name == m.target_server and options == {"region": "site-b", "restore": "none"}
    assert snapshot_then is None
    # then asked to restore the move's snapshot, which it did, verified by the source
    [api] = TargetAPI.instances
    assert api.url == f"/user/alice/{name}/" and api.restorer.report.snapshot == m.snapshot_id
    assert (target / "data" / "results.csv").read_bytes() == b"a,b\n1,2\n"
    assert list(m.timeline) == ["snapshotting", "launching", "restoring", "verifying", "done"]
    assert hub.stopped == []
    migrator.seen(m)
    await asyncio.gather(*migrator._tasks)
    assert hub.stopped == [""]  # the source, after done


async def test_a_snapshot_that_fails_while_the_target_starts_removes_the_target(move, monkeypatch):
    migrator, hub, ws, _ = move

    async def capture(*args, **kw):
        await asyncio.sleep(0.05)
        raise StoreError("snapshot store: 413 your quota of 1 GiB is full", 413)

    monkeypatch.setattr(migrate, "capture", capture)
    m = await finished(migrator, migrator.start({"region": "site-b"}))
    assert m.state == "failed" and m.error == "launching: snapshot store: 413 your quota of 1 GiB is full"
    assert hub.stopped == [m.target_server] and hub.models == {}, "the target is removed"
    assert TargetAPI.instances == [], "nothing was restored"
    assert (ws / "notes.md").read_bytes() == b"# notes\n" and hub.stopped.count("") == 0


async def test_a_target_that_fails_to_start_ends_the_snapshot_and_the_move(move, snapshot_store):
    migrator, hub, ws, _ = move
    _, store = snapshot_store
    tree(ws, {"big.bin": bytes(range(256)) * (48 << 12)})  # 48 MiB: several uploads
    hub.fail_start = "Spawn failed: no capacity in site-b"
    m = await finished(migrator, migrator.start({"region": "site-b"}))
    assert m.state == "failed", m.error
    assert m.error == f"launching: the target server {m.target_server!r} failed to start (Spawn failed: no capacity in site-b)"
    assert hub.stopped == [m.target_server] and "" not in hub.stopped
    await asyncio.sleep(0.2)
    assert store.list_snapshots() == [], "the snapshot ended before its manifest was stored"


async def test_without_a_proxy_the_target_restores_as_it_starts(move, monkeypatch):
    """A server that cannot reach its target's API (no proxy URL known) snapshots first and
    starts the target with the snapshot to restore, as before."""
    migrator, hub, _, target = move
    migrator.settings.proxy_url = ""

    async def start_server(name, options):
        hub.started.append((name, options, None))
        hub.models[name] = {"ready": True, "pending": None, "url": f"/user/alice/{name}/"}
        app = SimpleNamespace(root_dir=str(target))
        await Restorer(app, HubClient("http://hub/api", "tok-alice", "alice"), migrator.settings,
                       options["restore"]).run()

    monkeypatch.setattr(hub, "start_server", start_server)
    m = await finished(migrator, migrator.start({"region": "site-b"}))
    assert m.state == "done", m.error
    assert hub.started[0][1] == {"region": "site-b", "restore": m.snapshot_id}
    assert (target / "notes.md").read_bytes() == b"# notes\n"


def test_the_proxy_is_the_public_url_or_the_one_the_store_is_reached_through():
    assert default_proxy_url({"JUPYTERHUB_PUBLIC_URL": "https://hub.example/"}) == "https://hub.example"
    assert default_proxy_url({"CLOUDHOP_STORE_URL": "http://10.0.0.5:8000/services/cloudhop-store/"}) == \
        "http://10.0.0.5:8000"
    assert default_proxy_url({}) == ""
    with pytest.raises(Exception, match="CloudhopMigration.proxy_url must be an http"):
        CloudhopMigration(config=Config({"CloudhopMigration": {"proxy_url": "ftp://x", "store_url": "http://s/"}}))


# -- the target: kernels start while the files arrive ------------------------------------------

def _target_app(target, create_session):
    """What a restore uses of the target's Jupyter server."""
    return SimpleNamespace(
        root_dir=str(target),
        kernel_spec_manager=SimpleNamespace(
            find_kernel_specs=lambda: {"python3": "/k"},
            get_kernel_spec=lambda name: SimpleNamespace(argv=["/usr/bin/python3", "-m", "ipykernel_launcher"])),
        kernel_manager=SimpleNamespace(default_kernel_name="python3",
                                       get_kernel=lambda kid: SimpleNamespace(get_connection_info=dict)),
        session_manager=SimpleNamespace(create_session=create_session),
    )


async def test_kernels_start_while_files_arrive_and_load_once_every_file_is_in_place(tmp_path, snapshot_store,
                                                                                     monkeypatch):
    harness, store = snapshot_store
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ws, kdir, target = tmp_path / "ws", tmp_path / "k0", tmp_path / "target"
    tree(ws, {"sub/data.csv": b"x\n1\n", "sub/nb.ipynb": b"{}"})
    tree(kdir, {"state.json": b"{}"})
    kernels = [{"path": "sub/nb.ipynb", "name": "", "type": "notebook", "kernel_name": "python3",
                "prefix": f"{migrate.KERNEL_PREFIX}/0", "variables": ["x"], "skipped": []}]
    sid, _, _ = take_snapshot(ws, store, extra={kernels[0]["prefix"]: str(kdir)}, meta={"kernels": kernels})
    target.mkdir()
    seen = {}
    session_started = threading.Event()
    real_restore = migrate.restore_snapshot

    def restore_snapshot(*args, **kw):
        # the files wait until the kernel's session has started: it starts before they land
        assert session_started.wait(30), "the kernel did not start while the files were restored"
        return real_restore(*args, **kw)

    async def create_session(**kw):
        seen["folder at start"] = (target / "sub").is_dir()
        session_started.set()
        return {"kernel": {"id": "k1", "name": "python3"}}

    async def restore_kernel(info, directory, timeout):
        seen["files at load"] = (target / "sub" / "data.csv").read_bytes()
        return {"variables": ["x"], "skipped": []}

    monkeypatch.setattr(migrate, "restore_snapshot", restore_snapshot)
    monkeypatch.setattr(migrate, "restore_kernel", restore_kernel)
    app = _target_app(target, create_session)
    settings = SimpleNamespace(store_url=harness.url, kernel_timeout=5)
    restorer = Restorer(app, HubClient("http://hub/api", "tok-alice", "alice"), settings)
    restorer.start(sid)
    with pytest.raises(ValueError, match=f"already restores snapshot {sid}"):
        restorer.start(sid)  # a server restores one snapshot
    report = await restorer.wait(60)
    assert report.state == "done", report.error
    assert seen == {"folder at start": True, "files at load": b"x\n1\n"}
    assert [k.variables for k in report.kernels] == [["x"]]
    assert store.get_report(sid) == report


@pytest.mark.parametrize("home_in_workspace", [True, False])
async def test_a_kernel_that_reads_the_workspace_as_it_starts_starts_once_the_files_are_in_place(
        tmp_path, snapshot_store, monkeypatch, home_in_workspace):
    """A kernel whose home is the workspace (IPython's profile, the user's site-packages)
    or whose interpreter lies in it (a virtualenv's) starts only after the restore."""
    harness, store = snapshot_store
    ws, target = tmp_path / "ws", tmp_path / "target"
    tree(ws, {".local/lib/site.pth": b"x\n", "nb.ipynb": b"{}", "env/bin/python": b"#!"})
    kernels = [{"path": "nb.ipynb", "name": "", "type": "notebook", "kernel_name": "python3",
                "prefix": f"{migrate.KERNEL_PREFIX}/0", "variables": [], "skipped": []}]
    sid, _, _ = take_snapshot(ws, store, meta={"kernels": kernels})
    target.mkdir()
    monkeypatch.setenv("HOME", str(target) if home_in_workspace else str(tmp_path / "home"))
    seen = []

    async def create_session(**kw):
        seen.append((target / ".local" / "lib" / "site.pth").exists())
        return {"kernel": {"id": "k1", "name": "python3"}}

    async def restore_kernel(info, directory, timeout):
        return {"variables": [], "skipped": []}

    monkeypatch.setattr(migrate, "restore_kernel", restore_kernel)
    app = _target_app(target, create_session)
    if not home_in_workspace:  # the kernel's interpreter is the workspace's virtualenv
        app.kernel_spec_manager.get_kernel_spec = lambda name: SimpleNamespace(argv=[str(target / "env/bin/python")])
    restorer = Restorer(app, HubClient("http://hub/api", "tok-alice", "alice"),
                        SimpleNamespace(store_url=harness.url, kernel_timeout=5), sid)
    report = await restorer.run()
    assert report.state == "done", report.error
    assert seen == [True], "the kernel started before its files were in place"


# -- the hub's progress stream ---------------------------------------------------------------

class Progress(web.RequestHandler):
    def initialize(self, events):
        self.events = events

    async def get(self, name):
        if name == "stopped":
            raise web.HTTPError(400, "alice:stopped is not starting...")
        self.set_header("Content-Type", "text/event-stream")
        for event in self.events[name]:
            self.write(f"data: {json.dumps(event)}\n\n")
            await self.flush()
            await asyncio.sleep(0.01)


async def test_the_target_is_ready_when_the_hubs_progress_stream_says_so():
    events = {
        "ok": [{"progress": 10, "message": "Plan"}, {"progress": 100, "ready": True, "url": "/user/alice/ok/"}],
        "bad": [{"progress": 10}, {"progress": 100, "failed": True, "message": "Spawn failed: no capacity"}],
        "cut": [{"progress": 10}],
    }
    port = free_port()
    server = httpserver.HTTPServer(web.Application([
        (r"/hub/api/users/alice/servers/([^/]+)/progress", Progress, {"events": events})]))
    server.listen(port, "127.0.0.1")
    try:
        hub = HubClient(f"http://127.0.0.1:{port}/hub/api", "tok", "alice")
        assert await hub.wait_ready("ok", 10) == "/user/alice/ok/"
        with pytest.raises(RuntimeError, match="^Spawn failed: no capacity$"):
            await hub.wait_ready("bad", 10)
        with pytest.raises(RuntimeError, match="ended before it was ready"):
            await hub.wait_ready("cut", 10)
        with pytest.raises(HubError, match="400"):
            await hub.wait_ready("stopped", 10)
    finally:
        server.stop()


class RestoreAPI(web.RequestHandler):
    """A target's restore API whose restore ends after three long requests."""

    def initialize(self, seen):
        self.seen = seen

    async def post(self):
        self.seen.append(("POST", json.loads(self.request.body)))
        self.finish({"snapshot": "s1", "state": "restoring"})

    async def get(self):
        wait = float(self.get_argument("wait"))
        self.seen.append(("GET", wait))
        await asyncio.sleep(wait)
        self.finish({"snapshot": "s1", "state": "done" if len(self.seen) > 3 else "restoring"})


async def test_a_long_restore_is_waited_for_in_requests_shorter_than_a_proxy_allows(monkeypatch):
    """The hub's proxy gives up on a request after 20 s; a restore that takes longer is
    waited for in several requests, each well within that."""
    from cloudhop.extensions import target as target_api

    assert target_api.WAIT < 20
    monkeypatch.setattr(target_api, "WAIT", 0.1)
    seen = []
    port = free_port()
    server = httpserver.HTTPServer(web.Application([
        (r"/user/alice/t/cloudhop/api/restore", RestoreAPI, {"seen": seen})]))
    server.listen(port, "127.0.0.1")
    try:
        t = target_api.Target(f"http://127.0.0.1:{port}", "/user/alice/t/", "tok")
        await t.restore("s1")
        report = await t.wait_restored(60)
    finally:
        server.stop()
    assert report["state"] == "done"
    assert seen == [("POST", {"snapshot": "s1"}), ("GET", 0.1), ("GET", 0.1), ("GET", 0.1)]
