"""Sharing a live server: the owner makes a share link in JupyterLab's Cloudhop sidebar,
a second user opens it and runs a cell in the owner's notebook, the owner stops sharing,
and the second user's next request is refused; a revoked link gets a clear page."""

from __future__ import annotations

import os
import re

import pytest
import requests

from cloudhop.hub.sharing import GONE, SERVER_TOKEN_SCOPES, USER_SCOPES, add_sharing_scopes
from test_lab_extension import ARGS, CHROMIUM, NOTEBOOK, SCREENSHOTS

HUB_CONFIG = """
c.LocalProvider.regions = {"here": {"gpus": "none"}}
c.Spawner.default_url = "/lab"
"""


def test_users_and_server_tokens_get_the_sharing_scopes():
    from traitlets.config import Config

    c = Config()
    c.JupyterHub.load_roles = [{"name": "user", "scopes": ["self", "custom:x!user"]}, {"name": "other", "scopes": []}]
    c.Spawner.server_token_scopes = ["access:servers!server"]
    add_sharing_scopes(c)
    user = next(r for r in c.JupyterHub.load_roles if r["name"] == "user")
    assert set(user["scopes"]) == {"self", "custom:x!user", *USER_SCOPES}
    assert "shares!user" in user["scopes"] and "shares" not in user["scopes"], "own servers only"
    assert set(c.Spawner.server_token_scopes) == {"access:servers!server", *SERVER_TOKEN_SCOPES}
    assert "shares!server" in c.Spawner.server_token_scopes, "a server's token shares that server only"


def login(browser, hub, name, password):
    """A page of a new browser context, logged in to the hub as ``name``."""
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", name)
    page.fill("#password_input", password)
    page.click("#login_submit")
    page.wait_for_url(re.compile(r".*/hub/(home|spawn).*|.*/user/.*"), timeout=60_000)
    return page


def _open(page, url: str) -> None:
    """Open ``url`` of a shared server, confirming JupyterHub's authorize page if it asks."""
    page.goto(url)
    if "/hub/api/oauth2/authorize" in page.url:
        page.locator("button[type=submit]", has_text="Authorize").click()
        page.wait_for_url(re.compile(r".*/user/zoe/.*"), timeout=60_000)


def _run_first_cell(page, expect: str):
    cell = page.locator(".jp-Notebook .jp-Cell").first
    cell.locator(".cm-content").wait_for(timeout=60_000)
    page.locator("#jp-main-statusbar", has_text="| Idle").wait_for(timeout=120_000)
    cell.locator(".cm-content").click()
    page.keyboard.press("Control+Enter")
    page.wait_for_function(
        f"() => [...document.querySelectorAll('.jp-OutputArea-output')].some(e => e.textContent.includes({expect!r}))",
        timeout=60_000)


@pytest.mark.e2e
@pytest.mark.browser
def test_share_link_lets_a_second_user_run_a_cell_until_the_owner_stops_sharing(hub_factory):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package to run browser tests")
    sync_api = pytest.importorskip("playwright.sync_api")
    hub = hub_factory(extra_config=HUB_CONFIG)
    password = (hub.data_dir / "user_password").read_text().strip()
    hub.ensure_user("bob")
    hub.ensure_user("eve")
    hub.spawn("zoe", {"provider": "local", "region": "here", "gpu": "none"})
    r = hub.server_api("PUT", "zoe", "api/contents/shared.ipynb", json={"type": "notebook", "content": NOTEBOOK})
    assert r.status_code in (200, 201), r.text
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    # code in zoe's notebook cannot share her server with the token its kernel holds
    kernel = hub.kernel("zoe")
    try:
        assert kernel.execute(KERNEL_SHARES).startswith("403 a notebook's kernel may not share this server")
    finally:
        kernel.close()

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            zoe = login(browser, hub, "zoe", password)
            zoe.goto(f"{hub.url}/user/zoe/lab")
            zoe.locator("#cloudhop-status").wait_for(timeout=120_000)  # Lab and Cloudhop loaded
            zoe.locator('.lm-TabBar-tab[data-id="cloudhop-sidebar"]').click()  # its tab on the left
            share = zoe.locator("#cloudhop-sidebar .ch-share")
            share.locator(".ch-share-link").wait_for(timeout=60_000)
            assert "runs as you" in share.inner_text()
            share.locator(".ch-share-summary").wait_for(timeout=30_000)
            assert not share.locator(".ch-share-stop").is_visible(), "nothing shared: no red 'stop' button"
            share.locator(".ch-share-hours").fill("2")
            share.locator(".ch-share-link").click()
            share.locator(".ch-share-url").wait_for(timeout=30_000)
            link = share.locator(".ch-share-url").get_attribute("href")
            assert "/hub/accept-share?code=" in link, link
            assert "Expires" in share.locator(".ch-share-expiry").inner_text()
            share.locator(".ch-share-code").wait_for(timeout=30_000)  # listed, revocable
            # an open link is access: the summary says so, not "shared with no one"
            summary = share.locator(".ch-share-summary")
            assert summary.inner_text() == ("Shared with no one by name yet; 1 share link is open: "
                                            "whoever has one can join until it expires or you revoke it.")
            share.screenshot(path=str(SCREENSHOTS / "lab-share.png"))

            # bob opens the link, accepts, and runs a cell in zoe's notebook
            bob = login(browser, hub, "bob", password)
            bob.goto(link)
            bob.locator("form button[type=submit]", has_text="Accept").click()
            # JupyterHub asks bob once whether zoe's server may know who he is
            bob.wait_for_url(re.compile(r".*/hub/api/oauth2/authorize.*"), timeout=60_000)
            bob.locator("button[type=submit]", has_text="Authorize").click()
            bob.wait_for_url(re.compile(r".*/user/zoe/.*"), timeout=60_000)
            bob.goto(f"{hub.url}/user/zoe/lab/tree/shared.ipynb")
            _run_first_cell(bob, "x is 42")
            assert "bob" in [s["name"] for s in zoe.evaluate(SERVER_GET, "/user/zoe/cloudhop/api/shares")["shares"]]

            # bob may use the server, not share it on: neither through it nor through the hub
            assert bob.evaluate(SERVER_STATUS, "/user/zoe/cloudhop/api/shares") == 403
            token = hub.api("POST", "/users/bob/tokens", json={}).json()["token"]
            for path, body in (("/share-codes/zoe/", {}), ("/shares/zoe/", {"user": "bob"})):
                r = hub.api("POST", path, token=token, json=body)
                assert r.status_code in (403, 404) and "accept_url" not in r.text, (path, r.status_code, r.text)

            kernel = bob.evaluate(SERVER_GET, "/user/zoe/api/kernels")[0]["id"]
            channels = f"/user/zoe/api/kernels/{kernel}/channels"
            assert bob.evaluate(WS_OPENS, channels) == "open", "bob's kernel connection works while shared"
            bob.evaluate(WS_HOLD, channels)  # one he keeps open
            bob.wait_for_function("() => window.chHeld === 'open'", timeout=30_000)

            # zoe stops sharing: bob's next request is refused, his kernel connection too
            zoe.locator("#cloudhop-sidebar .ch-share-person", has_text="bob").wait_for(timeout=30_000)
            assert summary.inner_text().startswith("Shared with 1 user; 1 share link is open"), summary.inner_text()
            share.screenshot(path=str(SCREENSHOTS / "lab-share-accepted.png"))
            zoe.locator("#cloudhop-sidebar .ch-share-stop").click()
            zoe.wait_for_function(
                "() => document.querySelector('#cloudhop-sidebar .ch-share')?.textContent.includes('Shared with no one')",
                timeout=30_000)
            assert summary.inner_text() == "Shared with no one, and no share link is open."
            assert share.locator(".ch-share-person, .ch-share-code").count() == 0
            assert not share.locator(".ch-share-stop").is_visible()
            assert bob.evaluate(SERVER_STATUS, "/user/zoe/api/contents/shared.ipynb") in (0, 302, 401, 403)
            assert bob.evaluate(WS_OPENS, channels) == "refused"
            bob.wait_for_function("() => window.chHeld === 'closed'", timeout=30_000)  # the open one was closed
            after = requests.get(f"{hub.url}/user/zoe/api/contents/shared.ipynb", timeout=30,
                                 cookies={c["name"]: c["value"] for c in bob.context.cookies()},
                                 allow_redirects=False)
            assert after.status_code in (302, 401, 403) and "x = 6 * 7" not in after.text, after.text[:300]
            # zoe's own work goes on
            assert zoe.evaluate(SERVER_STATUS, "/user/zoe/api/contents/shared.ipynb") == 200

            # sharing with a group by name (an unknown name is refused, naming it), and taking it back
            assert hub.api("POST", "/groups/helpers", json={"users": ["bob"]}).status_code == 201
            status, reply = zoe.evaluate(SERVER_SEND, ["POST", "/user/zoe/cloudhop/api/shares", {"user": "nobody"}])
            assert status == 400 and "No such user: nobody" in reply["message"], reply
            status, reply = zoe.evaluate(SERVER_SEND, ["POST", "/user/zoe/cloudhop/api/shares", {"group": "helpers"}])
            assert status == 200 and reply["kind"] == "group", reply
            listed = zoe.evaluate(SERVER_GET, "/user/zoe/cloudhop/api/shares")["shares"]
            assert [(s["kind"], s["name"]) for s in listed] == [("group", "helpers")], listed
            share.locator(".ch-share-person", has_text="group helpers").wait_for(timeout=30_000)  # next refresh
            assert summary.inner_text() == "Shared with 1 group; no share link is open."
            # bob, a member, opens the server and runs a cell; eve, who is not, is refused
            _open(bob, f"{hub.url}/user/zoe/lab/tree/shared.ipynb")
            _run_first_cell(bob, "x is 42")
            eve = login(browser, hub, "eve", password)
            refused = eve.goto(f"{hub.url}/user/zoe/api/contents/shared.ipynb")
            assert refused.status in (401, 403) and "x = 6 * 7" not in eve.content(), (refused.status, eve.url)
            status, _ = zoe.evaluate(SERVER_SEND, ["DELETE", "/user/zoe/cloudhop/api/shares?group=helpers", None])
            assert status == 204 and zoe.evaluate(SERVER_GET, "/user/zoe/cloudhop/api/shares")["shares"] == []
            assert bob.evaluate(SERVER_STATUS, "/user/zoe/api/contents/shared.ipynb") in (0, 302, 401, 403)

            # the revoked link gets a clear page
            bob.goto(link)
            assert GONE in bob.locator("body").inner_text()
            bob.screenshot(path=str(SCREENSHOTS / "share-link-gone.png"))
        finally:
            browser.close()


SERVER_GET = """url => {
    const xsrf = (document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [])[1] || '';
    return fetch(url, {headers: {'X-XSRFToken': decodeURIComponent(xsrf)}}).then(r => r.json());
}"""
SERVER_STATUS = """url => {
    const xsrf = (document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [])[1] || '';
    return fetch(url, {headers: {'X-XSRFToken': decodeURIComponent(xsrf)}, redirect: 'manual'})
        .then(r => r.status);
}"""
WS_OPENS = """path => new Promise(resolve => {
    const ws = new WebSocket(location.origin.replace(/^http/, 'ws') + path);
    ws.onopen = () => { ws.close(); resolve('open'); };
    ws.onerror = () => resolve('refused');
    ws.onclose = () => resolve('refused');
})"""
WS_HOLD = """path => {
    const ws = new WebSocket(location.origin.replace(/^http/, 'ws') + path);
    window.chHeld = 'opening';
    ws.onopen = () => { window.chHeld = 'open'; };
    ws.onclose = () => { window.chHeld = 'closed'; };
}"""
KERNEL_SHARES = """
import json, os, urllib.error, urllib.request
url = os.environ["JUPYTERHUB_SERVICE_URL"].rstrip("/") + "/cloudhop/api/shares"
req = urllib.request.Request(url, data=b'{"code": true}', method="POST", headers={
    "Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"], "Content-Type": "application/json"})
try:
    urllib.request.urlopen(req, timeout=30)
    print("made a share link")
except urllib.error.HTTPError as err:
    print(err.code, json.loads(err.read())["message"])
"""
SERVER_SEND = """([method, url, body]) => {
    const xsrf = (document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [])[1] || '';
    return fetch(url, {method, body: body === null ? undefined : JSON.stringify(body),
                       headers: {'X-XSRFToken': decodeURIComponent(xsrf), 'Content-Type': 'application/json'}})
        .then(async r => [r.status, r.status === 204 ? null : await r.json()]);
}"""
