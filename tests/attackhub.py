"""A hub to attack: two users on a real ``cloudhop up`` hub, for the cross-user and XSRF
tests in tests/security/.

``ada`` (the victim) runs a server with a Ray cluster (the ``ray_double`` provider: the
notebook and a worker that only sleeps, a stand-in for Ray's dashboard) and keeps a
snapshot, with its restore report, in the real snapshot store. ``bob`` (the attacker)
is an ordinary user with his own token and his own browser session. ``mallory`` is in a
group whose price limit no server meets, so her spawns are always refused (for fuzzing
the REST spawn without starting servers).

Every endpoint Cloudhop adds is listed in :data:`HUB_ENDPOINTS`, :data:`SERVER_ENDPOINTS`
and :data:`STORE_ENDPOINTS` (docs/security.md has the same table); the tests walk these
lists, so a new endpoint belongs here.
"""

from __future__ import annotations

import json
from pathlib import Path

import requests

from cloudhop.extensions.snapshot import StoreClient, take_snapshot
from cloudhop.extensions.snapshot.protocol import RestoreReport
from hubfixture import HubProcess
from test_ray_access_e2e import Dashboard, login, server_xsrf, user_token

TESTS = Path(__file__).resolve().parent  # the hub imports ray_double from here
RAY = "ray_double:HeadlessRay"
OPTIONS = {"provider": RAY, "gpu": "none", "ray": {"workers": 1}}
STORE = "/services/cloudhop-store/"

#: (method, path under the hub's base URL, JSON body) of each hub endpoint Cloudhop adds;
#: ``{u}`` is the user whose resources the call is about
HUB_ENDPOINTS = [
    ("GET", "/hub/api/cloudhop/offers/{u}", None),
    ("POST", "/hub/api/cloudhop/offers/{u}/check", {"provider": RAY, "gpu": "none"}),
    ("GET", "/hub/api/cloudhop/ray/{u}", None),
    ("GET", "/hub/api/cloudhop/ray/{u}/", None),
    ("POST", "/hub/api/cloudhop/ray/{u}", {"workers": 0}),
    ("POST", "/hub/api/cloudhop/moves/{u}", {"target": "stolen"}),
    ("POST", "/hub/api/cloudhop/kernel-token/{u}", {}),
    ("POST", "/hub/api/cloudhop/activity/{u}", {"active": True}),
    ("POST", "/hub/api/cloudhop/rescue/{u}", {"snapshot": "0" * 64, "notice": {"cloud": "aws"}}),
    ("GET", "/hub/api/cloudhop/rescue/{u}", None),
    ("GET", "/hub/api/cloudhop/snapshots/{u}", None),
    ("DELETE", "/hub/api/cloudhop/snapshots/{u}/20000101-000000-00000000", None),
    ("GET", "/hub/api/cloudhop/usage/{u}", None),
    ("POST", "/hub/api/cloudhop/launch-steps/{u}", {"step": "image"}),
]
#: the same for ``{u}``'s server (the server extension, its Ray routes and the dashboard proxy)
SERVER_ENDPOINTS = [
    ("GET", "/user/{u}/cloudhop/api/info", None),
    ("GET", "/user/{u}/cloudhop/api/gpus", None),
    ("GET", "/user/{u}/cloudhop/api/offers", None),
    ("GET", "/user/{u}/cloudhop/api/restore", None),
    ("POST", "/user/{u}/cloudhop/api/restore", {"snapshot": "nosuch"}),
    ("GET", "/user/{u}/cloudhop/api/migrations/0123abcd", None),
    ("POST", "/user/{u}/cloudhop/api/migrations", {"region": "nowhere"}),
    ("POST", "/user/{u}/cloudhop/api/snapshots", {"reason": "manual", "kernels": False}),
    ("GET", "/user/{u}/cloudhop/ray", None),
    ("POST", "/user/{u}/cloudhop/ray/workers", {"workers": 0}),
    ("GET", "/user/{u}/cloudhop/api/activity", None),
    ("POST", "/user/{u}/cloudhop/api/activity", {}),
    ("GET", "/user/{u}/cloudhop/api/shares", None),
    ("POST", "/user/{u}/cloudhop/api/shares", {"code": True}),
    ("DELETE", "/user/{u}/cloudhop/api/shares", None),
    ("POST", "/user/{u}/cloudhop/api/unsaved", {"client": "page-1", "paths": []}),
    ("GET", "/user/{u}/ray-dashboard/", None),
    ("GET", "/user/{u}/ray-dashboard/api/jobs/", None),
    ("POST", "/user/{u}/ray-dashboard/api/jobs/", {"entrypoint": "id"}),
    ("PUT", "/user/{u}/ray-dashboard/api/jobs/x", {}),
    ("DELETE", "/user/{u}/ray-dashboard/api/jobs/x", None),
]
#: the snapshot store's endpoints (``{sid}``: one of ``{u}``'s snapshots)
STORE_ENDPOINTS = [
    ("GET", "api/users/{u}/snapshots", None),
    ("POST", "api/users/{u}/snapshots", "manifest"),
    ("GET", "api/users/{u}/snapshots/{sid}", None),
    ("GET", "api/users/{u}/snapshots/{sid}/report", None),
    ("PUT", "api/users/{u}/snapshots/{sid}/report", "report"),
    ("POST", "api/users/{u}/snapshots/{sid}/servers", {"server": ""}),
    ("POST", "api/users/{u}/chunks/missing", "ids"),
    ("POST", "api/users/{u}/chunks/download", "ids"),
    ("POST", "api/users/{u}/chunks/pack", "ids"),
    ("POST", "api/users/{u}/chunks", "pack"),
    ("DELETE", "api/users/{u}/snapshots/20000101-000000-00000000", None),  # no such snapshot: ada's stays
]

CONFIG = """
c.CloudhopSpawner.providers = [{ray!r}]
c.HeadlessRay.dashboard_port = {port}
c.HeadlessRay.cpu_price_hour = 0.5
# what is attacked here is HTTP access, not the OS accounts servers run as (those have
# their own tests): servers run as the hub's user, also when the tests run as root
c.HeadlessRay.isolation = "none"
c.Policy.groups = {{"default": {{"max_ray_workers": 2}}, "locked": {{"max_price_hour": 0.01}}}}
"""


class AttackHub:
    """The hub, the users' tokens and ada's things (see the module docstring)."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = Path(tmp_path)
        self.snapshot_id = ""
        self.dashboard = Dashboard()
        self.hub = HubProcess(self.tmp_path, extra_config=CONFIG.format(ray=RAY, port=self.dashboard.port),
                              env={"PYTHONPATH": str(TESTS)}, name="attacked")

    def start(self) -> "AttackHub":
        hub = self.hub.start()
        for name in ("ada", "bob", "mallory"):
            hub.ensure_user(name)
        r = hub.api("POST", "/groups/locked", json={"users": ["mallory"]})
        assert r.status_code == 201, r.text
        hub.spawn("ada", OPTIONS, timeout=180)
        self.ada = user_token(hub, "ada")
        self.bob = user_token(hub, "bob")
        self.snapshot_id, self.manifest, self.pack = self._ada_snapshot()
        return self

    def _ada_snapshot(self):
        """A snapshot of ada's, stored with her token, and its restore report; returns
        its id, its manifest (bytes) and a chunk pack of its chunks (for replaying)."""
        ws = self.tmp_path / "ada-workspace"
        (ws / "data").mkdir(parents=True)
        (ws / "data" / "secret.csv").write_text("ada's results\n" * 1000)
        client = StoreClient(self.hub.url + STORE, "ada", self.ada)
        try:
            sid, manifest, _ = take_snapshot(ws, client)
            client.put_report(sid, RestoreReport(snapshot=sid, state="done", files={"data/secret.csv": "x"}))
            pack = self.store("POST", "ada", "api/users/{u}/chunks/pack", self.ada,
                              json={"ids": manifest.chunk_ids()})
            assert pack.status_code == 200, pack.text
        finally:
            client.close()
        return sid, manifest.dumps(), pack.content

    def stop(self) -> None:
        from conftest import _stop_all_servers

        _stop_all_servers(self.hub)
        self.hub.stop()
        self.dashboard.close()

    # -- requests -------------------------------------------------------------------

    def url(self, path: str, user: str = "ada") -> str:
        return self.hub.url + path.format(u=user, sid=self.snapshot_id)

    def call(self, method: str, path: str, token: str | None = None, *, user: str = "ada",
             session: requests.Session | None = None, **kw) -> requests.Response:
        """``method`` on ``path`` (``{u}`` is ``user``) with ``token``, or none; through
        ``session`` (a browser's cookies) when given. Redirects are not followed."""
        headers = kw.pop("headers", {})
        if token:
            headers["Authorization"] = f"token {token}"
        send = session.request if session is not None else requests.request
        return send(method, self.url(path, user), headers=headers, allow_redirects=False, timeout=60, **kw)

    def store_body(self, kind) -> dict:
        """Keyword arguments for a store request's body of ``kind`` (see STORE_ENDPOINTS)."""
        if kind == "manifest":
            return {"data": self.manifest}
        if kind == "report":
            return {"data": RestoreReport(snapshot=self.snapshot_id, state="failed", error="forged").encode()}
        if kind == "ids":
            return {"json": {"ids": json.loads(self.manifest)["files"][0]["chunks"][0][:1]}}
        if kind == "pack":
            return {"data": self.pack}
        return {} if kind is None else {"json": kind}

    def store(self, method: str, user: str, path: str, token: str | None = None, **kw) -> requests.Response:
        return self.call(method, STORE + path, token, user=user, **kw)

    def ada_listing(self) -> list[dict]:
        r = self.store("GET", "ada", "api/users/{u}/snapshots", self.ada)
        assert r.status_code == 200, r.text
        return r.json()["snapshots"]

    def ray_status(self) -> dict:
        return self.hub.api("GET", "/cloudhop/ray/ada").json()


def browser(hub: HubProcess, name: str, server: bool = True) -> requests.Session:
    """``name``'s browser: logged in to the hub and, with ``server``, to their server."""
    if server:
        return login(hub, name)
    s = requests.Session()
    s.get(f"{hub.url}/hub/login", timeout=30)
    password = (hub.data_dir / "user_password").read_text().strip()
    r = s.post(f"{hub.url}/hub/login", data={"username": name, "password": password,
                                             "_xsrf": s.cookies.get("_xsrf", "")}, timeout=30)
    assert r.ok, r.text[:300]
    return s


def hub_xsrf(session: requests.Session) -> str:
    """The hub's XSRF token in a browser's cookies (the one its pages send back)."""
    return next(c.value for c in session.cookies if c.name == "_xsrf" and c.path.startswith("/hub"))


__all__ = ["AttackHub", "HUB_ENDPOINTS", "SERVER_ENDPOINTS", "STORE_ENDPOINTS", "browser", "hub_xsrf",
           "server_xsrf", "user_token", "OPTIONS", "RAY"]
