"""Failover and policy through a real hub: a scripted "no capacity" on the cheapest offer
lands the server on the next one, the progress events and the server's state say so,
the final error lists every offer tried; a group limited to L4/T4 on GCP cannot get an
H100 through the REST API or see one in the form."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
import requests

from hubfixture import HubProcess

TESTS = Path(__file__).parent
DOUBLE = "failover_double:ScriptedCloud"

pytestmark = pytest.mark.e2e

EXTRA_CONFIG = f"""
import sys
c.CloudhopSpawner.providers = [{DOUBLE!r}, "gcp"]
c.ScriptedCloud.no_capacity = {{
    "ana": ["cheap/cpu-small"],
    "bo": ["cheap/cpu-small", "mid/cpu-small", "dear/cpu-small"],
}}
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
# GCP offers come from the catalog; these tests never get past validation on GCP
c.GCPProvider.project = "cloudhop-test"
c.GCPProvider.api_endpoint = "http://127.0.0.1:9"
c.GCPProvider.anonymous_credentials = True
c.Policy.groups = {{
    "students": {{"providers": ["gcp"], "gpus": ["L4", "T4"], "max_gpus": 1}},
    "tight": {{"budget": {{"usd": 0.15, "period": "day"}}}},
}}
# spend so far per group, as an accounting service would report it
c.Policy.spend = lambda user, group, since: {{"tight": 0.1}}.get(group, 0.0)
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("failover")
    hub = HubProcess(tmp, extra_config=EXTRA_CONFIG, env={"PYTHONPATH": str(TESTS)})
    hub.start()
    yield hub
    for user in ("ana",):
        try:
            if hub.server_model(user):
                hub.stop_server(user)
        except Exception:
            pass
    hub.stop()


def read_progress(hub: HubProcess, user: str, events: list, stop: threading.Event) -> None:
    """Collect the spawn's progress events (the hub replays them from the start)."""
    url = f"{hub.url}/hub/api/users/{user}/server/progress"
    while not stop.is_set():
        try:
            with requests.get(url, headers={"Authorization": f"token {hub.token}"}, stream=True, timeout=60) as r:
                if r.status_code != 200:
                    time.sleep(0.05)
                    continue
                for line in r.iter_lines(decode_unicode=True):
                    if line and line.startswith("data:"):
                        event = json.loads(line[5:])
                        events.append(event)
                        if event.get("ready") or event.get("failed"):
                            return
        except requests.RequestException:
            time.sleep(0.05)


def test_capacity_failure_on_the_cheapest_offer_lands_on_the_next(hub):
    hub.ensure_user("ana")
    events: list = []
    stop = threading.Event()
    reader = threading.Thread(target=read_progress, args=(hub, "ana", events, stop), daemon=True)
    reader.start()
    try:
        r = hub.api("POST", "/users/ana/server", json={"provider": "auto", "gpu": "none"})
        assert r.status_code in (201, 202), r.text
        hub.wait_ready("ana")
        reader.join(30)
    finally:
        stop.set()
    messages = [e.get("message", "") for e in events]
    text = "\n".join(messages)
    # the plan starts at the cheapest offer, which answers no capacity; the next one launches
    assert f"Plan: 3 offer(s), first {DOUBLE}/cheap/cpu-small" in text, text
    assert re.search(rf"{re.escape(DOUBLE)}/cheap/cpu-small: capacity \(no capacity for cpu-small in cheap \(scripted\)\); trying the next offer", text), text
    assert f"{DOUBLE}/mid/cpu-small: node local-" in text, text
    assert events[-1].get("ready") is True

    # the server's state keeps the attempts and the offer it landed on
    model = hub.server_model("ana")
    state = model["state"]
    assert state["offer"]["region"] == "mid"
    tried = [(a["offer"], a["state"]) for a in state["attempts"]]
    assert tried == [(f"{DOUBLE}/cheap/cpu-small", "failed"), (f"{DOUBLE}/mid/cpu-small", "launched")]
    assert state["attempts"][0]["reason"] == "capacity"
    # and it is a real server
    assert hub.server_api("GET", "ana", "api/status").status_code == 200


def test_when_every_offer_fails_the_error_lists_what_was_tried(hub):
    hub.ensure_user("bo")
    r = hub.api("POST", "/users/bo/server", json={"provider": "auto", "gpu": "none"})
    assert r.status_code == 503, (r.status_code, r.text)
    message = r.json()["message"]
    assert "Tried 3 offer(s)" in message
    for region in ("cheap", "mid", "dear"):
        assert f"{DOUBLE}/{region}/cpu-small (capacity: no capacity for cpu-small in {region} (scripted))" in message
    assert hub.server_model("bo") is None


def make_student(hub: HubProcess, name: str, group: str = "students") -> None:
    hub.ensure_user(name)
    r = hub.api("POST", f"/groups/{group}", json={"users": [name]})
    if r.status_code == 409:  # the group exists: add the user
        r = hub.api("POST", f"/groups/{group}/users", json={"users": [name]})
    assert r.status_code in (200, 201), r.text


@pytest.mark.parametrize("options,field,says", [
    ({"provider": "gcp", "gpu": "H100", "gpu_count": 1}, "gpu", "gpu: 'H100' is not allowed for group 'students'; allowed GPUs: L4, T4"),
    ({"gpu": "h100", "gpu_count": 8}, "gpu", "allowed GPUs: L4, T4"),
    ({"provider": DOUBLE, "gpu": "none"}, "provider", "allowed providers: gcp"),
    ({"provider": "gcp", "gpu": "L4", "gpu_count": 2}, "gpu_count", "more than group 'students' allows: at most 1"),
])
def test_students_limited_to_l4_t4_on_gcp_are_refused_by_the_api(hub, options, field, says):
    make_student(hub, "stu")
    r = hub.api("POST", "/users/stu/server", json=options)
    assert r.status_code == 403, (r.status_code, r.text)
    message = r.json()["message"]
    assert message.startswith(f"{field}:") and says in message, message
    assert hub.server_model("stu") is None


def login(hub: HubProcess, name: str) -> requests.Session:
    """A browser-like session logged in through the hub's login form."""
    session = requests.Session()
    session.get(f"{hub.url}/hub/login", timeout=30)
    password = (hub.data_dir / "user_password").read_text().strip()
    r = session.post(f"{hub.url}/hub/login", data={
        "username": name, "password": password, "_xsrf": session.cookies.get("_xsrf", ""),
    }, allow_redirects=False, timeout=30)
    assert r.status_code == 302, r.text[:500]
    return session


def test_the_form_offers_students_only_what_their_policy_allows(hub):
    make_student(hub, "stu")
    r = login(hub, "stu").get(f"{hub.url}/hub/spawn", timeout=30)
    assert r.status_code == 200, r.text[:500]
    data = re.search(r'<script type="application/json" id="ch-offers-data">(.*?)</script>', r.text, re.S)
    offers = json.loads(data.group(1))
    assert offers and {(o["provider"], o["gpu"]) for o in offers} == {("gcp", "L4"), ("gcp", "T4")}
    assert all(o["gpu_count"] == 1 for o in offers)
    assert 'value="gcp"' in r.text and DOUBLE not in r.text


def test_a_group_without_budget_left_for_an_hour_is_refused(hub):
    make_student(hub, "tim", group="tight")
    r = hub.api("POST", "/users/tim/server", json={"provider": "auto", "gpu": "none"})
    assert r.status_code == 403, (r.status_code, r.text)
    assert r.json()["message"] == (
        "budget: one hour at $0.10/h is more than the $0.05 left of group 'tight''s "
        "$0.15 budget this day (budget); pick a cheaper offer"
    )
    assert hub.server_model("tim") is None
