"""A local stand-in for DigitalOcean's API v2, for the calls Cloudhop's DigitalOcean
provider makes, so the real ``pydo`` client runs against it
(``c.DigitalOceanProvider.api_endpoint``):

    GET    /v2/droplets?tag_name=&page=&per_page=   paged: links.pages.next
    POST   /v2/droplets                             {"droplet": {...}} (202)
    DELETE /v2/droplets/{id}                        204, gone at once
    GET    /v2/firewalls   POST /v2/firewalls   DELETE /v2/firewalls/{id}
    GET    /v2/sizes       GET /v2/account

Bodies are DigitalOcean's JSON; errors ``{"id", "message", "request_id"}``. Every
request needs ``Authorization: Bearer <token>`` (else 401 ``unauthorized``). Droplets go
new -> active on the first read. ``script("create", ...)`` queues the next creates'
answers: ``"capacity"`` (422, the size not available in the region), ``"limit"`` (422,
the droplet limit), ``429``, ``500``, ``None``.

Private addresses are documentation addresses (RFC 5737), which nothing answers, so a
hub waiting for a server on such a node waits as for a VM still booting.
"""

from __future__ import annotations

import datetime
import itertools
import re

from tests.fakes.json_http import JSONDouble

_ids = itertools.count(100001)
_TAG = re.compile(r"^[A-Za-z0-9:_-]{1,255}$")
_FW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")

SCRIPTED = {
    "capacity": (422, "unprocessable_entity", "Size gpu-h100x1-80gb is not available in this region."),
    "limit": (422, "unprocessable_entity", "creating this/these droplet(s) will exceed your droplet limit"),
    429: (429, "too_many_requests", "API Rate limit exceeded."),
    500: (500, "server_error", "Server was unable to give you a response."),
}


def _err(status, code, message):
    return status, {"id": code, "message": message, "request_id": "req-fake"}


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeDigitalOcean(JSONDouble):
    def __init__(self, token="do-test-token"):
        super().__init__()
        self.token = token
        self.droplets: dict[int, dict] = {}
        self.firewalls: dict[str, dict] = {}
        self.sizes = [{"slug": "gpu-h100x1-80gb", "available": True, "regions": ["tor1", "nyc2"]},
                      {"slug": "gpu-h100x8-640gb", "available": True, "regions": ["nyc2"]}]
        self.route("GET", "/v2/droplets", self.list)
        self.route("POST", "/v2/droplets", self.create)
        self.route("DELETE", r"/v2/droplets/(\d+)", self.destroy)
        self.route("GET", "/v2/firewalls", lambda m, q, b, h: self._page("firewalls", list(self.firewalls.values()), q))
        self.route("POST", "/v2/firewalls", self.fw_create)
        self.route("DELETE", "/v2/firewalls/([^/]+)", self.fw_delete)
        self.route("GET", "/v2/sizes", lambda m, q, b, h: self._page("sizes", self.sizes, q))
        self.route("GET", "/v2/account", lambda *a: (200, {"account": {"status": "active", "droplet_limit": 25}}))

    def authorize(self, headers):
        if headers.get("authorization") != f"Bearer {self.token}":
            return _err(401, "unauthorized", "Unable to authenticate you")
        return None

    @staticmethod
    def _page(key, items, q):
        per, page = int(q.get("per_page", 20)), int(q.get("page", 1))
        chunk = items[(page - 1) * per: page * per]
        pages = {"next": f"?page={page + 1}&per_page={per}"} if page * per < len(items) else {}
        return 200, {key: chunk, "links": {"pages": pages}, "meta": {"total": len(items)}}

    def list(self, m, q, body, h):
        with self.lock:
            found = [d for d in self.droplets.values() if not q.get("tag_name") or q["tag_name"] in d["tags"]]
            views = []
            for d in found:
                views.append(dict(d))
                if d["status"] == "new":
                    d["status"] = "active"
            return self._page("droplets", views, q)

    def create(self, m, q, body, h):
        answer = self.next_answer("create")
        if answer is not None:
            return _err(*SCRIPTED[answer])
        for need in ("name", "region", "size", "image"):
            if not body.get(need):
                return _err(422, "unprocessable_entity", f"{need} is required")
        bad = [t for t in body.get("tags") or [] if not _TAG.match(t)]
        if bad:
            return _err(422, "unprocessable_entity", f"tag {bad[0]!r} may only contain letters, numbers, colons, "
                        "dashes and underscores")
        with self.lock:
            n = next(_ids)
            self.droplets[n] = {
                "id": n, "name": body["name"], "status": "new", "size_slug": body["size"],
                "region": {"slug": body["region"], "name": body["region"]},
                "image": {"slug": body["image"]}, "tags": list(body.get("tags") or []),
                "networks": {"v4": [{"ip_address": f"192.0.2.{n % 250 + 1}", "type": "private"},
                                    {"ip_address": f"159.203.0.{n % 250 + 1}", "type": "public"}]},
                "created_at": _now(), "_user_data": body.get("user_data", ""),
            }
            return 202, {"droplet": {k: v for k, v in self.droplets[n].items() if not k.startswith("_")},
                         "links": {"actions": []}}

    def destroy(self, m, q, body, h):
        with self.lock:
            if self.droplets.pop(int(m[1]), None) is None:
                return _err(404, "not_found", "The resource you were accessing could not be found.")
            return 204, None

    def fw_create(self, m, q, body, h):
        if not _FW_NAME.match(body.get("name") or ""):
            return _err(422, "unprocessable_entity", "name is invalid")
        with self.lock:
            fid = f"fw-{next(_ids)}"
            self.firewalls[fid] = dict(body, id=fid, status="succeeded", created_at=_now(), droplet_ids=[])
            return 202, {"firewall": self.firewalls[fid]}

    def fw_delete(self, m, q, body, h):
        with self.lock:
            if self.firewalls.pop(m[1], None) is None:
                return _err(404, "not_found", "The resource you were accessing could not be found.")
            return 204, None

    def applied(self, droplet_id: int) -> list[str]:
        """The firewalls that apply to a droplet (by its tags)."""
        tags = set(self.droplets[droplet_id]["tags"])
        return [f["id"] for f in self.firewalls.values() if tags & set(f.get("tags") or [])]
