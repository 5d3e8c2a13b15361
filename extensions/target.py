"""A move's source speaking to its target server's own API, through the hub's proxy.

A move launches its target while the snapshot is still being taken, so the target starts
with nothing to restore (``"restore": "none"``); once the snapshot is stored, the source
asks the target to restore it (``POST {target}/cloudhop/api/restore``) and waits for the
end of that restore with long requests (``GET ...?wait=S``, answered the moment it ends:
no polling; each shorter than a proxy allows, then asked again). Both calls carry the move's token, which may use the one target server's
API (:func:`cloudhop.hub.tokens_api.move_scopes`).
"""

from __future__ import annotations

import json
import os
import time

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

#: seconds one long request waits for the restore to end (the target answers by then);
#: well below what a proxy lets a request take (the Python port of the hub's proxy gives
#: up after 20 s: cloudhop.hub.proxy)
WAIT = 10


def default_proxy_url(env=os.environ) -> str:
    """The hub's proxy as a server reaches it: ``$JUPYTERHUB_PUBLIC_URL``, else the
    store's URL the hub announced (``$CLOUDHOP_STORE_URL``, one of the proxy's routes)
    less the service's path; "" when neither is known."""
    if env.get("JUPYTERHUB_PUBLIC_URL"):
        return env["JUPYTERHUB_PUBLIC_URL"].rstrip("/")
    head, sep, _ = env.get("CLOUDHOP_STORE_URL", "").partition("/services/")
    return head.rstrip("/") if sep else ""


class TargetError(RuntimeError):
    """The target's API refused or could not be reached; ``status`` is the HTTP status
    (None when nothing answered, 599 for a timeout)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Target:
    """The API of the target server at ``url`` (its path, ``/user/<name>/<server>/``)
    below ``proxy_url``, called with the move's ``token``."""

    def __init__(self, proxy_url: str, url: str, token: str):
        self.base = proxy_url.rstrip("/") + "/" + url.strip("/") + "/cloudhop/api/restore"
        self.token = token

    async def _call(self, method: str, query: str = "", body: dict | None = None, timeout: float = 60) -> dict:
        req = HTTPRequest(self.base + query, method=method, request_timeout=timeout,
                          headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
                          body=None if body is None else json.dumps(body))
        try:
            resp = await AsyncHTTPClient().fetch(req)
        except HTTPClientError as err:
            message = err.message
            if err.response is not None and err.response.body:
                try:
                    message = json.loads(err.response.body).get("message") or message
                except (ValueError, AttributeError):
                    pass
            raise TargetError(f"the target answered {err.code} {message}", err.code) from None
        except OSError as err:
            raise TargetError(f"the target is out of reach ({err})") from None
        try:
            return json.loads(resp.body)
        except ValueError:
            raise TargetError("the target's answer is not JSON") from None

    async def restore(self, snapshot_id: str) -> None:
        """Ask the target to restore ``snapshot_id`` now."""
        await self._call("POST", body={"snapshot": snapshot_id})

    async def wait_restored(self, timeout: float) -> dict:
        """The target's restore report once its restore has ended (``done`` or
        ``failed``); TimeoutError after ``timeout`` seconds, TargetError when the target
        stops answering."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            wait = min(WAIT, left)
            report = await self._call("GET", f"?wait={wait:.1f}", timeout=wait + 30)
            if report.get("state") != "restoring":
                return report
        raise TimeoutError(f"the target did not finish restoring in {timeout:.0f} s")
