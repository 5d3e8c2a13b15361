"""The local provider's node records as the folder holds them, though their parsing is
kept between reads (:meth:`LocalProvider._records`), and a stop's one pass over the
machine's processes (:meth:`LocalProvider._node_processes`).

Each test attacks a stale answer: a second provider on the same folder (another process:
the reaper, a restarted hub) adds, removes or replaces records behind the first one's
back, and the first must neither give a GPU twice nor keep a record that is gone."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import psutil
import pytest

from cloudhop.spawner.providers.base import TAG_HUB, TAG_USER, CapacityError, LaunchSpec
from cloudhop.spawner.providers.local import NODE_ENV, SETTLED_NS, LocalProvider
from fakes.nvml import fake_gpus_env

SLEEPER = ["/bin/sh", "-c", "sleep 120 & wait"]


@pytest.fixture
def gpus(monkeypatch):
    for k, v in fake_gpus_env("Tesla T4", "Tesla T4").items():
        monkeypatch.setenv(k, v)


def make(root) -> LocalProvider:
    return LocalProvider(default_root=str(root), nvml_module="fakes.nvml", stop_timeout=3, isolation="none",
                         regions={"a": {"gpus": "0,1"}, "cpu": {"gpus": "none"}})


@pytest.fixture
def pair(tmp_path, gpus):
    """Two providers on one state folder: the hub's and another process's."""
    one, other = make(tmp_path / "ws"), make(tmp_path / "ws")
    yield one, other
    for rec in one._records():
        one._kill_tree(rec)


def spec(offer, rid, user="ada"):
    return LaunchSpec(request_id=rid, offer=offer, cmd=SLEEPER, env={"PATH": "/usr/bin:/bin"},
                      tags={TAG_HUB: "hub-r", TAG_USER: user}, port=9999)


def t4(p, count=1):
    return next(o for o in p.offers() if o.region == "a" and o.gpu == "T4" and o.gpu_count == count)


async def test_a_gpu_taken_by_another_process_is_never_given_again(pair):
    one, other = pair
    assert t4(one).available == 2 and one._allocated() == {}  # read (and kept) before the launch
    theirs = await other.launch(spec(t4(other, 2), "r-other"))
    assert sorted(one._allocated().values()) == [1, 1], "the other's record counts at once"
    assert t4(one).available == 0
    with pytest.raises(CapacityError):
        await one.launch(spec(t4(one), "r-mine"))
    await other.terminate(theirs.id)
    assert t4(one).available == 2, "and its removal too"
    mine = await one.launch(spec(t4(one), "r-mine"))
    with pytest.raises(CapacityError):
        await other.launch(spec(t4(other, 2), "r-other-2"))
    assert other._allocated()[mine.info["gpus"][0]] == 1
    await one.terminate(mine.id)


async def test_a_removed_record_does_not_linger(pair):
    one, _ = pair
    node = await one.launch(spec(t4(one), "r1"))
    assert [r["id"] for r in one._records()] == [node.id]
    one._kill_tree(one._records()[0])
    one._record_path(node.id).unlink()  # as another process's terminate does
    assert one._records() == [] and one._parsed == {}
    assert await one.list_nodes({TAG_HUB: "hub-r"}) == []
    assert (await one.status(node.id)).state == "terminated"


async def test_a_record_replaced_under_its_name_is_read_again(pair):
    one, _ = pair
    node = await one.launch(spec(t4(one), "r1"))
    gpu = node.info["gpus"][0]
    time.sleep(SETTLED_NS / 1e9 + 0.05)  # old enough for its parse to be kept
    assert one._allocated() == {gpu: 1} and one._record_path(node.id).name in one._parsed
    path = one._record_path(node.id)
    before = path.stat()
    rec = json.loads(path.read_text())
    other_gpu = next(g.uuid for g in one.gpus if g.uuid != gpu)
    # written in place, the same size, its modification time set back: only the change
    # time (which no one can set) tells
    text = json.dumps({**rec, "gpus": [other_gpu]})
    assert len(text) == before.st_size
    path.write_text(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert one._allocated() == {other_gpu: 1}
    time.sleep(SETTLED_NS / 1e9 + 0.05)
    assert one._allocated() == {other_gpu: 1}
    tmp = path.with_suffix(".tmp")  # a new file renamed over it
    tmp.write_text(json.dumps({**rec, "gpus": [gpu]}))
    tmp.replace(path)
    assert one._allocated() == {gpu: 1}
    path.write_text("{not json")
    assert one._records() == [], "an unreadable record is skipped, not served from before"
    path.write_text(json.dumps(rec))
    await one.terminate(node.id)


async def test_a_caller_changing_a_record_changes_no_later_answer(pair):
    one, _ = pair
    node = await one.launch(spec(t4(one), "r1"))
    rec = one._records()[0]
    rec["gpus"].clear()
    rec["tags"][TAG_USER] = "mallory"
    assert one._records()[0]["gpus"] == node.info["gpus"]
    assert [n.id for n in await one.list_nodes({TAG_USER: "ada"})] == [node.id]
    await one.terminate(node.id)


async def test_launches_at_once_never_share_a_gpu_nor_make_one_request_twice(pair):
    one, _ = pair
    cpu = next(o for o in one.offers() if o.region == "cpu")
    nodes = await asyncio.gather(*(one.launch(spec(cpu, "same")) for _ in range(3)))
    assert len({n.id for n in nodes}) == 1, "a request launched three times at once makes one node"
    others = await asyncio.gather(*(one.launch(spec(cpu, f"c{i}")) for i in range(3)))
    assert len({n.id for n in others}) == 3
    offer = t4(one)
    got = await asyncio.gather(*(one.launch(spec(offer, f"g{i}")) for i in range(3)), return_exceptions=True)
    launched = [n for n in got if not isinstance(n, BaseException)]
    assert len(launched) == 2 and [type(e) for e in got if isinstance(e, BaseException)] == [CapacityError]
    assert launched[0].info["gpus"] != launched[1].info["gpus"], "two launches at once, two GPUs"
    assert one._request_locks == {}, "a request's lock goes with its last launch"
    for node in [nodes[0], *others, *launched]:
        await one.terminate(node.id)


# the server starts a "kernel" in a session of its own (it keeps the node's id in its
# environment), and waits
KERNEL = ["/bin/sh", "-c", "setsid sleep 120 & sleep 120 & wait"]


async def test_a_stop_takes_the_nodes_processes_and_leaves_the_others(tmp_path, gpus):
    p = make(tmp_path / "ws")
    node = await p.launch(LaunchSpec(request_id="r-k", offer=next(o for o in p.offers() if o.region == "cpu"),
                                     cmd=KERNEL, env={"PATH": "/usr/bin:/bin"},
                                     tags={TAG_HUB: "hub-r", TAG_USER: "ada"}, port=9999))
    pid = node.info["pid"]
    # started after the node, by the same user, in a session of its own: not the node's
    bystander = subprocess.Popen(["sleep", "120"], start_new_session=True,
                                 env={"PATH": "/usr/bin:/bin", "HOME": node.info["workspace"]})
    try:
        kernel = None
        for _ in range(200):
            kernel = next((q for q in psutil.process_iter() if q.pid != pid and _sid(q.pid) == q.pid
                           and _env(q).get(NODE_ENV) == node.id), None)
            children = psutil.Process(pid).children()
            if kernel is not None and children:
                break
            time.sleep(0.05)
        assert kernel is not None and children
        rec = p._records()[0]
        found = {q.pid for q in p._node_processes(rec)}
        assert {pid, kernel.pid} | {c.pid for c in children} <= found
        assert bystander.pid not in found and os.getpid() not in found
        await p.terminate(node.id)
        time.sleep(0.2)
        assert not any(q.is_running() and q.status() != psutil.STATUS_ZOMBIE for q in [kernel, *children])
        assert bystander.poll() is None, "a process that is not the node's is left alone"
    finally:
        bystander.kill()
        bystander.wait()
        for rec in p._records():
            p._kill_tree(rec)


def _sid(pid):
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _env(q) -> dict:
    try:
        return q.environ()
    except psutil.Error:
        return {}


def test_the_process_scan_reads_what_psutil_reads():
    from cloudhop.spawner.providers import local_procs

    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        table = {p.pid: p for p in local_procs.scan()}
        for pid in (os.getpid(), child.pid):
            p, ps = table[pid], psutil.Process(pid)
            assert (p.ppid, p.sid) == (ps.ppid(), os.getsid(pid))
            assert abs(p.started - ps.create_time()) < 0.05, "start times compare with a node record's"
        assert table[child.pid].sid == child.pid and table[child.pid].ppid == os.getpid()
    finally:
        child.kill()
        child.wait()
