"""What a move takes and what it leaves out: only caches are left out by default, every
path left out is listed with its size and reason, a git repository, a virtualenv and
``node_modules`` arrive whole (links and empty folders too), and a move that left out
something of the user's keeps its source running until the user accepts.

The snapshot is the product's own (real store service, real git, a real venv); the move's
hub is a stand-in that starts the target as the product's own :class:`Restorer` in
this process."""

from __future__ import annotations

import asyncio
import os
import stat
from types import SimpleNamespace

import pytest
from project_double import look_at, make_project
from test_notebook_panel import widgets_of
from traitlets.config import Config

from cloudhop.extensions import migrate, notebook
from cloudhop.extensions.migrate import Busy, CloudhopMigration, Migrator, NotAccepted, Restorer
from cloudhop.extensions.snapshot import Excludes, Manifest, restore_snapshot, take_snapshot
from cloudhop.extensions.snapshot.excludes import CACHE_PATTERNS, human_bytes, summary
from cloudhop.extensions.snapshot.snapshot import workspace_dest
from cloudhop.spawner.schema import OptionError

LIMIT = 64 << 10  # the size limit the tests set
BIG = 100_000  # over it


def tree(root, files: dict[str, bytes]):
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)


# -- what a snapshot leaves out, and why ---------------------------------------------------

def test_defaults_leave_out_only_caches_and_every_path_left_out_is_listed(tmp_path, snapshot_store):
    _, store = snapshot_store
    ws = tmp_path / "ws"
    tree(ws, {
        "pkg/m.py": b"x = 1\n", "pkg/__pycache__/m.cpython-311.pyc": b"c" * 10,
        ".ipynb_checkpoints/nb-checkpoint.ipynb": b"{}", ".cache/pip/a": b"a" * 100, ".cache/pip/b": b"b" * 23,
        ".git/HEAD": b"ref: refs/heads/main\n", ".venv/pyvenv.cfg": b"home = /usr/bin\n",
        "node_modules/x/index.js": b"1", ".local/lib/u.py": b"u", ".conda/environments.txt": b"",
        "scratch.tmp": b"t" * 7, "data/big.bin": b"0" * BIG, "only-big/huge.bin": b"1" * BIG,
    })
    os.mkfifo(ws / "pipe")
    (ws / "results").mkdir()
    os.symlink("/usr/bin/python3", ws / "python")
    os.symlink("pkg/m.py", ws / "m.py")
    os.symlink("../../outside", ws / "pkg" / "escape")
    ex = Excludes(patterns=(*CACHE_PATTERNS, "*.tmp"), max_file_bytes=LIMIT)

    _, manifest, stats = take_snapshot(ws, store, excludes=ex)
    kept = {f.path: f.kind for f in manifest.files}
    assert kept == {
        ".conda/environments.txt": "file", ".git/HEAD": "file", ".local/lib/u.py": "file",
        ".venv/pyvenv.cfg": "file", "data": "dir", "m.py": "link", "node_modules/x/index.js": "file",
        "only-big": "dir", "pkg/m.py": "file", "python": "link", "results": "dir",
    }
    by_path = {s.path: s for s in stats.skipped}
    assert set(by_path) == {".cache", ".ipynb_checkpoints", "pkg/__pycache__", "scratch.tmp", "data/big.bin",
                            "only-big/huge.bin", "pipe", "pkg/escape"}
    assert (by_path[".cache"].kind, by_path[".cache"].size, by_path[".cache"].reason, by_path[".cache"].cache) == \
        ("directory", 123, "cache", True)
    assert by_path["pkg/__pycache__"].cache and by_path["pkg/__pycache__"].size == 10
    assert by_path["scratch.tmp"].reason == "excluded by c.CloudhopMigration.exclude ('*.tmp')"
    assert (by_path["data/big.bin"].size, by_path["data/big.bin"].reason) == (BIG, "over the size limit of 64 KiB")
    assert by_path["pipe"].reason == "not a regular file (a FIFO)"
    assert by_path["pkg/escape"].reason == "the link target '../../outside' leads out of the workspace"
    assert sorted(s.path for s in stats.skipped if not s.cache) == ["data/big.bin", "only-big/huge.bin", "pipe",
                                                                     "pkg/escape", "scratch.tmp"]
    assert "data/big.bin: over the size limit of 64 KiB" in stats.warnings


def test_sizes_and_summaries_read_as_people_write_them():
    assert [human_bytes(n) for n in (700, 4096, 1536, 10 << 30, (1 << 30) + (1 << 29))] == \
        ["700 bytes", "4 KiB", "1.5 KiB", "10 GiB", "1.5 GiB"]
    entries = [{"kind": "regular file", "size": 1 << 30}, {"kind": "regular file", "size": 1 << 29},
               {"kind": "directory", "size": 0}, {"kind": "FIFO", "size": None}]
    assert summary(entries) == "2 files, 1 folder and 1 other file (1.5 GiB)"
    assert summary(entries[:1]) == "1 file (1 GiB)" and summary([]) == ""


def test_a_git_repository_with_unpushed_commits_a_venv_and_node_modules_arrive_whole(tmp_path, snapshot_store):
    """Snapshot and restore with the defaults, then ask git, the venv and the links."""
    _, store = snapshot_store
    ws = tmp_path / "ws"
    ws.mkdir()
    before = make_project(str(ws), BIG)
    assert before["ahead"] == "3" and before["empty_ref_dirs"] == ["refs/heads", "refs/tags"]

    sid, manifest, stats = take_snapshot(ws, store, excludes=Excludes(max_file_bytes=LIMIT))
    assert [(s.path, s.cache) for s in stats.skipped] == [("data/big.bin", False), ("lib/__pycache__", True)]
    target = tmp_path / "target"
    restored = restore_snapshot(Manifest.loads(store.get_manifest(sid)), store, workspace_dest(str(target)))
    assert restored == {f.path: f.hash for f in manifest.files}

    after = look_at(str(target))
    assert after["log"] == before["log"] and len(after["log"]) == 4
    assert after["status"] == (0, "") and after["ahead"] == "3" and after["fsck"] == 0
    assert after["empty_ref_dirs"] == ["refs/heads", "refs/tags"]
    assert after["train_mode"] == "0o755"
    # python -> python3.x -> the system's interpreter (an absolute link, kept as it is)
    assert after["venv_links"] == before["venv_links"] and after["venv_prefix_is_here"]
    assert any(t.startswith("/") for t in after["venv_links"].values())
    assert after["node_link"] == "../left-pad/index.js" and after["node_script"] == before["node_script"]
    assert after["empty_pkg"]
    assert not (target / "data" / "big.bin").exists() and (target / "data").is_dir()
    # objects git wrote read-only stay read-only
    pack = next((target / "repo" / ".git" / "objects" / "pack").glob("*.pack"))
    assert stat.S_IMODE(os.stat(pack).st_mode) == 0o444


# -- the move: awaiting the user's accept ----------------------------------------------------

class Hub:
    """The hub as a move sees it (``HubClient``'s calls): starting the target runs the
    product's :class:`Restorer` into ``target_root`` in this process."""

    def __init__(self, store_url: str, target_root, settings):
        self.user, self.server_name, self.token = "alice", "", "tok-alice"
        self.store_url, self.target_root, self.settings = store_url, target_root, settings
        self.models: dict[str, dict] = {}
        self.stopped: list[str] = []
        self.checked: list[dict] = []
        self.restores: list[asyncio.Task] = []

    async def move_token(self, target, lifetime):
        return {"token": self.token}

    def with_token(self, token):
        return self

    async def check_options(self, options):
        self.checked.append(options)

    async def start_server(self, name, options):
        self.models[name] = {"ready": True, "pending": None, "url": f"/user/alice/{name}/"}
        app = SimpleNamespace(root_dir=str(self.target_root))
        restorer = Restorer(app, self, self.settings, options["restore"])
        self.restores.append(asyncio.ensure_future(restorer.run()))

    async def server(self, name):
        return self.models.get(name)

    async def wait_ready(self, name, timeout):
        return self.models[name]["url"]

    async def stop_server(self, name, remove=False):
        self.stopped.append(name)
        self.models.pop(name, None)


@pytest.fixture
def move(tmp_path, snapshot_store):
    """``(migrator, hub, source workspace, target workspace)`` for moves of alice's server."""
    harness, _ = snapshot_store
    ws, target = tmp_path / "source", tmp_path / "target"
    tree(ws, {"notes.md": b"# notes\n", "pkg/__pycache__/m.pyc": b"c", "pkg/m.py": b"x = 1\n"})
    settings = CloudhopMigration(config=Config({"CloudhopMigration": {
        "store_url": harness.url, "max_file_bytes": LIMIT, "stop_delay": 0}})).settings()
    settings.poll_interval = 0.02
    hub = Hub(harness.url, target, settings)

    async def no_sessions():
        return []

    app = SimpleNamespace(root_dir=str(ws), session_manager=SimpleNamespace(list_sessions=no_sessions))
    return Migrator(app, hub, settings), hub, ws, target


async def finished(migrator, m, states=("done", "failed", "awaiting-accept")):
    for _ in range(500):
        if m.state in states:
            return m
        await asyncio.sleep(0.02)
    raise AssertionError(f"the move is still {m.state}")


async def settled(migrator):
    """Let the source's stop (after ``done``) run."""
    await asyncio.gather(*migrator._tasks)


async def test_a_move_that_left_out_a_file_keeps_the_source_until_the_user_accepts(move):
    migrator, hub, ws, target = move
    (ws / "data").mkdir()
    (ws / "data" / "big.bin").write_bytes(b"0" * BIG)
    await migrator.check({"region": "site-b"})
    m = await finished(migrator, migrator.start({"region": "site-b"}))
    await asyncio.sleep(0.1)

    assert m.state == "awaiting-accept", m.error
    assert hub.stopped == [] and hub.models[m.target_server]["ready"]
    status = m.to_json()
    assert status["left_out"] == "1 file (97.7 KiB)"
    big = [s for s in status["skipped"] if s["path"] == "data/big.bin"]
    assert big == [{"path": "data/big.bin", "kind": "regular file", "size": BIG,
                    "reason": "over the size limit of 64 KiB", "cache": False}]
    assert [s["path"] for s in status["skipped"] if s.get("cache")] == ["pkg/__pycache__"]
    assert (target / "notes.md").read_bytes() == b"# notes\n" and not (target / "data" / "big.bin").exists()
    # the move's snapshot stays in the store, listed with the user's snapshots
    assert m.snapshot_id in [s["id"] for s in migrator.store("tok-alice").list_snapshots()]

    with pytest.raises(Busy, match=f"waits for you to accept.*migrations/{m.id}/accept"):
        migrator.start({"region": "site-c"})

    await migrator.accept(m)
    assert m.state == "done" and m.move_options == {"accept_skipped": True}
    migrator.seen(m)
    await settled(migrator)
    assert hub.stopped == [""]  # this server, and not the target
    assert m.target_server in hub.models
    with pytest.raises(NotAccepted, match="the move is done"):
        await migrator.accept(m)


async def test_accept_skipped_sent_with_the_move_stops_the_source_at_once(move):
    migrator, hub, ws, _ = move
    (ws / "big.bin").write_bytes(b"0" * BIG)
    options = {"region": "site-b", "accept_skipped": True}
    await migrator.check(options)
    assert hub.checked == [{"region": "site-b"}]  # the hub sees the new server's options only
    m = await finished(migrator, migrator.start(options))
    assert m.state == "done", m.error
    assert m.options == {"region": "site-b"} and m.move_options == {"accept_skipped": True}
    migrator.seen(m)
    await settled(migrator)
    assert hub.stopped == [""]


async def test_a_move_that_left_out_only_caches_is_done(move):
    migrator, hub, _, _ = move
    m = await finished(migrator, migrator.start({"region": "site-b"}))
    assert m.state == "done", m.error
    assert [s["path"] for s in m.skipped] == ["pkg/__pycache__"] and m.to_json()["left_out"] == ""
    migrator.seen(m)
    await settled(migrator)
    assert hub.stopped == [""]


async def test_accepting_after_the_target_stopped_fails_the_move_and_keeps_the_source(move):
    migrator, hub, ws, _ = move
    (ws / "big.bin").write_bytes(b"0" * BIG)
    m = await finished(migrator, migrator.start({"region": "site-b"}))
    assert m.state == "awaiting-accept"
    await hub.stop_server(m.target_server)  # the user stopped the new server instead
    with pytest.raises(NotAccepted, match="no longer runs; this server keeps running"):
        await migrator.accept(m)
    assert m.state == "failed" and hub.stopped == [m.target_server]
    # and it no longer blocks a new move
    assert migrator.start({"region": "site-c"}).state == "snapshotting"


async def test_a_stopped_target_no_longer_blocks_a_new_move(move):
    migrator, hub, ws, _ = move
    (ws / "big.bin").write_bytes(b"0" * BIG)
    m = await finished(migrator, migrator.start({"region": "site-b"}))
    await hub.stop_server(m.target_server)
    await migrator.check({"region": "site-c"})
    assert m.state == "failed" and "no longer runs" in m.error
    assert migrator.start({"region": "site-c"}).state == "snapshotting"


@pytest.mark.parametrize("value", ["yes", 1, "true"])
def test_accept_skipped_must_be_true_or_false(value):
    with pytest.raises(OptionError, match="^accept_skipped: must be true or false"):
        migrate.check_options({"region": "site-b", "accept_skipped": value})


# -- the panel's question ----------------------------------------------------------------

AWAITING = {
    "id": "0123456789ab", "state": "awaiting-accept", "target_server": "site-b-abc123",
    "target_url": "/user/ada/site-b-abc123/", "left_out": "2 files (1 GiB)",
    "skipped": [
        {"path": "data/<big>.bin", "kind": "regular file", "size": 1 << 30, "reason": "over the size limit of 1 GiB",
         "cache": False},
        {"path": "notes.tmp", "kind": "regular file", "size": 3, "reason": "excluded by c.CloudhopMigration.exclude "
         "('*.tmp')", "cache": False},
        {"path": ".cache", "kind": "directory", "size": 5, "reason": "cache", "cache": True},
        {"name": "sock", "path": "a.ipynb", "reason": "cannot be saved", "rebuilt": None},
    ],
}


def test_the_question_names_what_was_left_out_and_escapes_it():
    assert notebook.left_out_lines(AWAITING) == [
        "data/<big>.bin (1 GiB: over the size limit of 1 GiB)",
        "notes.tmp (3 bytes: excluded by c.CloudhopMigration.exclude ('*.tmp'))",
    ]
    html = notebook.question(AWAITING)
    assert html.startswith("<b>2 files (1 GiB) were left out</b>")
    assert "data/&lt;big&gt;.bin" in html and "<big>" not in html and ".cache" not in html
    assert "Stop this server anyway?" in html
    many = dict(AWAITING, skipped=[dict(AWAITING["skipped"][1], path=f"f{i}.tmp") for i in range(13)])
    assert notebook.left_out_lines(many)[-1] == "and 3 more (the move's skipped lists them all)"


class ServerAPI:
    """This server's Cloudhop REST API as the panel sees it: a move that awaits the
    user's accept, and is done once accepted."""

    def __init__(self):
        import http.server
        import json
        import threading

        api = self
        self.accepted = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def reply(self, body, status=200):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                path = self.path.removeprefix("/user/ada/cloudhop/api/")
                if path == "info":
                    self.reply({"provider": "local", "region": "site-a", "gpu": "none", "gpu_count": 0})
                elif path == "offers":
                    self.reply({"offers": [{"provider": "local", "region": "site-b", "gpu": "none",
                                            "gpu_count": 0, "price_hour": None}]})
                else:
                    self.reply(dict(AWAITING, state="done") if api.accepted else AWAITING)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.endswith("/accept"):
                    api.accepted += 1
                    self.reply(dict(AWAITING, state="done"))
                else:
                    self.reply(dict(AWAITING, state="snapshotting"), 202)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/user/ada/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_the_panel_asks_before_stopping_this_server_and_goes_on_once_the_user_accepts(monkeypatch):
    import time

    import ipywidgets as w

    api = ServerAPI()
    monkeypatch.setenv("JUPYTERHUB_SERVICE_URL", api.url)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "secret")
    try:
        panel = notebook.panel()
        buttons = {b.description: b for b in widgets_of(panel) if isinstance(b, w.Button)}
        out = next(p for p in widgets_of(panel) if isinstance(p, w.Output))
        buttons["Move"].click()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("were left out" in p.value for p in widgets_of(panel)
                                                      if isinstance(p, w.HTML)):
            time.sleep(0.1)
        question = next(p for p in widgets_of(panel) if isinstance(p, w.HTML) and "were left out" in p.value)
        box = next(p for p in widgets_of(panel) if isinstance(p, w.VBox) and question in p.children)
        assert box.layout.display == "" and not out.outputs  # asked; the browser stays here
        assert "data/&lt;big&gt;.bin" in question.value
        assert buttons["Move"].disabled and api.accepted == 0

        buttons["Stop this server"].click()
        deadline = time.monotonic() + 30
        while not out.outputs and time.monotonic() < deadline:
            time.sleep(0.1)
        assert api.accepted == 1 and box.layout.display == "none"
        assert [o["data"].get("application/javascript") for o in out.outputs] == \
            ['window.top.location.assign("/user/ada/site-b-abc123/");']
    finally:
        api.close()


def test_migrate_without_widgets_prints_what_was_left_out_and_accept_goes_on(monkeypatch, capsys):
    import sys
    import time

    api = ServerAPI()
    monkeypatch.setenv("JUPYTERHUB_SERVICE_URL", api.url)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "secret")
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails: text output
    try:
        move = notebook.migrate(provider="local", region="site-b")
        printed = ""
        deadline = time.monotonic() + 30
        while "accept()" not in printed and time.monotonic() < deadline:
            time.sleep(0.1)
            printed += capsys.readouterr().out
        assert "this server keeps running because 2 files (1 GiB) of yours were left out" in printed
        assert "  data/<big>.bin (1 GiB: over the size limit of 1 GiB)\n" in printed
        assert api.accepted == 0
        assert move.accept()["state"] == "done" and api.accepted == 1
    finally:
        api.close()
