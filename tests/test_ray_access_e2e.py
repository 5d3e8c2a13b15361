"""Who may see and resize a server's Ray cluster, on a real hub and server (no Ray: the
``ray_double`` provider runs the notebook without a head and workers that only sleep,
and a stand-in answers for Ray's dashboard).

* a resize goes through the owner's group policy like a spawn: too many workers, or an
  hour of the bigger cluster over the budget, is a 403 naming the rule; fewer is fine;
* the owner (and an admin, on the hub) may resize; a user the server is shared with may
  look but not launch workers; anyone else sees nothing;
* from a browser, a POST needs the server's XSRF token: to resize, and to reach the Ray
  dashboard's API (a job submission is code run as the owner).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

pytestmark = pytest.mark.e2e

TESTS = Path(__file__).resolve().parent  # the hub imports ray_double from here

OPTIONS = {"provider": "ray_double:HeadlessRay", "gpu": "none", "ray": {"workers": 1}}
# each node $0.50/h: the notebook and one worker fit the $1.20 budget, two workers do not
POLICY = {"class": {"max_ray_workers": 2, "budget": {"usd": 1.2, "period": "day"}}}


class Dashboard:
    """Stands in for Ray's dashboard on loopback: records each request (method, path,
    ``Authorization``), answers JSON."""

    def __init__(self):
        self.requests: list[tuple[str, str, str | None]] = []
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                seen.append((self.command, self.path, self.headers.get("Authorization")))
                body = json.dumps({"data": {"result": {"result": []}}, "page": "Ray Dashboard"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def posts(self) -> list[str]:
        return [path for method, path, _auth in self.requests if method != "GET"]

    def close(self):
        self.server.shutdown()


@pytest.fixture
def dashboard():
    d = Dashboard()
    yield d
    d.close()


def login(hub, name: str) -> requests.Session:
    """A browser-like session: logged in to the hub, then to ``name``'s server."""
    s = requests.Session()
    s.get(f"{hub.url}/hub/login", timeout=30)
    password = (hub.data_dir / "user_password").read_text().strip()
    r = s.post(f"{hub.url}/hub/login", data={"username": name, "password": password,
                                             "_xsrf": s.cookies.get("_xsrf", "")}, timeout=30)
    assert r.ok, r.text[:300]
    r = s.get(f"{hub.url}/user/{name}/lab", timeout=60)  # OAuth with the server: its cookie, its _xsrf
    assert r.ok and r.url.startswith(f"{hub.url}/user/{name}/"), r.url
    return s


def server_xsrf(session: requests.Session, name: str) -> str:
    return next(c.value for c in session.cookies if c.name == "_xsrf" and c.path.startswith(f"/user/{name}"))


def user_token(hub, name: str, **body) -> str:
    r = hub.api("POST", f"/users/{name}/tokens", json=body)
    assert r.status_code == 201, r.text
    return r.json()["token"]


def call(hub, method: str, path: str, token: str, **kw) -> requests.Response:
    return requests.request(method, f"{hub.url}{path}", headers={"Authorization": f"token {token}"},
                            timeout=120, **kw)


def test_who_may_see_and_resize_a_ray_cluster(hub_factory, dashboard):
    hub = hub_factory(extra_config=f"""
        c.CloudhopSpawner.providers = ["ray_double:HeadlessRay"]
        c.HeadlessRay.dashboard_port = {dashboard.port}
        c.HeadlessRay.cpu_price_hour = 0.5
        c.Policy.groups = {POLICY!r}
        c.JupyterHub.load_roles.append({{"name": "test-sharer", "scopes": ["shares"],
                                         "services": ["cloudhop-test"]}})
    """, env={"PYTHONPATH": str(TESTS)})
    for name in ("ada", "bob", "eve"):
        hub.ensure_user(name)
    r = hub.api("POST", "/groups/class", json={"users": ["ada"]})
    assert r.status_code == 201, r.text
    hub.spawn("ada", OPTIONS, timeout=120)
    ada = user_token(hub, "ada")

    # the owner's policy holds for a resize, whoever asks; the answer names the rule
    r = hub.api("POST", "/cloudhop/ray/ada", json={"workers": 3})  # an admin's token
    assert r.status_code == 403, r.text
    assert r.json()["message"] == "workers: 3 Ray workers is more than group 'class' allows: at most 2"
    assert r.json()["rule"] == "max_ray_workers"
    r = call(hub, "POST", "/user/ada/cloudhop/ray/workers", ada, json={"workers": 2})
    assert r.status_code == 403, r.text
    message = r.json()["message"]
    assert message.startswith("workers: one hour at $1.50/h is more than the $1.20 left of group 'class'"), message
    status = hub.api("GET", "/cloudhop/ray/ada").json()
    assert status["alive"] == 1 and status["requested"] == 1, "a refused resize changes nothing"
    # fewer workers are always allowed, and back to what the budget allows
    r = call(hub, "POST", "/hub/api/cloudhop/ray/ada", ada, json={"workers": 0})
    assert r.status_code == 200 and r.json()["alive"] == 0, r.text
    assert hub.api("POST", "/cloudhop/ray/ada", json={"workers": 1}).json()["alive"] == 1
    r = call(hub, "POST", "/hub/api/cloudhop/ray/ada", ada, json={"workers": "two"})
    assert r.status_code == 400 and r.json()["message"].startswith("workers:"), r.text

    # shared with bob: bob sees the cluster, in the server and on the hub, and may not resize it
    r = hub.api("POST", "/shares/ada/", json={"user": "bob"})
    assert r.status_code in (200, 201), r.text
    for bob in (user_token(hub, "bob"), user_token(hub, "bob", scopes=["access:servers!server=ada/"])):
        assert call(hub, "GET", "/user/ada/cloudhop/ray", bob).status_code == 200
        assert call(hub, "GET", "/hub/api/cloudhop/ray/ada", bob).json()["alive"] == 1
        r = call(hub, "POST", "/user/ada/cloudhop/ray/workers", bob, json={"workers": 0})
        assert r.status_code == 403 and "owner" in r.json()["message"], r.text
        r = call(hub, "POST", "/hub/api/cloudhop/ray/ada", bob, json={"workers": 0})
        assert r.status_code == 403 and "owner" in r.json()["message"], r.text
    # eve, with no share, learns nothing
    eve = user_token(hub, "eve")
    assert call(hub, "GET", "/hub/api/cloudhop/ray/ada", eve).status_code == 404
    assert call(hub, "POST", "/hub/api/cloudhop/ray/ada", eve, json={"workers": 0}).status_code == 404
    assert call(hub, "POST", "/user/ada/cloudhop/ray/workers", eve, json={"workers": 0}).status_code in (403, 404)
    assert hub.api("GET", "/cloudhop/ray/ada").json()["alive"] == 1

    # from ada's browser: a POST without the server's XSRF token is refused
    browser = login(hub, "ada")
    xsrf = server_xsrf(browser, "ada")
    r = browser.post(f"{hub.url}/user/ada/cloudhop/ray/workers", json={"workers": 0}, timeout=60)
    assert r.status_code == 403, r.text
    assert hub.api("GET", "/cloudhop/ray/ada").json()["alive"] == 1
    r = browser.post(f"{hub.url}/user/ada/cloudhop/ray/workers", json={"workers": 0},
                     headers={"X-XSRFToken": xsrf}, timeout=60)
    assert r.status_code == 200 and r.json()["alive"] == 0, r.text

    # the Ray dashboard: its pages load with the cookie; its API takes no POST a page
    # elsewhere could make the browser send
    r = browser.get(f"{hub.url}/user/ada/ray-dashboard/", timeout=30)
    assert r.status_code == 200 and "Ray Dashboard" in r.text
    job = {"entrypoint": "python -c 'print(1)'"}
    for headers in ({}, {"Origin": "https://elsewhere.example"}, {"X-XSRFToken": "forged"}):
        r = browser.post(f"{hub.url}/user/ada/ray-dashboard/api/jobs/", json=job, headers=headers,
                         allow_redirects=False, timeout=30)
        assert r.status_code == 403, (headers, r.status_code, r.text[:200])
    assert dashboard.posts() == [], "no job reached Ray"
    r = browser.post(f"{hub.url}/user/ada/ray-dashboard/api/jobs/", json=job,
                     headers={"X-XSRFToken": xsrf}, timeout=30)
    assert r.status_code == 200, r.text
    r = call(hub, "POST", "/user/ada/ray-dashboard/api/jobs/", ada, json=job)  # `ray job submit` with a token
    assert r.status_code == 200, r.text
    assert dashboard.posts() == ["/api/jobs/", "/api/jobs/"]

    # a GET that another site makes ada's browser send (an <img>, a link) reaches none of
    # the dashboard's actions: its profilers attach to ada's processes on GET
    before = len(dashboard.requests)
    profile = f"{hub.url}/user/ada/ray-dashboard/worker/cpu_profile?pid=1&ip=127.0.0.1&duration=5"
    for headers in ({"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},
                    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"},
                    {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},
                    {"Referer": "https://elsewhere.example/page"},  # a browser without Sec-Fetch-*
                    {"Origin": "null"}):
        r = browser.get(profile, headers=headers, allow_redirects=False, timeout=30)
        assert r.status_code == 403, (headers, r.status_code, r.text[:200])
    assert len(dashboard.requests) == before, "no cross-site GET reached Ray"
    # the dashboard in ada's own browser keeps working: its pages fetch same-origin, and
    # a link from elsewhere still opens its front page
    r = browser.get(profile, headers={"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors",
                                      "Sec-Fetch-Dest": "empty", "Referer": f"{hub.url}/user/ada/ray-dashboard/"},
                    timeout=30)
    assert r.status_code == 200, r.text
    r = browser.get(f"{hub.url}/user/ada/ray-dashboard/", timeout=30,
                    headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"})
    assert r.status_code == 200 and "Ray Dashboard" in r.text
    assert [path for _m, path, _a in dashboard.requests[before:]] == [
        "/worker/cpu_profile?pid=1&ip=127.0.0.1&duration=5", "/"]
    # every call reached Ray with the cluster's token in place of the caller's credentials
    token = hub.server_model("ada")["state"]["ray"]["token"]
    assert {auth for _method, _path, auth in dashboard.requests} == {f"Bearer {token}"}
