"""The Ray dashboard's cross-site check (extensions/cross_site.py): what a page on another
site can make a browser send is refused, what the dashboard's own pages, a user typing
its address and a token-holding script send passes. The same check through a real hub
and server: tests/test_ray_access_e2e.py."""

from __future__ import annotations

import pytest
from tornado.httputil import HTTPHeaders

from cloudhop.extensions.cross_site import cross_site_refusal

HOST = "hub.example.org"
IMG = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
LINK = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}


def check(path, **headers):
    return cross_site_refusal(HTTPHeaders({k.replace("_", "-"): v for k, v in headers.items()}), HOST, path)


@pytest.mark.parametrize("path", ["/worker/cpu_profile", "/memory_profile", "/api/v0/delay/600",
                                  "/api/v0/logs/file", "/task/traceback"])
@pytest.mark.parametrize("headers", [
    IMG, LINK,
    {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "script"},
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"},
    {"Referer": "https://evil.example/x"},
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Referer": f"https://{HOST}.evil.example/"},
])
def test_a_request_another_site_made_is_refused(path, headers):
    why = cross_site_refusal(HTTPHeaders(headers), HOST, path)
    assert why is not None and "Ray dashboard" in why


@pytest.mark.parametrize("path", ["/", "/worker/cpu_profile", "/api/v0/nodes"])
@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"},
    {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"},
    {"Referer": f"https://{HOST}/user/ada/ray-dashboard/"},
    {"Origin": f"https://{HOST}"},
    {},  # not a browser
    {**IMG, "Authorization": "token abc"},  # a token is no ambient credential
])
def test_the_dashboards_own_pages_and_token_callers_pass(path, headers):
    assert cross_site_refusal(HTTPHeaders(headers), HOST, path) is None


def test_a_link_from_elsewhere_opens_only_the_front_page():
    assert check("/", **LINK) is None
    assert check("/index.html", **LINK) is None
    assert check("/", Referer="https://chat.example/") is None
    assert check("/worker/cpu_profile", **LINK) is not None
    assert check("/", **IMG) is not None  # not a navigation
