"""The instructor's view: a JupyterHub service page (``/services/cloudhop-instructor/``,
in the hub's "Services" menu) for whoever runs a class or a workshop.

It shows every running server (user, provider, region, GPU or slice, started, idle
minutes, spend so far) and, per group, its seats: servers running against the group's
``seats`` (a JupyterHub group property), or the seats of a ``cloudhop up --workshop``. Its actions,
per group: **stop all** (each server through the hub's normal stop, so a provider that
hibernates on stop hibernates them) and **copy a notebook into every workspace** (each
running server of the group gets it through its own contents API).

**Every call is made with the instructor's own OAuth token**, never with a service token
of its own: the service can do nothing its user may not. The token holds at most
:data:`OAUTH_SCOPES`, cut down by the hub to what the user holds. A refusal names the
permission it needs (:func:`refusal`), e.g. ``you lack 'admin:servers' on group
'students' (needed to stop servers)``. Admins hold all of them; an operator grants a
non-admin instructor a role (docs/teaching.md)::

    c.JupyterHub.load_roles = [{"name": "instructor", "groups": ["instructors"], "scopes": [
        "access:services!service=cloudhop-instructor", "list:users", "list:groups", "read:groups",
        "read:servers!group=students", "admin:server_state!group=students",
        "admin:servers!group=students", "access:servers!group=students"]}]
"""

from __future__ import annotations

import datetime
import html
import json
import os
import sys
from dataclasses import dataclass
from urllib.parse import quote

from cloudhop.extensions.hubclient import HubClient, HubError
from cloudhop.spawner.offers import gpu_label

SERVICE_NAME = "cloudhop-instructor"
#: the most the instructor's token may do (the hub gives the part the user holds)
OAUTH_SCOPES = ["list:users", "read:users", "read:servers", "admin:server_state", "admin:servers",
                "access:servers", "list:groups", "read:groups"]
#: the variable that tells the service where the hub's proxy is
PROXY_URL_ENV = "CLOUDHOP_PROXY_URL"
#: seats per group the operator set (JSON ``{group: seats}``), beside groups' properties
SEATS_ENV = "CLOUDHOP_SEATS"
#: the largest notebook the page copies (bytes)
MAX_NOTEBOOK = 16 * 2**20


@dataclass(frozen=True)
class Row:
    """One running server, as the page lists it."""

    user: str
    server: str
    groups: tuple
    provider: str
    region: str
    gpu: str
    started: str
    idle_minutes: int | None
    spend: float | None


def _when(iso: str | None) -> datetime.datetime | None:
    if not iso:
        return None
    try:
        return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return None


def server_row(user: dict, name: str, server: dict, now: datetime.datetime) -> Row:
    """A :class:`Row` from the hub's user and server models (the state, with
    ``admin:server_state``, gives the offer, its price and the GPU slice)."""
    state = server.get("state") or {}
    offer = state.get("offer") or {}
    options = server.get("user_options") or {}
    gpu_name = offer.get("gpu") or options.get("gpu") or "none"
    count = offer.get("gpu_count", options.get("gpu_count", 0)) or 0
    gpu = "none" if gpu_name == "none" else f"{count} x {gpu_label(gpu_name, offer.get('gpu_shared_by') or 0)}"
    started, active = _when(server.get("started")), _when(server.get("last_activity"))
    spend = None
    spot = bool((state.get("request") or {}).get("spot"))
    price = offer.get("spot_price_hour" if spot else "price_hour")
    if started and isinstance(price, (int, float)):
        spend = round(price * max((now - started).total_seconds(), 0) / 3600, 4)
    return Row(
        user=user["name"], server=name, groups=tuple(user.get("groups") or ()),
        provider=offer.get("provider") or options.get("provider") or "?",
        region=offer.get("region") or options.get("region") or "?", gpu=gpu,
        started=started.strftime("%Y-%m-%d %H:%M UTC") if started else "?",
        idle_minutes=int((now - active).total_seconds() // 60) if active else None, spend=spend,
    )


def running_rows(users: list[dict], now: datetime.datetime | None = None) -> list[Row]:
    """Every running (or starting) server of ``users`` (the hub's models), by user."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    rows = [server_row(u, name, s, now) for u in users for name, s in sorted((u.get("servers") or {}).items())
            if not s.get("stopped", False)]
    return sorted(rows, key=lambda r: (r.user, r.server))


def seats(group: dict, rows: list[Row], configured: dict | None = None) -> tuple[int, int | None]:
    """(servers running in ``group``, its seats or None): the group's ``seats`` property,
    else ``configured`` (``{group: seats}``, from :data:`SEATS_ENV`: a workshop's)."""
    limit = (group.get("properties") or {}).get("seats")
    if limit is None:
        limit = (configured if configured is not None else _configured_seats()).get(group["name"])
    used = sum(1 for r in rows if group["name"] in r.groups)
    return used, limit if isinstance(limit, int) and not isinstance(limit, bool) else None


def _configured_seats() -> dict:
    try:
        value = json.loads(os.environ.get(SEATS_ENV) or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


#: the permission each step needs, and what for
NEEDS = {
    "list": ("list:users", "list users"),
    "read": ("read:servers", "see their servers"),
    "groups": ("read:groups", "see groups and their members"),
    "stop": ("admin:servers", "stop servers"),
    "copy": ("access:servers", "write into their servers"),
}


def refusal(step: str, err: HubError, where: str = "") -> str:
    """Words for a refused step naming the missing permission: ``you lack 'admin:servers'
    on group 'students' (needed to stop servers)``; other failures as the hub said them."""
    scope, what = NEEDS[step]
    # the hub answers 404 "No access to resources" for what the token may see but not change
    if err.status == 403 or (err.status == 404 and "no access" in err.message.lower()):
        return f"you lack {scope!r}{' on ' + where if where else ''} (needed to {what})"
    return f"could not {what}: {err}"


class Instructor:
    """What the page does for one instructor, through the hub API with their token."""

    def __init__(self, hub: HubClient, proxy_url: str = ""):
        self.hub = hub
        #: where users' servers are reached (the hub's proxy), for their contents API
        self.proxy_url = (proxy_url or os.environ.get(PROXY_URL_ENV) or "").rstrip("/")

    async def overview(self) -> dict:
        """``{"rows", "groups": [{"name", "used", "seats", "members"}], "errors"}``."""
        errors, users, groups = [], [], []
        try:
            users = await self.hub.users()
        except HubError as err:
            errors.append(refusal("list", err))
        try:
            groups = await self.hub.request("GET", "/groups", timeout=30) or []
        except HubError as err:
            errors.append(refusal("groups", err))
        rows = running_rows(users)
        if users and all("servers" not in u for u in users):  # some hidden is a narrower role
            errors.append(refusal("read", HubError(403, "")))
        out = []
        for g in groups:
            used, limit = seats(g, rows)
            out.append({"name": g["name"], "used": used, "seats": limit, "members": len(g.get("users") or [])})
        return {"rows": rows, "groups": out, "errors": errors}

    async def _members(self, group: str) -> list[str]:
        try:
            return (await self.hub.request("GET", f"/groups/{quote(group, safe='')}", timeout=30))["users"]
        except HubError as err:
            raise PermissionError(refusal("groups", err, f"group {group!r}")) from None

    async def _running(self, group: str) -> list[tuple[str, str]]:
        members = set(await self._members(group))
        try:
            users = [u for u in await self.hub.users() if u["name"] in members]
        except HubError as err:
            raise PermissionError(refusal("list", err)) from None
        if _hidden(users):
            raise PermissionError(refusal("read", HubError(403, ""), f"group {group!r}"))
        return [(r.user, r.server) for r in running_rows(users)]

    async def stop_group(self, group: str) -> list[str]:
        """Stop every running server of ``group``'s members; one line per server."""
        lines = []
        for user, server in await self._running(group):
            path = f"/users/{quote(user, safe='')}/servers/{quote(server, safe='')}"
            try:
                await self.hub.request("DELETE", path, timeout=60)
                lines.append(f"{user}/{server}: stopping")
            except HubError as err:
                lines.append(f"{user}/{server}: {refusal('stop', err, f'group {group!r}')}")
        return lines or [f"no server of group {group!r} is running"]

    async def copy_notebook(self, group: str, name: str, content: bytes) -> list[str]:
        """Put notebook ``name`` (its JSON ``content``) into the workspace of every running
        server of ``group``, beside what is there; an existing file of that name is kept."""
        if not name.endswith(".ipynb") or "/" in name or name.startswith("."):
            raise ValueError(f"notebook: a file name ending .ipynb, without folders, not {name!r}")
        if len(content) > MAX_NOTEBOOK:
            raise ValueError(f"notebook: at most {MAX_NOTEBOOK // 2**20} MiB")
        try:
            notebook = json.loads(content)
            assert isinstance(notebook, dict) and "cells" in notebook
        except (ValueError, AssertionError):
            raise ValueError("notebook: not a Jupyter notebook (JSON with cells)") from None
        server_root = self.proxy_url or self.hub.api_url.rsplit("/hub/api", 1)[0]
        lines = []
        for user, server in await self._running(group):
            prefix = os.environ.get("JUPYTERHUB_BASE_URL", "/")
            base = f"{server_root}{prefix}user/{quote(user, safe='')}/{quote(server, safe='') + '/' if server else ''}"
            target = HubClient(base + "api", self.hub.token)
            path = f"/contents/{quote(name)}"
            try:
                if await _exists(target, path):
                    lines.append(f"{user}/{server}: already has {name}, kept")
                    continue
                await target.request("PUT", path, {"type": "notebook", "format": "json", "content": notebook})
                lines.append(f"{user}/{server}: copied")
            except HubError as err:
                lines.append(f"{user}/{server}: {refusal('copy', err, f'group {group!r}')}")
        return lines or [f"no server of group {group!r} is running"]


def _hidden(users: list[dict]) -> bool:
    """Whether the hub left users' servers out of its answer (no ``read:servers``)."""
    return any("servers" not in u for u in users)


async def _exists(server: HubClient, path: str) -> bool:
    try:
        await server.request("GET", path + "?content=0", timeout=30)
        return True
    except HubError as err:
        if err.status == 404:
            return False
        raise


# -- the page -------------------------------------------------------------------------

def _e(value) -> str:
    return html.escape(str(value))


def render(view: dict, messages: list[str], xsrf: str) -> str:
    """The page's HTML: every value escaped."""
    rows = "".join(
        f"<tr><td>{_e(r.user)}</td><td>{_e(r.server or '(default)')}</td><td>{_e(r.provider)}</td>"
        f"<td>{_e(r.region)}</td><td>{_e(r.gpu)}</td><td>{_e(r.started)}</td>"
        f"<td>{'' if r.idle_minutes is None else r.idle_minutes}</td>"
        f"<td>{'' if r.spend is None else f'${r.spend:.2f}'}</td></tr>" for r in view["rows"])
    groups = "".join(
        f"<tr class='ch-group' data-group='{_e(g['name'])}'><td>{_e(g['name'])}</td><td>{g['members']}</td>"
        f"<td class='ch-seats'>{g['used']} of {g['seats'] if g['seats'] is not None else 'unlimited'}</td><td>"
        f"<form method='post'>{xsrf}<input type='hidden' name='group' value='{_e(g['name'])}'>"
        f"<button name='action' value='stop' class='ch-stop-group'>Stop all</button></form> "
        f"<form method='post' enctype='multipart/form-data'>{xsrf}<input type='hidden' name='group' value='{_e(g['name'])}'>"
        f"<input type='file' name='notebook' accept='.ipynb'><button name='action' value='copy' class='ch-copy'>"
        f"Copy notebook into every workspace</button></form></td></tr>" for g in view["groups"])
    notes = "".join(f"<li class='ch-error'>{_e(m)}</li>" for m in view["errors"])
    done = "".join(f"<li>{_e(m)}</li>" for m in messages)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Cloudhop: instructor</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em}}
.ch-error{{color:#b00}}form{{display:inline}}</style></head><body>
<p><a href="{_e(os.environ.get('JUPYTERHUB_BASE_URL', '/'))}hub/home">Hub home</a></p>
<h1>Instructor</h1>
<ul id="ch-messages">{done}{notes}</ul>
<h2>Running servers ({len(view['rows'])})</h2>
<table id="ch-servers"><tr><th>user</th><th>server</th><th>provider</th><th>region</th><th>GPU or slice</th>
<th>started</th><th>idle min</th><th>spend</th></tr>{rows}</table>
<h2>Groups</h2>
<p>Stopping uses the hub's normal stop: where the provider keeps a stopped server's state, its servers hibernate.</p>
<table id="ch-groups"><tr><th>group</th><th>members</th><th>seats in use</th><th>actions</th></tr>{groups}</table>
</body></html>"""


def make_app():
    """The service's tornado application (run by :func:`main`)."""
    from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
    from jupyterhub.utils import url_path_join
    from tornado import web

    class Page(HubOAuthenticated, web.RequestHandler):
        def _instructor(self) -> Instructor:
            token = self.hub_auth.get_token(self)
            return Instructor(HubClient(self.hub_auth.api_url, token or ""))

        async def _show(self, messages: list[str], status: int = 200) -> None:
            view = await self._instructor().overview()
            self.set_status(status)
            self.finish(render(view, messages, self.xsrf_form_html()))

        @web.authenticated
        async def get(self):
            await self._show([])

        @web.authenticated
        async def post(self):
            action, group = self.get_body_argument("action", ""), self.get_body_argument("group", "")
            if not group:
                return await self._show(["group: name a group"], 400)
            instructor = self._instructor()
            try:
                if action == "stop":
                    lines = await instructor.stop_group(group)
                elif action == "copy":
                    files = self.request.files.get("notebook") or []
                    if not files:
                        return await self._show(["notebook: choose a notebook file"], 400)
                    lines = await instructor.copy_notebook(group, files[0]["filename"], files[0]["body"])
                else:
                    return await self._show([f"action: unknown action {action!r}"], 400)
            except ValueError as err:
                return await self._show([str(err)], 400)
            except PermissionError as err:
                return await self._show([str(err)], 403)
            await self._show(lines)

    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", f"/services/{SERVICE_NAME}/")
    return web.Application([
        (prefix, Page),
        (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
    ], cookie_secret=os.urandom(32), xsrf_cookies=True)


def main() -> None:
    from urllib.parse import urlparse

    from tornado import ioloop

    from .services import exit_with_hub

    url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    make_app().listen(url.port, url.hostname or "127.0.0.1")
    exit_with_hub()
    ioloop.IOLoop.current().start()


def add_instructor_service(c, *, port: int, proxy_url: str, seats: dict | None = None) -> dict:
    """Add the instructor's page to JupyterHub config ``c`` (shown in the hub's
    Services menu to those who may open it); ``proxy_url`` is where the hub's proxy
    serves users' servers, ``seats`` the seats of groups (``{group: n}``) that have no
    ``seats`` property."""
    from .services import add_service

    service = {
        "name": SERVICE_NAME,
        "url": f"http://127.0.0.1:{port}",
        "command": [sys.executable, "-m", "cloudhop.hub.instructor"],
        "environment": {PROXY_URL_ENV: proxy_url, SEATS_ENV: json.dumps(seats or {})},
        "oauth_client_allowed_scopes": list(OAUTH_SCOPES),
        "display": True,
    }
    add_service(c, service)
    return service


if __name__ == "__main__":
    main()
