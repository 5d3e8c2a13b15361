"""End to end on the local provider: a real `cloudhop up`, a real single-user server,
a kernel through the proxy, a hub restart that keeps the server, and a clean stop."""

from __future__ import annotations

import json
import re

import psutil
import pytest

pytestmark = pytest.mark.e2e

SECRET = "hub-only-secret-value-3f9a"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    from hubfixture import HubProcess

    tmp = tmp_path_factory.mktemp("e2e-local")
    h = HubProcess(tmp, env={"AWS_SECRET_ACCESS_KEY": SECRET, "CLOUDHOP_TEST_SECRET": SECRET})
    h.start()
    yield h
    for user in h.api("GET", "/users").json():
        for name in user.get("servers", {}):
            h.stop_server(user["name"], name)
    h.stop()


def _pids_of(state: dict) -> list[int]:
    return [p.pid for p in psutil.process_iter() if _in_workspace(p, state)]


def _in_workspace(proc, state) -> bool:
    try:
        return proc.cwd() == state["node"]["info"]["workspace"]
    except (psutil.Error, KeyError, TypeError):
        return False


def test_spawn_kernel_restart_and_stop(hub):
    model = hub.spawn("alice", {"provider": "local", "gpu": "none"})
    state = model["state"]
    assert state["version"] == 1
    assert state["offer"]["provider"] == "local"
    assert state["nodes"] == [{"provider": "local", "id": state["node"]["id"], "role": "notebook", "region": "local"}]

    k = hub.kernel("alice")
    assert k.execute("x = 40 + 2\nprint(x)").strip() == "42"
    # the server sees no GPU it was not given and none of the hub's secrets
    env = k.execute("import os; print(repr(os.environ.get('CUDA_VISIBLE_DEVICES'))); print(sorted(os.environ))")
    assert env.splitlines()[0] == "''"
    assert SECRET not in env and "AWS_SECRET_ACCESS_KEY" not in env and "CLOUDHOP_TEST_SECRET" not in env
    kernel_id = k.kernel_id
    k.close()

    # JupyterLab asks nobody about "Jupyter news" and fetches no news or update feed,
    page = hub.server_api("GET", "alice", "lab")
    assert page.status_code == 200, page.text
    config = json.loads(re.search(r'id="jupyter-config-data"[^>]*>(.*?)</script>', page.text, re.S).group(1))
    assert config["news"] == {"disabled": True}, config.get("news")
    news = hub.server_api("GET", "alice", "lab/api/news").json()
    assert news["news"] == [], news
    # ... not even the question whether to (the package's lab settings overrides)
    settings = hub.server_api("GET", "alice", "lab/api/settings/@jupyterlab/apputils-extension:notification").json()
    defaults = {k: v.get("default") for k, v in settings["schema"]["properties"].items()}
    assert defaults["fetchNews"] == "false" and defaults["checkForUpdates"] is False, defaults

    # the hub goes away and comes back: the server and its kernel's variables survive
    hub.stop()
    assert _pids_of(state), "the user's server should outlive the hub"
    hub.start()
    model = hub.wait_ready("alice")
    assert model["state"]["node"]["id"] == state["node"]["id"]
    k = hub.kernel("alice", kernel_id=kernel_id)
    assert k.execute("print(x)").strip() == "42"
    k.close()

    hub.stop_server("alice")
    assert hub.server_model("alice") is None
    assert SECRET not in hub.log(), "a hub-side secret must never reach a log line"
    assert not _pids_of(state), "stopping the server must end its whole process tree"


@pytest.mark.parametrize(
    "options, field",
    [
        ({"provider": "lokal"}, "provider"),
        ({"provider": "local", "region": "mars"}, "region"),
        ({"provider": "local", "gpu": "H1000"}, "gpu"),
        ({"provider": "local", "gpu": "none", "gpu_count": -1}, "gpu_count"),
        ({"provider": "local", "gpu": "none", "gpu_count": "two"}, "gpu_count"),
        ({"provider": "local", "gpu": "none", "gpu_count": 10**9}, "gpu_count"),
        ({"provider": "local", "spot": "yes"}, "spot"),
        ({"provider": "local", "ray": "four"}, "ray"),
        ({"provider": "local", "ray": {"workers": -2}}, "ray.workers"),
        ({"provider": "local", "region": "<script>alert(1)</script>"}, "region"),
        ({"provider": "local", "region": "../../etc"}, "region"),
        ({"provider": "local", "image": "Bad Image!"}, "image"),
        ({"provider": "local", "restore": "../x"}, "restore"),
        ({"provider": "local", "colour": "blue"}, "colour"),
    ],
)
def test_bad_options_are_refused_with_the_field_named(hub, options, field):
    hub.ensure_user("mallory")
    r = hub.api("POST", "/users/mallory/server", json=options)
    assert r.status_code == 400, (r.status_code, r.text)
    message = r.json()["message"]
    assert message.startswith(f"{field}:") or f"{field}" in message.split(":")[0], message
    assert "<script>" not in message
    assert hub.server_model("mallory") is None
