"""Refuse the Ray dashboard's requests that a page on another site made the browser send.

The Ray dashboard is proxied under the user's server (``ray-dashboard/``), so the
user's cookies authenticate it. Its API acts on GET too: ``/worker/cpu_profile``,
``/worker/gpu_profile``, ``/memory_profile``, ``/task/traceback`` attach profilers to the
user's processes, ``/api/v0/delay/{s}`` holds a request open, and the log endpoints
stream the user's logs. XSRF tokens cover only non-GET requests
(:class:`cloudhop.extensions.ray_api.XsrfCheckedProxy`); an ``<img>``, ``<script>``,
``<iframe>`` or link on another site still sends a GET with the cookies. So a request
to the dashboard is refused (403, before it is authenticated or proxied) when the
browser says it came from elsewhere (:func:`cross_site_refusal`):

* ``Sec-Fetch-Site`` (every current browser sends it): ``same-origin`` and ``none``
  (typed, a bookmark) pass; ``same-site`` and ``cross-site`` pass only for a top-level
  navigation (``Sec-Fetch-Mode: navigate``, ``Sec-Fetch-Dest: document``) to the
  dashboard's front page, which only reads: a link to the dashboard from a chat or
  another site keeps working, a link to one of its actions does not;
* without it (an older browser): an ``Origin`` or ``Referer`` naming another host than
  the request's is refused, but for that front-page navigation;
* a request with ``Authorization`` (a token: ``ray job submit``, scripts) is never a
  browser's ambient credential, and passes; so does a request with none of these
  headers (not a browser).

The dashboard's own pages fetch with ``same-origin``, so the dashboard keeps working.
"""

from __future__ import annotations

from urllib.parse import urlsplit

#: the dashboard paths a top-level navigation from another site may open (they only read)
FRONT_PAGES = ("/", "/index.html")


def _host_of(url: str) -> str | None:
    try:
        return urlsplit(url).netloc.lower() or None
    except ValueError:
        return None


def cross_site_refusal(headers, host: str, path: str) -> str | None:
    """Why the request with ``headers`` (a case-insensitive mapping, as tornado's), sent
    to ``host`` (its ``Host``) for the dashboard path ``path`` (as Ray's router reads it:
    :func:`cloudhop.extensions.ray_api.dashboard_path`), must be refused as cross-site;
    None when it may pass."""
    if headers.get("Authorization"):
        return None
    front_page_navigation = (
        path in FRONT_PAGES
        and headers.get("Sec-Fetch-Mode", "navigate") == "navigate"
        and headers.get("Sec-Fetch-Dest", "document") == "document"
    )
    site = (headers.get("Sec-Fetch-Site") or "").strip().lower()
    if site:
        if site in ("same-origin", "none") or front_page_navigation:
            return None
        return (f"a {site} request to the Ray dashboard is refused (Sec-Fetch-Site); "
                "open the dashboard from your server's own pages")
    own = (host or "").lower()
    for name in ("Origin", "Referer"):
        value = headers.get(name)
        if value and _host_of(value) == own:
            continue
        if value and not front_page_navigation:
            return (f"a request to the Ray dashboard from another site is refused ({name}); "
                    "open the dashboard from your server's own pages")
    return None
