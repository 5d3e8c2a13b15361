"""A real hub: a refused spawn leaves no named server behind and says why in plain
words; the progress page's event stream shows a spawn's events as they happen, through
the hub's proxy; the Home page shows where each server runs and every page carries the
Cloudhop name."""

from __future__ import annotations

import json
import re
import sys
import threading
import time

import pytest
import requests
from gated_server import gated_config, open_gate
from test_e2e_form_providers import login

def servers(hub, user: str) -> dict:
    """Every server of ``user``, running or not, as the Admin page lists them."""
    r = hub.api("GET", f"/users/{user}?include_stopped_servers=1")
    r.raise_for_status()
    return r.json()["servers"]


@pytest.fixture
def gated_hub(hub_factory, tmp_path):
    """A hub whose servers wait for ``tmp_path / "open"`` before Jupyter starts."""
    return hub_factory(gated_config(tmp_path))


@pytest.mark.e2e
def test_refused_spawns_leave_no_server_and_say_why_plainly(gated_hub, tmp_path):
    hub = gated_hub
    open_gate(tmp_path)
    hub.ensure_user("ada")

    # REST: a bad GPU on a new named server: 400, a plain message, and no gpu1 anywhere
    r = hub.api("POST", "/users/ada/servers/gpu1", json={"provider": "local", "gpu": "Z9"})
    assert r.status_code == 400, r.text
    assert r.json()["message"] == "gpu: unknown gpu 'Z9'. Valid choices: 'none'."
    # a provider Cloudhop knows but this hub does not enable
    r = hub.api("POST", "/users/ada/servers/gpu2", json={"provider": "aws"})
    assert r.status_code == 400 and r.json()["message"] == (
        "provider: 'aws' is not enabled on this hub; enabled: 'local'"), r.text
    assert "gpu1" not in servers(hub, "ada") and "gpu2" not in servers(hub, "ada")

    # the spawn form: the error on the form page, no class name, and no server left
    browser = login(hub, "ada")
    page = browser.get(f"{hub.url}/hub/spawn/ada/gpu3", timeout=30)
    assert page.status_code == 200
    r = browser.post(f"{hub.url}/hub/spawn/ada/gpu3", data={
        "provider": "local", "gpu": "T9", "_xsrf": browser.cookies.get("_xsrf")}, timeout=60)
    assert r.status_code == 400, r.text[:500]
    assert "gpu: unknown gpu &#39;T9&#39;. Valid choices: &#39;none&#39;." in r.text
    assert "SpawnException" not in r.text and "bad-option" not in r.text
    assert "gpu3" not in servers(hub, "ada")
    home = browser.get(f"{hub.url}/hub/home", timeout=30).text
    assert not re.search(r'data-server-name="gpu[123]"', home)

    # a server that has run stays when a later start is refused; so does the default server
    hub.spawn("ada", {"provider": "local", "gpu": "none"}, server="kept")
    hub.stop_server("ada", "kept")
    r = hub.api("POST", "/users/ada/servers/kept", json={"gpu": "Z9"})
    assert r.status_code == 400 and "kept" in servers(hub, "ada")
    r = hub.api("POST", "/users/ada/server", json={"gpu": "Z9"})
    assert r.status_code == 400 and "" in servers(hub, "ada")
    # and the name can be used at once for a spawn that is not refused
    model = hub.spawn("ada", {"provider": "local", "gpu": "none"}, server="gpu1")
    assert model["ready"]
    assert "Traceback" not in hub.log()


@pytest.mark.e2e
def test_progress_events_reach_the_browser_while_the_spawn_runs(gated_hub, tmp_path):
    """Through the hub's proxy, as the progress page reads them (EventSource): the plan
    arrives while the server is still held at the gate, long before it is ready."""
    hub = gated_hub
    hub.ensure_user("pat")
    answer = {}
    post = threading.Thread(target=lambda: answer.setdefault("r", hub.api(
        "POST", "/users/pat/servers/", json={"provider": "local", "gpu": "none"}, timeout=120)))
    post.start()
    try:
        deadline = time.monotonic() + 60
        while not (hub.server_model("pat") or {}).get("pending") and time.monotonic() < deadline:
            time.sleep(0.1)  # the hub has accepted the spawn
        stream = requests.get(f"{hub.url}/hub/api/users/pat/server/progress",
                              headers={"Authorization": f"token {hub.token}", "Accept": "text/event-stream"},
                              stream=True, timeout=(10, 60))
        assert stream.status_code == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
        events = []
        lines = stream.iter_lines()
        for line in lines:
            if line.startswith(b"data:"):
                events.append(json.loads(line[5:]))
                if events[-1]["message"].startswith("Plan: "):
                    break
        assert events[0]["message"] == "Server requested"
        model = hub.server_model("pat")
        assert model["pending"] == "spawn" and not model["ready"], "the plan came before the server"
        open_gate(tmp_path)
        for line in lines:
            if line.startswith(b"data:"):
                events.append(json.loads(line[5:]))
        assert events[-1]["ready"] is True
        messages = [e["message"] for e in events]
        assert any(m.startswith("Launching on local/local/cpu") for m in messages), messages
    finally:
        open_gate(tmp_path)
        post.join()
    assert answer["r"].status_code in (201, 202)
    hub.wait_ready("pat")


@pytest.mark.e2e
def test_home_shows_where_each_server_runs_and_pages_carry_the_name(hub_factory):
    hub = hub_factory(f"import sys\nc.Spawner.cmd = [{sys.executable!r}, '-m', 'jupyterhub.singleuser']\n")
    hub.spawn("zoe", {"provider": "local", "gpu": "none"}, server="cpu1")
    hub.spawn("zoe", {"provider": "local", "gpu": "none"})
    browser = login(hub, "zoe")
    home = browser.get(f"{hub.url}/hub/home", timeout=30)
    assert home.status_code == 200
    home.encoding = "utf-8"  # as the page's <meta charset> says
    assert "<title>Cloudhop</title>" in home.text and 'id="cloudhop-name"' in home.text
    row = re.search(r'<tr class="home-server-row" data-server-name="cpu1">(.*?)</tr>', home.text, re.S).group(1)
    text = " ".join(re.sub(r"<[^>]+>", " ", row).split())
    assert "local · local · no GPU · $0.00/h" in text, text
    default = re.search(r'id="cloudhop-default-where">(.*?)</p>', home.text, re.S).group(1)
    assert "local · local" in " ".join(re.sub(r"<[^>]+>", " ", default).split())
    hub.stop_server("zoe", "cpu1")
    home = browser.get(f"{hub.url}/hub/home", timeout=30).content.decode()
    row = re.search(r'data-server-name="cpu1">(.*?)</tr>', home, re.S).group(1)
    assert "not running; last asked for" in " ".join(re.sub(r"<[^>]+>", " ", row).split())
    login_page = requests.get(f"{hub.url}/hub/login", timeout=10).text
    assert "<title>Cloudhop</title>" in login_page
