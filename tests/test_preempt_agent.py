"""The preemption agent without a hub process: a real watcher against the metadata
double, a snapshot callable that records its calls, and a loopback HTTP endpoint in the
hub's place that can be down. A notice with the hub down: the snapshot is taken once, the
hub is asked again until it answers. A second notice: nothing more happens."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cloudhop.extensions.hubclient import HubClient
from cloudhop.extensions.preempt import agent_for
from cloudhop.extensions.preempt.agent import Agent
from cloudhop.extensions.preempt.watchers import AWSWatcher, Notice
from tests.fakes.metadata import FakeMetadata


class HubDouble:
    """``POST /hub/api/cloudhop/rescue/<user>[/<server>]`` on loopback; ``status`` is what it
    answers (None: the port is closed, as a hub that is down)."""

    def __init__(self):
        self.calls: list[tuple[str, dict, str]] = []
        self.status: int | None = 202
        self._server: ThreadingHTTPServer | None = None
        self.port = None

    def start(self) -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                hub.calls.append((self.path, body, self.headers.get("Authorization")))
                reply = json.dumps({"phase": "relaunching", "snapshot": body.get("snapshot")}).encode()
                self.send_response(hub.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port or 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return f"http://127.0.0.1:{self.port}/hub/api"

    def stop(self):
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def hub():
    double = HubDouble()
    double.url = double.start()
    yield double
    double.stop()


@pytest.fixture
def aws():
    fake = FakeMetadata("aws")
    fake.url = fake.start()
    yield fake
    fake.stop()


class Snapshots:
    def __init__(self, fail: int = 0):
        self.taken: list[Notice] = []
        self.fail = fail

    async def __call__(self, notice: Notice) -> dict:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("snapshot store: 503 unavailable")
        self.taken.append(notice)
        return {"id": f"snap-{len(self.taken)}", "bytes": 1234}


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    monkeypatch.setattr("cloudhop.extensions.preempt.agent.BACKOFF", (0.05, 0.1, 0.2))


async def test_notice_snapshots_then_tells_the_hub_with_the_servers_token(aws, hub):
    snapshots = Snapshots()
    agent = Agent(AWSWatcher(aws.url, interval=0.05), snapshots, HubClient(hub.url, "server-token", "ann", "gpu"))
    task = asyncio.ensure_future(agent.run())
    await asyncio.sleep(0.3)
    assert not task.done() and not snapshots.taken
    aws.notice()
    record = await asyncio.wait_for(task, 10)
    assert [n.kind for n in snapshots.taken] == ["interruption"]
    [(path, body, auth)] = hub.calls
    assert path == "/hub/api/cloudhop/rescue/ann/gpu" and auth == "token server-token"
    assert body["snapshot"] == "snap-1" and body["notice"]["cloud"] == "aws"
    assert body["notice_to_snapshot_s"] >= 0 and record["notice_to_snapshot_s"] == body["notice_to_snapshot_s"]
    assert record["hub"] == "told"


async def test_hub_down_snapshot_still_taken_and_the_hub_asked_until_it_answers(aws, hub):
    hub.stop()  # the hub is down when the notice comes
    snapshots = Snapshots()
    agent = Agent(AWSWatcher(aws.url, interval=0.05), snapshots, HubClient(hub.url, "t", "ann"), retry_for=30)
    aws.notice()
    task = asyncio.ensure_future(agent.run())
    for _ in range(100):  # the snapshot does not wait for the hub
        if snapshots.taken:
            break
        await asyncio.sleep(0.05)
    assert [t.kind for t in snapshots.taken] == ["interruption"]
    await asyncio.sleep(0.5)
    assert not task.done() and hub.calls == []
    hub.start()  # back on the same port
    record = await asyncio.wait_for(task, 10)
    assert record["hub"] == "told" and len(hub.calls) == 1 and len(snapshots.taken) == 1


async def test_hub_refusal_is_not_retried(aws, hub):
    hub.status = 404
    agent = Agent(AWSWatcher(aws.url, interval=0.05), Snapshots(), HubClient(hub.url, "t", "ann"))
    aws.notice()
    record = await asyncio.wait_for(agent.run(), 10)
    assert record["hub"].startswith("refused: hub: 404") and len(hub.calls) == 1


async def test_second_notice_changes_nothing(aws, hub):
    snapshots = Snapshots()
    agent = Agent(AWSWatcher(aws.url, interval=0.05), snapshots, HubClient(hub.url, "t", "ann"))
    aws.rebalance()
    first = await asyncio.wait_for(agent.run(), 10)
    aws.notice()  # the interruption itself, after the rebalance recommendation
    notice = await asyncio.wait_for(agent.watcher.wait(), 10)
    again = await agent.rescue(notice)
    assert again is first and first["notice"]["kind"] == "rebalance"
    assert len(snapshots.taken) == 1 and len(hub.calls) == 1


async def test_failing_snapshot_is_retried_then_reported(aws, hub):
    snapshots = Snapshots(fail=2)
    agent = Agent(AWSWatcher(aws.url, interval=0.05), snapshots, HubClient(hub.url, "t", "ann"))
    aws.notice()
    record = await asyncio.wait_for(agent.run(), 10)
    assert record["snapshot"] == "snap-1" and hub.calls[0][1]["snapshot"] == "snap-1"

    never = Agent(AWSWatcher(aws.url, interval=0.05), Snapshots(fail=1000), HubClient(hub.url, "t", "ann"),
                  snapshot_window=0.3)
    record = await asyncio.wait_for(never.run(), 10)
    assert "snapshot" not in record and record["error"].startswith("the snapshot failed")
    assert hub.calls[-1][1]["error"] == record["error"] and "snapshot" not in hub.calls[-1][1]


def test_agent_runs_only_on_spot_nodes_of_clouds_with_notices(hub):
    client = HubClient(hub.url, "t", "ann")
    base = {"CLOUDHOP_PROVIDER": "aws", "CLOUDHOP_SPOT": "1"}
    assert agent_for(None, client, base).watcher.cloud == "aws"
    assert agent_for(None, client, dict(base, CLOUDHOP_SPOT="")) is None  # on-demand
    assert agent_for(None, client, dict(base, CLOUDHOP_PROVIDER="local")) is None
    assert agent_for(None, client, dict(base, CLOUDHOP_PROVIDER="local", CLOUDHOP_PREEMPT_CLOUD="gcp",
                                        CLOUDHOP_METADATA_URL="http://127.0.0.1:9/x")).watcher.url \
        == "http://127.0.0.1:9/x"
    assert agent_for(None, HubClient("", "", ""), base) is None  # not started by a hub
