"""One user can never reach another through Cloudhop's HTTP APIs: ``bob`` attacks every
endpoint Cloudhop adds (tests/attackhub.py lists them; docs/security.md has the table)
about ``ada``'s server, cluster, offers, tokens and snapshots - with no credentials,
with his own token and with his own logged-in browser - and gets a refusal and none of
her data, and nothing of hers changes. Also: his store namespace shares nothing with
hers (not even which chunks exist), a server of his cannot restore her snapshot, and the
answers do not tell which users exist. The REST spawn is fuzzed: every bad body is a
400 or 403 naming the field, never a 500.

One real hub for the module (``AttackHub``): ada's server with a Ray cluster (a stand-in
for Ray's dashboard) and a snapshot with its report in the real store.
"""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings

import option_strategies as strategies
from attackhub import (
    HUB_ENDPOINTS, OPTIONS, SERVER_ENDPOINTS, STORE_ENDPOINTS, AttackHub, browser, hub_xsrf, user_token,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    hub = AttackHub(tmp_path_factory.mktemp("cross-user"))
    try:
        yield hub.start()
    finally:
        hub.stop()


@pytest.fixture(scope="module")
def bobs_browser(attacked):
    """bob logged in to the hub in his browser (he has no server)."""
    return browser(attacked.hub, "bob", server=False)


def leaks(attacked, text: str) -> list[str]:
    """What of ada's shows in an answer: her file, her snapshot id, offers, her cluster,
    a token, her server's details, the dashboard."""
    marks = ["ada's results", attacked.snapshot_id, '"offers"', '"address"', '"token"', '"workers"',
             '"provider"', '"snapshots"', "Ray Dashboard", '"user": "ada"']
    return [m for m in marks if m in text]


def assert_refused(attacked, r, session=None) -> None:
    """A refusal (401/403/404, or a redirect to the hub's login that then refuses) with
    none of ada's data."""
    if r.status_code == 302 and session is not None:
        # a browser follows the redirect to the hub's OAuth, which refuses bob
        location = r.headers["Location"]
        assert location.startswith("/hub/"), location
        r = session.get(attacked.hub.url + location, timeout=60)
        assert r.status_code == 403, (r.status_code, r.url)
    elif r.status_code == 302:
        assert r.headers["Location"].startswith(("/hub/login", "/hub/api/oauth2/authorize")), r.headers
    else:
        assert r.status_code in (401, 403, 404), (r.request.method, r.url, r.status_code, r.text[:200])
    assert not leaks(attacked, r.text), (r.url, leaks(attacked, r.text))


def body(kind) -> dict:
    return {} if kind is None else {"json": kind}


def ada_unchanged(attacked) -> None:
    """ada's cluster, tokens and snapshots as the module set them up; nothing reached Ray."""
    assert attacked.ray_status()["requested"] == 1
    assert attacked.dashboard.requests == [], "no request of bob's reached ada's Ray dashboard"
    tokens = attacked.hub.api("GET", "/users/ada/tokens").json()["api_tokens"]
    assert not [t for t in tokens if (t.get("note") or "").startswith(("cloudhop move", "cloudhop kernels"))
                and "stolen" in (t.get("note") or "")]
    listing = attacked.ada_listing()
    assert [s["id"] for s in listing] == [attacked.snapshot_id]
    report = attacked.store("GET", "ada", "api/users/{u}/snapshots/{sid}/report", attacked.ada).json()
    assert report["state"] == "done"


ENDPOINTS = HUB_ENDPOINTS + SERVER_ENDPOINTS
IDS = [f"{m} {p}" for m, p, _ in ENDPOINTS]


@pytest.mark.parametrize("method, path, payload", ENDPOINTS, ids=IDS)
def test_without_credentials_nothing_answers(attacked, method, path, payload):
    assert_refused(attacked, attacked.call(method, path, **body(payload)))


@pytest.mark.parametrize("method, path, payload", ENDPOINTS, ids=IDS)
def test_bobs_token_gets_nothing_of_adas(attacked, method, path, payload):
    assert_refused(attacked, attacked.call(method, path, attacked.bob, **body(payload)))


@pytest.mark.parametrize("method, path, payload", ENDPOINTS, ids=IDS)
def test_bobs_browser_gets_nothing_of_adas(attacked, bobs_browser, method, path, payload):
    # with the hub's XSRF token, so what stops him is that the things are not his
    r = attacked.call(method, path, session=bobs_browser, headers={"X-XSRFToken": hub_xsrf(bobs_browser)},
                      **body(payload))
    assert_refused(attacked, r, session=bobs_browser)


@pytest.mark.parametrize("method, path, kind", STORE_ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in STORE_ENDPOINTS])
def test_the_store_refuses_bob_in_adas_namespace(attacked, bobs_browser, method, path, kind):
    for token, session in ((None, None), (attacked.bob, None), (None, bobs_browser)):
        r = attacked.store(method, "ada", path, token, session=session, **attacked.store_body(kind))
        assert r.status_code == 403, (token, r.status_code, r.text[:200])
        assert not leaks(attacked, r.text) and b"ada's results" not in r.content
    # the user in the path is compared as the hub names users: no spelling of ada's name is bob's
    for name in ("%61da", "ADA", "bob%2F..%2Fada", "ada%00", "bob/../ada"):
        r = attacked.store(method, name, path, attacked.bob, **attacked.store_body(kind))
        assert r.status_code in (403, 404), (name, r.status_code, r.text[:200])
        assert b"ada's results" not in r.content and not leaks(attacked, r.text)


def test_nothing_of_adas_changed(attacked, bobs_browser):
    """Runs after the attacks above (pytest keeps the file's order)."""
    ada_unchanged(attacked)


def test_bobs_namespace_shares_nothing_with_adas(attacked):
    """Chunks are stored by content, but per user: bob cannot learn that ada has a chunk,
    read it, or claim it with a manifest naming it."""
    ids = attacked.store_body("ids")["json"]
    r = attacked.store("POST", "bob", "api/users/{u}/chunks/missing", attacked.bob, json=ids)
    assert r.status_code == 200 and r.json()["missing"] == ids["ids"], r.text
    r = attacked.store("POST", "bob", "api/users/{u}/chunks/pack", attacked.bob, json=ids)
    assert r.status_code in (403, 404) and b"ada's results" not in r.content, r.status_code
    r = attacked.store("POST", "bob", "api/users/{u}/snapshots", attacked.bob, data=attacked.manifest)
    assert r.status_code == 409 and "not in the store" in r.json()["message"], r.text
    r = attacked.store("GET", "bob", "api/users/{u}/snapshots/{sid}", attacked.bob)
    assert r.status_code == 404 and "secret.csv" not in r.text, r.text  # not her manifest
    r = attacked.store("POST", "bob", "api/users/{u}/snapshots/{sid}/servers", attacked.bob, json={"server": ""})
    assert r.status_code == 404, r.text  # nor let a server of his restore it
    r = attacked.store("GET", "bob", "api/users/{u}/snapshots", attacked.bob)
    assert r.status_code == 200 and r.json() == {"snapshots": []}, r.text


def test_answers_do_not_tell_which_users_exist(attacked):
    for method, path, payload in HUB_ENDPOINTS:
        ada = attacked.call(method, path, attacked.bob, user="ada", **body(payload))
        nobody = attacked.call(method, path, attacked.bob, user="nobody", **body(payload))
        assert ada.status_code == nobody.status_code == 404, (path, ada.status_code, nobody.status_code)
        assert ada.json()["message"].replace("ada", "X") == nobody.json()["message"].replace("nobody", "X")


def test_a_server_of_bobs_cannot_restore_adas_snapshot(attacked):
    """bob names ada's snapshot in his own spawn: the spawn is refused, or his server
    starts and its restore fails; her files never reach his workspace."""
    hub = attacked.hub
    r = hub.api("POST", "/users/bob/servers/thief", json={**OPTIONS, "ray": None, "restore": attacked.snapshot_id})
    if r.status_code in (400, 403, 404):
        return
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("bob", "thief", timeout=120)
    deadline = time.monotonic() + 60
    while True:
        report = attacked.call("GET", "/user/{u}/thief/cloudhop/api/restore", attacked.bob, user="bob").json()
        if report.get("state") != "restoring" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert report["state"] == "failed", report
    r = attacked.call("GET", "/user/{u}/thief/api/contents/data/secret.csv", attacked.bob, user="bob")
    assert r.status_code == 404 and "ada's results" not in r.text
    hub.stop_server("bob", "thief")
    ada_unchanged(attacked)


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(options=strategies.options)
def test_the_rest_spawn_answers_any_body_with_400_or_403(attacked, options):
    """mallory's group allows no server (a price limit none meets), so no body starts one:
    each is refused, naming the field, escaped, never a 500."""
    token = _mallory_token(attacked)
    r = attacked.call("POST", "/hub/api/users/{u}/servers/fuzz", token, user="mallory",
                      data=json.dumps(options, allow_nan=True), headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 403), (options, r.status_code, r.text[:300])
    message = r.json()["message"]
    assert message and "<" not in message, message
    assert attacked.hub.server_model("mallory", "fuzz") is None


def _mallory_token(attacked) -> str:
    if not hasattr(attacked, "mallory"):
        attacked.mallory = user_token(attacked.hub, "mallory")
    return attacked.mallory
