"""Watchers of each cloud's interruption notice, read from the instance's own metadata
endpoint (reachable only from the instance, no credentials needed).

Each watcher's :meth:`Watcher.wait` returns the first :class:`Notice` the cloud gives:

* **AWS** (:class:`AWSWatcher`): IMDSv2 (a session token from ``PUT /latest/api/token``,
  sent as ``X-aws-ec2-metadata-token``), polled every few seconds as AWS recommends:
  ``/latest/meta-data/spot/instance-action`` (the two-minute interruption notice,
  ``{"action", "time"}``; 404 until there is one) and
  ``/latest/meta-data/events/recommendations/rebalance`` (an earlier signal that the
  instance is at elevated risk, ``{"noticeTime"}``).
* **GCP** (:class:`GCPWatcher`): ``instance/preempted`` (``TRUE`` once preemption
  began; a spot VM then has about 30 s) and ``instance/maintenance-event``
  (``TERMINATE_ON_HOST_MAINTENANCE``), each held open with ``?wait_for_change=true``
  and ``last_etag``, with ``Metadata-Flavor: Google``.
* **OCI** (:class:`OCIWatcher`): OCI's instance metadata carries no preemption notice
  (reclaiming a preemptible instance is announced only through the Events service, which
  an instance cannot read without credentials). What the instance can see is its own
  lifecycle ``state`` in ``/opc/v2/instance/`` (``Authorization: Bearer Oracle``): the
  watcher polls it and reports the first state other than ``Running`` (``Stopping``,
  ``Terminating``...). The window this leaves is short and not guaranteed.

A metadata endpoint that does not answer is retried at the poll interval (and logged
once); nothing here raises out of :meth:`Watcher.wait` but cancellation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass, field

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

log = logging.getLogger("cloudhop.preempt")

#: each cloud's metadata endpoint on an instance (the base the watcher's paths follow)
DEFAULT_URLS = {
    "aws": "http://169.254.169.254",
    "gcp": "http://metadata.google.internal/computeMetadata/v1",
    "oci": "http://169.254.169.254/opc/v2",
}
#: seconds between polls (AWS recommends 5 s for spot notices)
DEFAULT_INTERVAL = 5.0
#: seconds one GCP wait_for_change request is held open at most
GCP_HOLD_SECONDS = 60


@dataclass(frozen=True)
class Notice:
    """An interruption notice: ``cloud``, ``kind`` (``interruption``, ``rebalance``,
    ``preempted``, ``maintenance``, ``lifecycle``), ``detail`` (the cloud's own words)
    and ``deadline`` (the time the cloud named, when it named one); ``seen`` is when the
    watcher read it (epoch seconds)."""

    cloud: str
    kind: str
    detail: str
    deadline: str | None = None
    seen: float = field(default_factory=time.time)

    def to_json(self) -> dict:
        return asdict(self)


class Watcher:
    """Base: polls :meth:`check` every ``interval`` seconds until it returns a notice."""

    cloud = ""

    def __init__(self, url: str | None = None, interval: float = DEFAULT_INTERVAL):
        self.url = (url or DEFAULT_URLS[self.cloud]).rstrip("/")
        self.interval = interval
        self._failing = False

    async def check(self) -> Notice | None:  # pragma: no cover - every cloud has one
        raise NotImplementedError

    async def wait(self) -> Notice:
        while True:
            notice = await self._guarded(self.check)
            if notice is not None:
                return notice
            await asyncio.sleep(self.interval)

    async def _guarded(self, call):
        """``call()``, or None when the endpoint failed (logged once until it answers)."""
        try:
            result = await call()
        except (HTTPClientError, OSError, ValueError, asyncio.TimeoutError) as err:
            if not self._failing:
                log.warning("Cloudhop: the %s metadata endpoint %s did not answer (%s); retrying",
                            self.cloud, self.url, err)
            self._failing = True
            return None
        if self._failing:
            log.info("Cloudhop: the %s metadata endpoint answers again", self.cloud)
        self._failing = False
        return result

    async def _get(self, path: str, headers: dict, timeout: float = 10) -> tuple[int, str, dict]:
        """``GET`` ``path``: (status, body, headers); a 404 is an answer, not an error."""
        try:
            reply = await AsyncHTTPClient().fetch(HTTPRequest(self.url + path, headers=headers,
                                                              request_timeout=timeout, connect_timeout=5))
        except HTTPClientError as err:
            if err.code == 404:
                return 404, "", {}
            raise
        return reply.code, reply.body.decode(errors="replace"), dict(reply.headers)


class AWSWatcher(Watcher):
    """AWS: ``spot/instance-action`` and ``events/recommendations/rebalance`` (IMDSv2)."""

    cloud = "aws"
    #: seconds the IMDSv2 token lives (it is renewed a minute before)
    TOKEN_TTL = 21600

    def __init__(self, url: str | None = None, interval: float = DEFAULT_INTERVAL, rebalance: bool = True):
        super().__init__(url, interval)
        self.rebalance = rebalance
        self._token: tuple[str, float] | None = None

    async def _session(self) -> str:
        if self._token is None or time.monotonic() > self._token[1]:
            reply = await AsyncHTTPClient().fetch(HTTPRequest(
                self.url + "/latest/api/token", method="PUT", body=b"", request_timeout=10, connect_timeout=5,
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(self.TOKEN_TTL)}))
            self._token = (reply.body.decode().strip(), time.monotonic() + self.TOKEN_TTL - 60)
        return self._token[0]

    async def _read(self, path: str) -> dict | None:
        try:
            status, body, _ = await self._get(path, {"X-aws-ec2-metadata-token": await self._session()})
        except HTTPClientError as err:
            if err.code == 401:  # the token expired early: a new one next time
                self._token = None
            raise
        return json.loads(body) if status == 200 and body.strip() else None

    async def check(self) -> Notice | None:
        action = await self._read("/latest/meta-data/spot/instance-action")
        if action:
            return Notice("aws", "interruption", f"{action.get('action', 'terminate')} at {action.get('time')}",
                          deadline=action.get("time"))
        if self.rebalance:
            advice = await self._read("/latest/meta-data/events/recommendations/rebalance")
            if advice:
                return Notice("aws", "rebalance", f"rebalance recommendation at {advice.get('noticeTime')}",
                              deadline=None)
        return None


class GCPWatcher(Watcher):
    """GCP: ``instance/preempted`` and ``instance/maintenance-event``, each held open
    with ``wait_for_change`` (a change is seen as it happens, not at the next poll)."""

    cloud = "gcp"
    HEADERS = {"Metadata-Flavor": "Google"}
    #: what each watched value reads when the instance is going away
    WATCHED = {"instance/preempted": ("preempted", {"TRUE"}),
               "instance/maintenance-event": ("maintenance", {"TERMINATE_ON_HOST_MAINTENANCE"})}

    async def check(self) -> Notice | None:
        for path, (kind, bad) in self.WATCHED.items():
            status, body, _ = await self._get("/" + path, self.HEADERS)
            if status == 200 and body.strip() in bad:
                return Notice("gcp", kind, f"{path} = {body.strip()}")
        return None

    async def _follow(self, path: str, kind: str, bad: set) -> Notice:
        """Hold ``path`` open until it reads one of ``bad``."""
        etag = None
        while True:
            query = f"?wait_for_change=true&timeout_sec={GCP_HOLD_SECONDS}" + (f"&last_etag={etag}" if etag else "")
            if etag is None:
                query = ""  # the first read answers now: the value as it is

            async def read(url=path + query):
                return await self._get("/" + url, self.HEADERS, timeout=GCP_HOLD_SECONDS + 10)

            got = await self._guarded(read)
            if got is None:
                etag = None
                await asyncio.sleep(self.interval)
                continue
            status, body, headers = got
            if status == 200 and body.strip() in bad:
                return Notice("gcp", kind, f"{path} = {body.strip()}")
            etag = headers.get("Etag") or headers.get("ETag")
            if not etag:  # an endpoint that cannot hold a request open: poll it
                await asyncio.sleep(self.interval)

    async def wait(self) -> Notice:
        tasks = [asyncio.ensure_future(self._follow(p, k, b)) for p, (k, b) in self.WATCHED.items()]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            return next(iter(done)).result()
        finally:
            for t in tasks:
                t.cancel()


class OCIWatcher(Watcher):
    """OCI: the instance's lifecycle ``state`` (no preemption notice exists in OCI's
    instance metadata; see the module)."""

    cloud = "oci"
    HEADERS = {"Authorization": "Bearer Oracle"}
    #: states of an instance that is (still) serving
    SERVING = {"Running", "RUNNING"}

    async def check(self) -> Notice | None:
        status, body, _ = await self._get("/instance/", self.HEADERS)
        if status != 200:
            return None
        state = json.loads(body).get("state")
        if state and state not in self.SERVING:
            return Notice("oci", "lifecycle", f"instance state {state}")
        return None


WATCHERS = {w.cloud: w for w in (AWSWatcher, GCPWatcher, OCIWatcher)}


def watcher_for(cloud: str, url: str | None = None, interval: float = DEFAULT_INTERVAL) -> Watcher | None:
    """The watcher of ``cloud`` (None for a provider without spot notices, e.g. local)."""
    kind = WATCHERS.get(cloud)
    return kind(url, interval) if kind else None
