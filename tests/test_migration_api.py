"""The migration REST API of the server extension, on a plain ``jupyter server``:
authentication, XSRF, option errors that name the field, one migration at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest
import requests
import websocket

from hubfixture import free_port

TOKEN = "secret-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("server")
    root = tmp_path / "ws"
    root.mkdir()
    (root / "keep.txt").write_text("unchanged")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "CLOUDHOP_"))}
    # a hub and store that do not answer: these tests never get past the first step
    env.update({"JUPYTERHUB_API_URL": f"http://127.0.0.1:{free_port()}/hub/api", "JUPYTERHUB_API_TOKEN": "t",
                "JUPYTERHUB_USER": "alice", "CLOUDHOP_STORE_URL": f"http://127.0.0.1:{free_port()}/services/s/",
                "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")})
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", f"--port={port}", "--no-browser", "--allow-root", f"--ServerApp.root_dir={root}",
         f"--IdentityProvider.token={TOKEN}", "--ServerApp.jpserver_extensions=cloudhop.extensions=True",
         "--CloudhopMigration.kernel_timeout=60"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "wb"), cwd=root,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if requests.get(f"{url}/api/status", headers={"Authorization": f"token {TOKEN}"}, timeout=2).ok:
                break
        except requests.RequestException:
            time.sleep(0.2)
    yield url, root
    proc.terminate()
    proc.wait(20)


def api(url, method, path, **kw):
    return requests.request(method, f"{url}/{path}", headers={"Authorization": f"token {TOKEN}"}, timeout=30, **kw)


def test_endpoints_need_authentication(server):
    url, _ = server
    assert requests.post(f"{url}/cloudhop/api/migrations", json={}).status_code == 403
    assert requests.get(f"{url}/cloudhop/api/migrations/abc").status_code == 403
    assert requests.get(f"{url}/cloudhop/api/info").status_code == 403
    assert api(url, "GET", "cloudhop/api/migrations/abc").status_code == 404


def test_post_with_a_login_cookie_needs_the_xsrf_token(server):
    url, _ = server
    s = requests.Session()
    assert s.get(f"{url}/api/contents?token={TOKEN}").ok  # logs in: sets the login cookie
    s.get(f"{url}/login")  # sets the _xsrf cookie
    r = s.post(f"{url}/cloudhop/api/migrations", json={"region": "x", "gpu_count": "lots"})
    assert r.status_code == 403 and "xsrf" in r.text.lower()
    r = s.post(f"{url}/cloudhop/api/migrations", json={"region": "x", "gpu_count": "lots"},
               headers={"X-XSRFToken": s.cookies["_xsrf"]})
    assert r.status_code == 400  # past authentication and XSRF, stopped by the option check


@pytest.mark.parametrize("options, field", [
    ({"gpu_count": "lots"}, "gpu_count"), ({"region": "<b>x</b>"}, "region"), ({"spot": "yes"}, "spot"),
    ({"restore": "abc"}, "restore"), ({"colour": "red"}, "colour"), ({"gpu_count": True}, "gpu_count"),
])
def test_bad_options_name_the_field(server, options, field):
    url, _ = server
    r = api(url, "POST", "cloudhop/api/migrations", json=options)
    assert r.status_code == 400
    assert r.json()["message"].startswith(f"{field}:")


def test_a_second_migration_while_one_runs_is_refused_and_a_failure_changes_nothing(server):
    url, root = server
    r = api(url, "POST", "api/sessions", json={"path": "nb.ipynb", "type": "notebook", "name": "nb.ipynb",
                                              "kernel": {"name": "python3"}})
    kid = r.json()["kernel"]["id"]
    ws = websocket.create_connection(f"ws://{url[7:]}/api/kernels/{kid}/channels",
                                     header=[f"Authorization: token {TOKEN}"], timeout=30)
    # the user's cell is busy, so the checkpoint (and the migration) waits behind it
    ws.send(json.dumps({"header": {"msg_id": uuid.uuid4().hex, "username": "u", "session": uuid.uuid4().hex,
                                   "msg_type": "execute_request", "version": "5.3"},
                        "parent_header": {}, "metadata": {}, "channel": "shell",
                        "content": {"code": "import time\nx = 1\ntime.sleep(30)", "silent": False,
                                    "store_history": True, "user_expressions": {}, "allow_stdin": False}}))
    time.sleep(1)
    first = api(url, "POST", "cloudhop/api/migrations", json={"region": "site-b"})
    assert first.status_code == 202
    mid = first.json()["id"]
    second = api(url, "POST", "cloudhop/api/migrations", json={"region": "site-c"})
    assert second.status_code == 409 and "already running" in second.json()["message"]
    assert api(url, "GET", f"cloudhop/api/migrations/{mid}").json()["state"] == "snapshotting"

    api(url, "POST", f"api/kernels/{kid}/interrupt")
    for _ in range(120):
        m = api(url, "GET", f"cloudhop/api/migrations/{mid}").json()
        if m["state"] == "failed":
            break
        time.sleep(0.5)
    assert m["state"] == "failed" and m["error"].startswith("snapshotting:") and "store" in m["error"]
    assert m["variables"] == {"nb.ipynb": ["time", "x"]}
    assert (root / "keep.txt").read_text() == "unchanged"
    ws.close()
    # the failed one no longer blocks a new attempt
    assert api(url, "POST", "cloudhop/api/migrations", json={"region": "site-b"}).status_code == 202


def test_a_server_restores_one_snapshot_when_asked_and_answers_once_it_ended(server):
    """``POST cloudhop/api/restore`` (how a move's source starts its target's restore) and
    the long ``GET ...?wait=S``; the store here does not answer, so the restore fails."""
    url, root = server
    assert api(url, "GET", "cloudhop/api/restore").status_code == 404
    for body, status in (({"snapshot": "../x"}, 400), ({"snapshot": 7}, 400), ([], 400)):
        r = api(url, "POST", "cloudhop/api/restore", json=body)
        assert r.status_code == status and r.json()["message"].startswith("snapshot:"), r.text
    r = api(url, "POST", "cloudhop/api/restore", data="{")
    assert r.status_code == 400 and "JSON" in r.json()["message"]
    r = api(url, "POST", "cloudhop/api/restore", json={"snapshot": "snap-1"})
    assert r.status_code == 202 and r.json()["snapshot"] == "snap-1", r.text
    r = api(url, "POST", "cloudhop/api/restore", json={"snapshot": "snap-2"})
    assert r.status_code == 409 and "already restores snapshot snap-1" in r.json()["message"]
    assert api(url, "GET", "cloudhop/api/restore?wait=soon").status_code == 400
    report = api(url, "GET", "cloudhop/api/restore?wait=30").json()
    assert report["state"] == "failed" and "snapshot store unreachable" in report["error"], report
    assert (root / "keep.txt").read_text() == "unchanged"
