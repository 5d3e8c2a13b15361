"""A page on another site cannot act with a user's login: every state-changing request
Cloudhop adds, sent from ``ada``'s browser with her cookies but without the XSRF token
(or with a forged one, or from another origin), is refused and changes nothing; the same
request with her XSRF token goes through, so each check can fail. The rules are
JupyterHub's on the hub (API requests, GETs included when a browser fetches them from
elsewhere) and Jupyter Server's in her server (the Ray dashboard proxy included); the
snapshot store reads no cookies at all. Also the REST spawn and the spawn form, which
carry Cloudhop's options.

One real hub for the module (tests/attackhub.py); what each endpoint is for is in
docs/security.md.
"""

from __future__ import annotations

import pytest

from attackhub import HUB_ENDPOINTS, SERVER_ENDPOINTS, STORE_ENDPOINTS, AttackHub, browser, hub_xsrf, server_xsrf

pytestmark = pytest.mark.e2e

#: what a browser adds to a fetch made by a page on another site
CROSS_SITE = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "cross-site", "Origin": "https://elsewhere.example"}

#: each state-changing request: (method, path, body, status when sent properly, whether it
#: changes ada's tokens, cluster or Ray jobs)
CHANGES = [
    ("POST", "/hub/api/cloudhop/offers/{u}/check", {"gpu": "none"}, 200, False),
    ("POST", "/hub/api/cloudhop/ray/{u}", {"workers": 0}, 200, True),
    ("POST", "/hub/api/cloudhop/moves/{u}", {"target": "moved-here"}, 201, True),
    ("POST", "/hub/api/cloudhop/kernel-token/{u}", {}, 201, True),
    # past authentication and XSRF, a rescue stops at its check: ada's server is not spot
    ("POST", "/hub/api/cloudhop/rescue/{u}", {"snapshot": "0" * 64, "notice": {"cloud": "aws"}}, 409, False),
    # past authentication and XSRF, the move stops at the option check
    ("POST", "/user/{u}/cloudhop/api/migrations", {"region": "nowhere"}, 400, False),
    # a snapshot of ada's server into its own line (what a hibernating stop asks for)
    ("POST", "/user/{u}/cloudhop/api/snapshots", {"reason": "manual", "kernels": False}, 200, False),
    # a restore of a snapshot the store does not have: it starts, fails and writes nothing
    ("POST", "/user/{u}/cloudhop/api/restore", {"snapshot": "nosuch"}, 202, False),
    ("POST", "/user/{u}/cloudhop/ray/workers", {"workers": 1}, 200, True),
    ("POST", "/user/{u}/ray-dashboard/api/jobs/", {"entrypoint": "id"}, 200, True),
    ("PUT", "/user/{u}/ray-dashboard/api/jobs/x", {}, 200, True),
    ("DELETE", "/user/{u}/ray-dashboard/api/jobs/x", None, 200, True),
    # activity reports move last_activity only (the cull tests check that)
    ("POST", "/hub/api/cloudhop/activity/{u}", {"active": True}, 200, False),
    ("POST", "/user/{u}/cloudhop/api/activity", {}, 200, False),
    # past authentication and XSRF, a deletion of a snapshot ada does not have finds none
    ("DELETE", "/hub/api/cloudhop/snapshots/{u}/20000101-000000-00000000", None, 404, False),
    # a share link of ada's server, then every share of it revoked (shares are not in the
    # state compared here: test_sharing.py checks who gets in)
    ("POST", "/user/{u}/cloudhop/api/shares", {"code": True}, 200, False),
    ("DELETE", "/user/{u}/cloudhop/api/shares", None, 204, False),
    # a page's unsaved documents (none): what a snapshot waits for, nothing else
    ("POST", "/user/{u}/cloudhop/api/unsaved", {"client": "page-1", "paths": []}, 200, False),
    # only the server's own token reports launch steps: ada herself, by cookie, gets the 404 anyone does
    ("POST", "/hub/api/cloudhop/launch-steps/{u}", {"step": "image"}, 404, False),
]
#: the store's answer to each request sent properly (with a token)
#: (the one DELETE names a snapshot ada does not have, so hers stays)
STORE_OK = {"GET": 200, "PUT": 200, "POST": 200, "DELETE": 404, ("POST", "api/users/{u}/snapshots"): 201}


def test_every_state_changing_endpoint_is_checked():
    listed = {(m, p) for m, p, _ in HUB_ENDPOINTS + SERVER_ENDPOINTS if m != "GET"}
    assert listed == {(m, p) for m, p, *_ in CHANGES}


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    hub = AttackHub(tmp_path_factory.mktemp("xsrf"))
    try:
        yield hub.start()
    finally:
        hub.stop()


@pytest.fixture(scope="module")
def adas_browser(attacked):
    """ada's browser: logged in to the hub and to her server."""
    return browser(attacked.hub, "ada")


def xsrf_for(session, path: str) -> str:
    return hub_xsrf(session) if path.startswith("/hub/") else server_xsrf(session, "ada")


def state(attacked) -> tuple:
    """What a forged request could change: ada's Cloudhop tokens, her cluster's size,
    the requests that reached Ray's dashboard other than reads."""
    tokens = attacked.hub.api("GET", "/users/ada/tokens").json()["api_tokens"]
    ids = frozenset(t["id"] for t in tokens if (t.get("note") or "").startswith("cloudhop "))
    return ids, attacked.ray_status()["requested"], tuple(attacked.dashboard.posts())


def json_or_none(payload) -> dict:
    return {} if payload is None else {"json": payload}


@pytest.mark.parametrize("method, path, payload, status, changes", CHANGES, ids=[f"{m} {p}" for m, p, *_ in CHANGES])
def test_a_request_with_the_cookie_but_not_the_xsrf_token_is_refused(attacked, adas_browser, method, path,
                                                                     payload, status, changes):
    before = state(attacked)
    for headers in ({}, {"X-XSRFToken": "forged"}, dict(CROSS_SITE)):
        r = attacked.call(method, path, session=adas_browser, headers=headers, **json_or_none(payload))
        assert r.status_code == 403, (headers, r.status_code, r.text[:200])
        assert state(attacked) == before, f"{method} {path} with {headers} changed something"
    r = attacked.call(method, path, session=adas_browser, headers={"X-XSRFToken": xsrf_for(adas_browser, path)},
                      **json_or_none(payload))
    assert r.status_code == status, (r.status_code, r.text[:300])
    if status == 400:
        assert r.json()["message"].startswith("region:"), r.text
    if changes and "workers" in (payload or {}):
        assert attacked.ray_status()["requested"] == payload["workers"]
    elif changes:
        assert state(attacked) != before


GETS = [(m, p) for m, p, _ in HUB_ENDPOINTS if m == "GET"]


@pytest.mark.parametrize("method, path", GETS, ids=[p for _, p in GETS])
def test_a_hub_api_read_fetched_from_another_site_needs_the_xsrf_token(attacked, adas_browser, method, path):
    r = attacked.call(method, path, session=adas_browser, headers=dict(CROSS_SITE))
    assert r.status_code == 403 and "xsrf" in r.text.lower(), (r.status_code, r.text[:200])
    r = attacked.call(method, path, session=adas_browser, headers={**CROSS_SITE, "X-XSRFToken": hub_xsrf(adas_browser)})
    assert r.status_code == 200, r.text[:200]


SERVER_GETS = [(m, p) for m, p, _ in SERVER_ENDPOINTS if m == "GET" and "/cloudhop/" in p]


@pytest.mark.parametrize("method, path", SERVER_GETS, ids=[p for _, p in SERVER_GETS])
def test_a_server_api_read_fetched_from_another_site_is_refused(attacked, adas_browser, method, path):
    r = attacked.call(method, path, session=adas_browser, headers=dict(CROSS_SITE))
    assert r.status_code in (403, 404), (r.status_code, r.text[:200])
    assert '"user": "ada"' not in r.text and '"offers"' not in r.text and '"nodes"' not in r.text
    # the page's own fetch (same origin) needs the server's XSRF token too
    same = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin"}
    assert attacked.call(method, path, session=adas_browser, headers=same).status_code == 403
    r = attacked.call(method, path, session=adas_browser, headers={**same, "X-XSRFToken": server_xsrf(adas_browser, "ada")})
    assert r.status_code in (200, 404), r.text[:200]  # 404: no such migration, not restored


@pytest.mark.parametrize("method, path, kind", STORE_ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in STORE_ENDPOINTS])
def test_the_store_takes_no_cookies(attacked, adas_browser, method, path, kind):
    """ada's browser holds every cookie of hers; the store answers only to a token."""
    listing = attacked.ada_listing()
    r = attacked.store(method, "ada", path, session=adas_browser,
                       headers={"X-XSRFToken": hub_xsrf(adas_browser)}, **attacked.store_body(kind))
    assert r.status_code == 403 and "token" in r.json()["message"], r.text[:200]
    assert attacked.ada_listing() == listing
    r = attacked.store(method, "ada", path, attacked.ada, **attacked.store_body(kind))
    assert r.status_code == STORE_OK.get((method, path), STORE_OK[method]), r.text[:200]


def test_a_spawn_needs_the_xsrf_token(attacked, adas_browser):
    """The REST spawn and the spawn form carry Cloudhop's options; JupyterHub's XSRF check
    comes first, then Cloudhop's option check answers."""
    url = "/hub/api/users/{u}/servers/elsewhere"
    for headers in ({}, {"X-XSRFToken": "forged"}, dict(CROSS_SITE)):
        r = attacked.call("POST", url, session=adas_browser, headers=headers, json={"colour": "red"})
        assert r.status_code == 403, (headers, r.status_code, r.text[:200])
    r = attacked.call("POST", url, session=adas_browser, headers={"X-XSRFToken": hub_xsrf(adas_browser)},
                      json={"colour": "red"})
    assert r.status_code == 400 and r.json()["message"].startswith("colour:"), r.text[:200]

    form = "/hub/spawn/{u}/elsewhere"
    page = attacked.call("GET", form, session=adas_browser)
    assert page.status_code == 200 and "_xsrf=" in page.text  # in the form's action
    r = attacked.call("POST", form, session=adas_browser, data={"provider": "nope"})
    assert r.status_code == 403, r.text[:200]
    r = attacked.call("POST", form, session=adas_browser, data={"provider": "nope", "_xsrf": hub_xsrf(adas_browser)})
    assert r.status_code == 400 and "provider: unknown provider" in r.text
    assert attacked.hub.server_model("ada", "elsewhere") is None
