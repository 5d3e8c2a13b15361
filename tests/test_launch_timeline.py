"""A cloud launch's timeline: the phases the hub sees (API call, instance running, first
answer) and the bootstrap steps the node reports, in the server's state and on its
progress page; a local launch has none. The progress page of an AWS spawn against moto
is tested through a real hub in tests/test_launch_timeline_e2e.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from instant_cloud import NAME, InstantCloud
from test_bootstrap import run_start_script
from tornado import httpserver, web
from tornado.testing import bind_unused_port

from cloudhop.spawner import CloudhopSpawner, launch_timeline
from cloudhop.spawner.bootstrap import node_env
from cloudhop.spawner.timeline import Timeline


def cloud_spawner() -> CloudhopSpawner:
    s = CloudhopSpawner(user=SimpleNamespace(name="ada", url="/user/ada/", escaped_name="ada", groups=[]),
                        providers=[NAME], node_poll_interval=0.01)
    cloud = InstantCloud()
    s.provider = lambda name: cloud
    s.get_env = lambda: {"JUPYTERHUB_API_URL": "http://hub.example.org/hub/api"}
    s.user_options = {"provider": NAME, "gpu": "none"}
    return s


def events(s) -> list[str]:
    return [e["message"] for e in s._events]


async def test_a_cloud_spawn_writes_its_phases_to_its_state_and_progress():
    s = cloud_spawner()
    await s.start()
    phases = [p["phase"] for p in s.get_state()["timeline"]["phases"]]
    assert phases == ["api_call", "instance_running"]
    lines = [m for m in events(s) if m.startswith("Launch timeline: ")]
    assert [m.split(" at ")[0] for m in lines] == ["Launch timeline: cloud API call",
                                                   "Launch timeline: instance running"]
    seconds = [p["seconds"] for p in s.timeline.phases]
    assert seconds == sorted(seconds) and all(x >= 0 for x in seconds)

    # the node's bootstrap steps, as the hub's launch-step endpoint passes them on
    assert launch_timeline.node_step(s, "image") is True
    assert launch_timeline.node_step(s, "image") is False, "a step is marked once"
    with pytest.raises(ValueError, match="^step: must be one of driver, image, server"):
        launch_timeline.node_step(s, "rm -rf /")
    assert "Launch timeline: bootstrap: image pull at" in " ".join(events(s))

    # a restarted hub reads it back
    t = cloud_spawner()
    t.load_state(s.get_state())
    assert [p["phase"] for p in t.timeline.phases] == ["api_call", "instance_running", "image"]
    await s.stop()
    s.clear_state()
    assert s.timeline is None and "timeline" not in s.get_state()


async def test_the_first_answer_is_marked_once_the_server_answers():
    class Answer(web.RequestHandler):
        def get(self, _path):
            self.set_status(302)  # any answer counts, as for JupyterHub's own check

    sock, port = bind_unused_port()
    server = httpserver.HTTPServer(web.Application([(r"/(.*)", Answer)]))
    server.add_sockets([sock])
    try:
        s = cloud_spawner()
        s.timeline = Timeline()
        saved = []
        s._save_state = lambda: saved.append(True)
        launch_timeline.watch_first_answer(s, f"http://127.0.0.1:{port}/user/ada/", timeout=30)
        await asyncio.wait_for(s._answer_probe, 30)
        assert s.timeline.has("first_answer") and saved
        assert any(m.startswith("Launch timeline: first answer at ") for m in events(s))
    finally:
        server.stop()


async def test_a_stop_ends_the_probe_of_a_server_that_never_answers():
    s = cloud_spawner()
    s.timeline = Timeline()
    _sock, port = bind_unused_port()  # bound, never accepting: no answer
    launch_timeline.watch_first_answer(s, f"http://127.0.0.1:{port}/", timeout=600)
    probe = s._answer_probe
    await s.stop()
    await asyncio.sleep(0)
    assert probe.cancelled() or probe.done()
    assert not s.timeline.has("first_answer")


def test_a_state_without_a_timeline_or_with_a_broken_one_has_none():
    assert Timeline.from_state(None) is None
    assert Timeline.from_state({"phases": []}) is None
    kept = Timeline.from_state({"started": 1.0, "phases": [{"phase": "api_call", "seconds": 2.0},
                                                            {"phase": "bogus", "seconds": 1.0}]})
    assert [p["phase"] for p in kept.phases] == ["api_call"]


def test_only_a_notebook_node_gets_the_launch_step_url_on_the_hubs_connect_address():
    spec = SimpleNamespace(role="notebook", port=8888, env={
        "JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api", "JUPYTERHUB_USER": "a b@c",
        "JUPYTERHUB_SERVER_NAME": "gpu", "JUPYTERHUB_API_TOKEN": "t"})
    env = node_env(spec, hub_connect_url="https://hub.example.org")
    assert env["CLOUDHOP_LAUNCH_STEPS_URL"] == "https://hub.example.org/hub/api/cloudhop/launch-steps/a%20b%40c/gpu"
    worker = SimpleNamespace(**{**vars(spec), "role": "ray-worker"})
    assert "CLOUDHOP_LAUNCH_STEPS_URL" not in node_env(worker, hub_connect_url="https://hub.example.org")


def test_the_start_script_reports_its_steps_in_order(tmp_path):
    proc, _calls = run_start_script(tmp_path, package_manager=("apt-get",))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.index("step done: driver") < out.index("step done: image") < out.index("step done: server")
