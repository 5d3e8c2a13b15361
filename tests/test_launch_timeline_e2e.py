"""Through a real hub, an AWS spawn against moto shows its launch timeline on its progress
page and in its state: the cloud API call and the instance running as the hub sees them,
then the bootstrap steps the node reports with the server's own token (sent here as the
node's start script would: moto runs no VM). No other token may write a timeline.

The hub looks at the instance again only 15 s after its launch here, so the spawn is
still pending while the test sends the steps, whatever answers at moto's made-up
addresses: the steps come before "instance running" in this test, not on a real VM."""

from __future__ import annotations

import base64
import json
import time

import pytest
import requests
from test_e2e_aws import REQUEST, config, ec2, hub_env, live, moto_url, wait_for  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e


def node_env(moto: str) -> dict:
    """The environment file the instance's user data carries."""
    [inst] = wait_for(lambda: live(moto), what="instance")
    attr = ec2(moto).describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="userData")
    text = base64.b64decode(attr["UserData"]["Value"]).decode()
    block = text.split("path: /etc/cloudhop/env", 1)[1].split("content: |", 1)[1].split("  - path:", 1)[0]
    return dict(line.strip().split("=", 1) for line in block.splitlines() if "=" in line)


def progress_messages(hub, user: str, until: str, timeout: float = 60) -> list[str]:
    """The progress page's events (its event stream) until one contains ``until``."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    with requests.get(f"{hub.url}/hub/api/users/{user}/server/progress", stream=True, timeout=timeout,
                      headers={"Authorization": f"token {hub.token}", "Accept": "text/event-stream"}) as r:
        assert r.status_code == 200, f"{r.status_code} {r.url} {r.text[-300:]}"
        for line in r.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                seen.append(json.loads(line[5:]).get("message", ""))
                if until in seen[-1]:
                    return seen
            if time.monotonic() > deadline:
                break
    raise AssertionError(f"no progress event with {until!r}: {seen}")


def test_an_aws_spawn_shows_its_launch_timeline_on_its_progress_page(moto_url, hub_factory):  # noqa: F811
    hub = hub_factory(config(moto_url) + "\nc.CloudhopSpawner.node_poll_interval = 15\n", env=hub_env())
    hub.ensure_user("alice")
    hub.ensure_user("mallory")
    r = hub.api("POST", "/users/alice/server", json=REQUEST)
    assert r.status_code in (201, 202), r.text
    env = node_env(moto_url)
    url = env["CLOUDHOP_LAUNCH_STEPS_URL"]
    assert url == "https://hub.example.org/hub/api/cloudhop/launch-steps/alice", "the hub's connect address"
    url = url.replace("https://hub.example.org", hub.url)
    server_token = env["JUPYTERHUB_API_TOKEN"]

    def post(token: str, body) -> requests.Response:
        return requests.post(url, data=json.dumps(body), timeout=30, headers={"Authorization": f"token {token}"})

    # only the server's own token writes its timeline; nothing says whether the server exists
    alice_other = hub.api("POST", "/users/alice/tokens", json={"note": "another"}).json()["token"]
    mallory = hub.api("POST", "/users/mallory/tokens", json={"note": "hers"}).json()["token"]
    for token in (hub.token, alice_other, mallory):  # an admin's, the owner's other token, another user's
        r = post(token, {"step": "image"})
        assert r.status_code == 404, r.text
    assert post("not-a-token", {"step": "image"}).status_code == 403
    r = post(server_token, {"step": "reboot"})
    assert r.status_code == 400 and "step: must be one of driver, image, server" in r.json()["message"]
    assert post(server_token, ["image"]).status_code == 400

    for step in ("driver", "image", "server"):
        r = post(server_token, {"step": step})
        assert r.status_code == 200 and r.json() == {"marked": True}, r.text
    assert post(server_token, {"step": "server"}).json() == {"marked": False}

    seen = progress_messages(hub, "alice", until="Launch timeline: instance running", timeout=90)
    timeline = [m.split(" at ")[0].removeprefix("Launch timeline: ") for m in seen if m.startswith("Launch timeline: ")]
    assert timeline == ["cloud API call", "bootstrap: driver check", "bootstrap: image pull",
                        "bootstrap: server start", "instance running"], seen

    state = hub.api("GET", "/users/alice").json()["servers"][""]["state"]
    phases = state["timeline"]["phases"]
    # then "first_answer" once something answers at the instance's address (not in CI)
    assert [p["phase"] for p in phases][:5] == ["api_call", "driver", "image", "server", "instance_running"]
    assert [p["seconds"] for p in phases] == sorted(p["seconds"] for p in phases)
    hub.stop_server("alice")
