"""The hub's move records and the reconciler's rules, without a hub: phases only go
forward, a hub restart cuts off the moves in flight, the file survives a kill (it is
replaced whole, never half written), and the reconciler stops only what the rule says:
the target of a move that was not done, the source of one that was."""

from __future__ import annotations

import asyncio
import json
import os
import stat

import pytest
from cloudhop.hub.move_book import (
    KEEP_PER_USER,
    KEEP_SECONDS,
    MoveBook,
    MoveConflict,
    book_of,
)
from cloudhop.hub.move_reconciler import (
    SCOPES,
    SERVICE_NAME,
    Action,
    CloudhopMoves,
    Reconciler,
    add_move_reconciler,
    decide,
)
from cloudhop.hub.tokens_api import MOVES_SCOPE, check_move_change
from tornado import web
from traitlets import TraitError
from traitlets.config import Config

RUNNING = {"ready": True, "pending": None}
STOPPED = {"ready": False, "pending": None, "stopped": True}
STARTING = {"ready": False, "pending": "spawn"}
PENDING = {"ready": False, "pending": "stop"}
CHECKED = {"ready": False, "pending": "check"}


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def book(tmp_path, clock=None) -> MoveBook:
    return MoveBook(tmp_path / "moves.json", clock=clock or Clock())


# -- the records ---------------------------------------------------------------------


def test_a_moves_phases_only_go_forward_and_failed_is_final(tmp_path):
    b = book(tmp_path)
    m = b.open("ada", "", "site-b-1", expires_at=5000)
    assert m["phase"] == "snapshotting" and m["timeline"] == {"snapshotting": 1000.0}
    assert b.advance(m, "launching") and b.advance(m, "restoring")
    assert not b.advance(m, "restoring"), "a repeated report changes nothing"
    with pytest.raises(MoveConflict, match="cannot go back to launching"):
        b.advance(m, "launching")
    with pytest.raises(ValueError, match="^phase:"):
        b.advance(m, "teleporting")
    assert b.advance(m, "failed", "boom") and m["error"] == "boom"
    with pytest.raises(MoveConflict, match="has failed"):
        b.advance(m, "done")


def test_done_may_only_turn_failed_and_awaiting_accept_only_done_or_failed(tmp_path):
    b = book(tmp_path)
    done = b.open("ada", "", "t1", expires_at=5000)
    for phase in ("launching", "restoring", "verifying", "done"):
        b.advance(done, phase)
    with pytest.raises(MoveConflict):
        b.advance(done, "awaiting-accept")
    assert b.advance(done, "failed", "the source could not hear the hub record done")
    waiting = b.open("ada", "x", "t2", expires_at=5000)
    for phase in ("launching", "restoring", "verifying", "awaiting-accept"):
        b.advance(waiting, phase)
    with pytest.raises(MoveConflict):
        b.advance(waiting, "verifying")
    assert b.advance(waiting, "done")


def test_a_restarted_hub_cuts_off_every_move_in_flight_and_keeps_the_rest(tmp_path):
    clock = Clock()
    b = book(tmp_path, clock)
    moves = {}
    for phase in ("snapshotting", "launching", "restoring", "verifying", "awaiting-accept", "done"):
        m = moves[phase] = b.open("ada", phase, f"t-{phase}", expires_at=5000)
        for p in ("launching", "restoring", "verifying", phase):
            if p != "snapshotting" and m["phase"] != phase:
                b.advance(m, p)
    asyncio.run(b.commit())
    assert stat.S_IMODE(os.stat(b.path).st_mode) == 0o600

    clock.now = 2000.0
    again = MoveBook(b.path, clock=clock)  # what the next hub process reads
    cut = again.load()
    assert sorted(m["source"] for m in cut) == ["launching", "restoring", "snapshotting", "verifying"]
    assert [m["source"] for m in again.cut_off] == [m["source"] for m in cut]
    for m in cut:
        rec = again.get(m["id"])
        assert rec["phase"] == "failed" and rec["timeline"]["failed"] == 2000.0
        assert rec["error"] == f"the hub restarted while the move was {rec['source']}"
    assert again.get(moves["done"]["id"])["phase"] == "done"
    assert again.get(moves["awaiting-accept"]["id"])["phase"] == "awaiting-accept"


def test_the_file_is_replaced_whole_and_an_unreadable_one_is_set_aside(tmp_path):
    b = book(tmp_path)
    b.open("ada", "", "t", expires_at=5000)
    asyncio.run(b.commit())
    assert [p.name for p in tmp_path.iterdir()] == ["moves.json"], "no temporary file is left"
    b.path.write_text('{"moves": [')  # what a torn write would leave; never written so
    fresh = MoveBook(b.path)
    assert fresh.load() == [] and fresh.moves == {}
    assert (tmp_path / "moves.json.bad").read_text() == '{"moves": ['


def test_settled_records_are_dropped_a_day_after_their_last_update(tmp_path):
    clock = Clock()
    b = book(tmp_path, clock)
    old, live = b.open("ada", "", "t1", expires_at=5000), b.open("ada", "", "t2", expires_at=5000)
    b.settle(old, "finished")
    clock.now += KEEP_SECONDS + 1
    assert [m["id"] for m in json.loads(b.dump())["moves"]] == [live["id"]]
    assert b.unsettled() == [live]


def test_a_user_keeps_at_most_their_newest_settled_records(tmp_path):
    clock = Clock()
    b = book(tmp_path, clock)
    for i in range(KEEP_PER_USER + 5):
        clock.now += 1
        b.settle(b.open("ada", "", f"t{i}", expires_at=5000), "finished")
    live = b.open("ada", "", "live", expires_at=5000)
    other = b.open("bob", "", "t", expires_at=5000)
    b.settle(other, "finished")
    targets = [m["target"] for m in json.loads(b.dump())["moves"]]
    assert len(targets) == KEEP_PER_USER + 2 and "t0" not in targets and f"t{KEEP_PER_USER + 4}" in targets
    assert live["target"] in targets and b.get(other["id"]) is other


def test_the_hub_keeps_records_only_where_the_config_names_a_file(tmp_path):
    assert book_of(Config()) is None and book_of(None) is None
    c = Config()
    add_move_reconciler(c, data_dir=str(tmp_path))
    assert c.CloudhopMoves.record_file == str(tmp_path / "moves.json")
    assert book_of(c) is book_of(c), "one book per file in a hub process"


# -- the reconciler's service and its token --------------------------------------------


def test_the_reconciler_is_a_service_whose_token_stops_servers_and_reads_moves_but_starts_nothing(tmp_path):
    c = Config()
    c.JupyterHub.services = [{"name": "mine", "api_token": "x"}]
    c.CloudhopMoves.interval = 2
    service = add_move_reconciler(c, data_dir=str(tmp_path))
    assert [s["name"] for s in c.JupyterHub.services] == ["mine", SERVICE_NAME]
    assert json.loads(service["environment"]["CLOUDHOP_MOVES_SETTINGS"]) == {"interval": 2.0, "finish_after": 60.0}
    (role,) = [r for r in c.JupyterHub.load_roles if r["name"] == SERVICE_NAME]
    assert role["scopes"] == SCOPES and MOVES_SCOPE in SCOPES
    assert not any(s.startswith(("servers", "start:servers", "admin:", "tokens")) for s in SCOPES)
    off = Config()
    off.CloudhopMoves.enabled = False
    assert add_move_reconciler(off, data_dir=str(tmp_path)) == {} and "services" not in off.JupyterHub
    assert off.CloudhopMoves.record_file, "the hub still keeps records"


@pytest.mark.parametrize("name, value", [("interval", 0), ("interval", -1), ("finish_after", -5)])
def test_bad_settings_name_the_setting(name, value):
    with pytest.raises(TraitError, match=rf"c\.CloudhopMoves\.{name}"):
        CloudhopMoves(**{name: value})


@pytest.mark.parametrize("body, owner, status, field", [
    ({"phase": "launching"}, True, 400, "move"),
    ({"move": "", "phase": "launching"}, True, 400, "move"),
    ({"move": "m1", "phase": "teleporting"}, True, 400, "phase"),
    ({"move": "m1", "colour": "red"}, True, 400, "colour"),
    ({"move": "m1", "error": 7}, True, 400, "error"),
    ({"move": "m1", "settled": "yes"}, False, 400, "settled"),
    ({"move": "m1", "settled": True}, True, 403, "settled"),
    ({"move": "m1", "phase": "done"}, False, 403, "phase"),
])
def test_a_moves_report_names_the_bad_field_and_only_the_reconciler_settles(body, owner, status, field):
    with pytest.raises(web.HTTPError) as err:
        check_move_change(body, owner=owner)
    assert err.value.status_code == status and err.value.log_message.startswith(f"{field}:")


def test_a_moves_report_keeps_at_most_a_bounded_error():
    change = check_move_change({"move": "m1", "phase": "failed", "error": "x" * 10_000}, owner=True)
    assert len(change["error"]) == 2000
    assert check_move_change({"move": "m1", "phase": "failed", "settled": True, "note": "n"}, owner=False)


# -- the rules ---------------------------------------------------------------------------


def move(phase, expires_at=5000.0):
    return {"id": "m1", "user": "ada", "source": "", "target": "site-b-1", "phase": phase,
            "expires_at": expires_at}


@pytest.mark.parametrize("phase", ["snapshotting", "launching", "restoring", "verifying"])
@pytest.mark.parametrize("source, target, kind", [
    (RUNNING, None, "wait"), (RUNNING, RUNNING, "wait"), (RUNNING, STARTING, "wait"),
    (None, RUNNING, "fail"), (STOPPED, RUNNING, "fail"), (STOPPED, None, "fail"),
])
def test_a_move_in_flight_fails_once_its_source_stopped(phase, source, target, kind):
    action = decide(move(phase), source, target, now=1000, done_since=None, finish_after=60)
    assert action.kind == kind
    if kind == "fail":
        assert action.text == f"the source server stopped while the move was {phase}"


def test_a_move_in_flight_fails_once_its_token_expired():
    action = decide(move("restoring", expires_at=999), RUNNING, RUNNING, now=1000, done_since=None, finish_after=60)
    assert action == Action("fail", "the move's token expired while the move was restoring")


@pytest.mark.parametrize("target, kind", [(RUNNING, "remove-target"), (STOPPED, "remove-target"),
                                          (STARTING, "remove-target"), (PENDING, "wait"), (CHECKED, "wait"),
                                          (None, "settle")])
def test_a_failed_moves_target_is_removed_and_its_source_never_touched(target, kind):
    for source in (RUNNING, STOPPED, None):
        assert decide(move("failed"), source, target, now=1000, done_since=None, finish_after=60).kind == kind


@pytest.mark.parametrize("source, target, kind", [
    (RUNNING, RUNNING, "wait"), (RUNNING, STOPPED, "fail"), (RUNNING, None, "fail"),
    (STOPPED, RUNNING, "settle"), (None, RUNNING, "settle"),
])
def test_a_verified_move_awaiting_accept_is_left_to_the_user_while_both_run(source, target, kind):
    assert decide(move("awaiting-accept"), source, target, now=1000, done_since=None, finish_after=60).kind == kind


def test_a_move_awaiting_accept_past_its_expiry_ends_with_one_server():
    """Attack: a move's target starts beside its source uncounted by max_servers; a user
    who never accepts must not keep both past the move's life. The move fails and its
    target is removed (the source, never touched, runs on)."""
    expired = move("awaiting-accept", expires_at=999)
    action = decide(expired, RUNNING, RUNNING, now=1000, done_since=None, finish_after=60)
    assert action.kind == "fail" and "expired" in action.text
    assert decide({**expired, "phase": "failed"}, RUNNING, RUNNING, now=1000, done_since=None,
                  finish_after=60).kind == "remove-target"


def test_only_a_live_move_in_flight_names_the_source_its_target_replaces(tmp_path):
    clock = Clock(1000.0)
    b = book(tmp_path, clock)
    m = b.open("ada", "", "site-b-1", expires_at=2000.0)
    assert b.replaced_source("ada", "site-b-1") == ""
    assert b.replaced_source("ada", "other") is None and b.replaced_source("eve", "site-b-1") is None
    b.advance(m, "launching")
    assert b.replaced_source("ada", "site-b-1") == ""
    clock.now = 2001.0  # expired
    assert b.replaced_source("ada", "site-b-1") is None
    clock.now = 1500.0
    b.advance(m, "awaiting-accept")  # verified: the target started already
    assert b.replaced_source("ada", "site-b-1") is None
    failed = b.open("ada", "", "site-b-2", expires_at=2000.0)
    b.advance(failed, "failed", "a new move of this server replaced it")
    assert b.replaced_source("ada", "site-b-2") is None


@pytest.mark.parametrize("source, target, since, kind", [
    (STOPPED, RUNNING, 0, "settle"), (None, RUNNING, 0, "settle"),
    (RUNNING, RUNNING, 990, "wait"),          # the source still has time to stop itself
    (RUNNING, RUNNING, 900, "stop-source"),   # it did not: the move is finished for it
    (PENDING, RUNNING, 900, "wait"),          # it is stopping
    (RUNNING, STARTING, 900, "wait"),
    (RUNNING, CHECKED, 900, "wait"),
    (RUNNING, STOPPED, 900, "settle"),        # the target went away: the source is kept
    (RUNNING, None, 900, "settle"),
])
def test_a_done_move_whose_source_still_runs_is_finished_only_while_its_target_runs(source, target, since, kind):
    action = decide(move("done"), source, target, now=1000, done_since=since, finish_after=60)
    assert action.kind == kind
    if kind == "settle" and source is RUNNING:
        assert "source keeps running" in action.text


class FakeHub:
    """The hub API as the reconciler sees it: records and servers, and what it asked."""

    api_url, token = "http://hub.invalid/hub/api", "t"

    def __init__(self, moves, servers):
        self.records = {m["id"]: m for m in moves}
        self.servers = servers
        self.calls = []

    async def moves(self):
        return [dict(m) for m in self.records.values() if not m.get("settled")]

    async def server(self, name):
        return self.servers.get(name)

    async def report_move(self, change):
        self.calls.append(("report", change))
        m = self.records[change["move"]]
        if change.get("phase"):
            m["phase"], m["error"] = change["phase"], change.get("error")
        if change.get("settled"):
            m["settled"] = True
        return dict(m)

    async def stop_server(self, name, remove=False):
        self.calls.append(("stop", name, remove))
        self.servers.pop(name) if remove else self.servers.update({name: STOPPED})


class FakeReconciler(Reconciler):
    def client(self, move):
        return self.hub


def test_a_sweep_fails_a_cut_off_move_removes_its_target_then_settles_it():
    hub = FakeHub([move("restoring")], {"": STOPPED, "site-b-1": RUNNING})
    r = FakeReconciler(hub, clock=Clock())
    asyncio.run(r.sweep())
    assert hub.calls == [
        ("report", {"move": "m1", "phase": "failed", "error": "the source server stopped while the move was restoring"}),
        ("stop", "site-b-1", True),
    ]
    hub.calls.clear()
    asyncio.run(r.sweep())
    assert hub.calls == [("report", {"move": "m1", "settled": True,
                                     "note": "rolled back: the new server is gone; the source was not touched"})]
    asyncio.run(r.sweep())
    assert len(hub.calls) == 1, "a settled move is not looked at again"


def test_a_done_moves_source_is_stopped_only_after_finish_after_counted_from_when_it_was_seen():
    clock = Clock(10_000.0)
    hub = FakeHub([move("done")], {"": RUNNING, "site-b-1": RUNNING})
    r = FakeReconciler(hub, finish_after=60, clock=clock)
    asyncio.run(r.sweep())
    clock.now += 30
    asyncio.run(r.sweep())
    assert hub.calls == [], "the source may still stop itself"
    clock.now += 31
    asyncio.run(r.sweep())
    assert hub.calls == [("stop", "", False)]
    asyncio.run(r.sweep())
    assert hub.calls[-1] == ("report", {"move": "m1", "settled": True, "note": "finished: the source has stopped"})
