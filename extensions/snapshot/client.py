"""HTTP client of the hub's snapshot store (``cloudhop.hub.snapshot_store``).

Synchronous (``requests``); async callers run it in a thread. The hub token goes only
to the store's own URL: presigned bucket URLs handed out by the store are used bare.
The chunk pack, the restore report and the limits the store keeps (chunk, manifest and
pack sizes, ids per request) are defined in :mod:`.protocol`; this client stays inside
them.
"""

from __future__ import annotations

import json
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator
from urllib.parse import quote, urljoin

import requests

from .chunking import hash_bytes
from .protocol import MANIFEST_MAX, MAX_IDS, PACK_IDS, RestoreReport, encode_pack, iter_pack

#: chunk ids per has/missing query (at most the store's MAX_IDS), bytes per uploaded pack
#: (and per batch of presigned uploads)
QUERY_BATCH = min(2000, MAX_IDS)
PACK_BYTES = 16 << 20


class StoreError(RuntimeError):
    """The store refused a request or sent something that does not check out."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def bounded_map(pool: ThreadPoolExecutor, fn, items, depth: int) -> Iterator:
    """Like ``pool.map`` but lazy: at most ``depth`` items are in flight or waiting to be
    consumed, so a large workspace never sits in memory at once. Results keep order."""
    inflight: deque = deque()
    for item in items:
        inflight.append(pool.submit(fn, item))
        if len(inflight) >= depth:
            yield inflight.popleft().result()
    while inflight:
        yield inflight.popleft().result()


class StoreClient:
    """One user's view of the snapshot store.

    ``base_url`` is the store service's URL (``.../services/cloudhop-store/``), ``user``
    the JupyterHub user name, ``token`` a token the hub issued to that user (a server's
    ``JUPYTERHUB_API_TOKEN``) with access to the store service.
    """

    def __init__(self, base_url: str, user: str, token: str, *, timeout: float = 120, workers: int = 4):
        self.base_url = base_url.rstrip("/") + "/"
        self.user = user
        self.timeout = timeout
        self.workers = workers
        self._token = token
        self._session = requests.Session()

    # -- plumbing ---------------------------------------------------------------------
    def _url(self, path: str) -> str:
        return urljoin(self.base_url, f"api/users/{quote(self.user, safe='')}/{path}")

    def _request(self, method: str, url: str, **kw) -> requests.Response:
        headers = kw.pop("headers", {}) or {}
        if url.startswith(self.base_url):
            headers["Authorization"] = f"token {self._token}"
        try:
            resp = self._session.request(method, url, headers=headers, timeout=self.timeout, **kw)
        except requests.RequestException as err:
            raise StoreError(f"snapshot store unreachable: {type(err).__name__}") from err
        if resp.status_code >= 400:
            reason = resp.reason
            try:
                reason = resp.json().get("message") or reason
            except ValueError:
                pass
            raise StoreError(f"snapshot store: {resp.status_code} {reason}", resp.status_code)
        return resp

    def _json(self, method: str, path: str, body=None) -> dict:
        resp = self._request(method, self._url(path), data=None if body is None else json.dumps(body),
                             headers={"Content-Type": "application/json"})
        return resp.json() if resp.content else {}

    # -- chunks -----------------------------------------------------------------------
    def missing(self, ids: list[str]) -> tuple[list[str], dict]:
        """Which of ``ids`` the store lacks, and where to send them.

        Returns ``(missing, upload)``; ``upload`` is ``{"kind": "pack", "url": ...}`` (send
        packs there) or ``{"kind": "presigned", "url": ...}`` (ask there for upload URLs,
        each signed for one chunk's length; :meth:`upload` does)."""
        missing: list[str] = []
        upload: dict = {}
        for i in range(0, len(ids), QUERY_BATCH):
            reply = self._json("POST", "chunks/missing", {"ids": ids[i:i + QUERY_BATCH]})
            missing += reply["missing"]
            upload = reply.get("upload") or upload
        return missing, upload

    def upload_urls(self, upload: dict, sizes: dict[str, int]) -> dict[str, str]:
        """Presigned upload URLs for chunks of the given lengths (``upload`` from
        :meth:`missing`); each takes a body of exactly that many bytes."""
        urls: dict[str, str] = {}
        items = list(sizes.items())
        for i in range(0, len(items), QUERY_BATCH):
            part = items[i:i + QUERY_BATCH]
            reply = self._request("POST", urljoin(self.base_url, upload["url"]),
                                  data=json.dumps({"ids": [c for c, _ in part], "sizes": [n for _, n in part]}),
                                  headers={"Content-Type": "application/json"}).json()
            urls.update(reply["urls"])
        return urls

    def upload(self, ids: list[str], read: Callable[[str], bytes], upload: dict,
               on_sent: Callable[[int], None] | None = None) -> int:
        """Send the chunks ``ids`` (``read(id)`` returns the bytes) to ``upload``'s targets;
        returns the bytes sent."""
        if not ids:
            return 0
        sent = 0

        def packs():
            batch, size = [], 0
            for cid in ids:
                data = read(cid)
                batch.append((cid, data))
                size += len(data)
                if size >= PACK_BYTES or len(batch) >= MAX_IDS:
                    yield batch, size
                    batch, size = [], 0
            if batch:
                yield batch, size

        if upload.get("kind") == "presigned":
            with ThreadPoolExecutor(self.workers) as puts, ThreadPoolExecutor(2) as batches:

                def put(item):
                    (cid, data), url = item
                    # requests sends Content-Length: len(data), the length the URL is signed for
                    self._request("PUT", url, data=data)

                def send(item):
                    batch, size = item
                    urls = self.upload_urls(upload, {cid: len(data) for cid, data in batch})
                    list(puts.map(put, [(c, urls[c[0]]) for c in batch]))
                    return size

                # reading the next batch overlaps sending the previous one
                for n in bounded_map(batches, send, packs(), 2):
                    sent += n
                    if on_sent:
                        on_sent(n)
            return sent
        url = urljoin(self.base_url, upload["url"])

        def post(item):
            batch, size = item
            try:
                self._request("POST", url, data=encode_pack(batch),
                              headers={"Content-Type": "application/octet-stream"})
            except StoreError as err:
                if err.status == 400 and "does not match" in str(err):
                    raise StoreError("a file changed while it was being snapshotted; try again", 409) from None
                raise
            return size

        # reading the next pack overlaps sending the previous one; at most two in memory
        with ThreadPoolExecutor(2) as pool:
            for n in bounded_map(pool, post, packs(), 2):
                sent += n
                if on_sent:
                    on_sent(n)
        return sent

    def download(self, ids: list[str], on_chunk: Callable[[str, memoryview], None]) -> None:
        """Fetch ``ids``; calls ``on_chunk(id, data)`` for each after checking its hash
        (in this thread, so the callback need not be thread-safe)."""
        for i in range(0, len(ids), QUERY_BATCH):
            batch = ids[i:i + QUERY_BATCH]
            target = self._json("POST", "chunks/download", {"ids": batch})
            if target.get("kind") == "presigned":
                urls = target["urls"]
                with ThreadPoolExecutor(self.workers) as pool:
                    fetched = bounded_map(pool, lambda c: (c, self._request("GET", urls[c]).content),
                                          batch, self.workers * 2)
                    for cid, data in fetched:
                        self._check(cid, data)
                        on_chunk(cid, memoryview(data))
                continue
            url = urljoin(self.base_url, target["url"])
            # packs of PACK_IDS chunks (within the store's PACK_MAX whatever their sizes);
            # the next one downloads while this one is written
            parts = [batch[j:j + PACK_IDS] for j in range(0, len(batch), PACK_IDS)]

            def fetch(part):
                return part, self._request("POST", url, data=json.dumps({"ids": part}),
                                           headers={"Content-Type": "application/json"}).content

            with ThreadPoolExecutor(2) as pool:
                for part, body in bounded_map(pool, fetch, parts, 2):
                    got = set()
                    for cid, data in iter_pack(body):
                        self._check(cid, data)
                        got.add(cid)
                        on_chunk(cid, data)
                    if got != set(part):
                        raise StoreError(f"snapshot store did not return {len(set(part) - got)} chunk(s)")

    @staticmethod
    def _check(cid: str, data) -> None:
        if hash_bytes(data) != cid:
            raise StoreError(f"chunk {cid[:12]}... failed its checksum")

    # -- snapshots --------------------------------------------------------------------
    def put_manifest(self, manifest_json: bytes) -> str:
        """Store a manifest whose chunks are all uploaded; returns the new snapshot id."""
        if len(manifest_json) > MANIFEST_MAX:
            raise StoreError(f"the snapshot's manifest is {len(manifest_json)} bytes; the store keeps "
                             f"manifests of at most {MANIFEST_MAX} bytes (about 400,000 chunks): "
                             "leave large folders out of the snapshot", 413)
        resp = self._request("POST", self._url("snapshots"), data=manifest_json,
                             headers={"Content-Type": "application/json"})
        return resp.json()["id"]

    def get_manifest(self, snapshot_id: str) -> bytes:
        return self._request("GET", self._url(f"snapshots/{quote(snapshot_id, safe='')}")).content

    def list_snapshots(self, server: str | None = None) -> list[dict]:
        """The snapshots this token may use, newest first (only ``server``'s line when
        given: ``""`` for the default server), each a summary (``id``, ``created``,
        ``bytes``, ``kind``, ``source``, ``kernels``...)."""
        query = "" if server is None else f"?server={quote(server, safe='')}"
        return self._json("GET", f"snapshots{query}")["snapshots"]

    def delete_snapshot(self, snapshot_id: str) -> None:
        """Delete one of the user's snapshots (a token for all of them only); its chunks go
        at the store's next collection."""
        self._request("DELETE", self._url(f"snapshots/{quote(snapshot_id, safe='')}"))

    def put_report(self, snapshot_id: str, report: RestoreReport) -> None:
        """Keep a restore report beside a snapshot (the target writes it, the source reads it)."""
        self._request("PUT", self._url(f"snapshots/{quote(snapshot_id, safe='')}/report"),
                      data=report.encode(), headers={"Content-Type": "application/json"})

    def get_report(self, snapshot_id: str) -> RestoreReport | None:
        """The snapshot's restore report, checked (None while there is none); raises
        :class:`~.protocol.ReportError` for one that does not check out."""
        try:
            body = self._request("GET", self._url(f"snapshots/{quote(snapshot_id, safe='')}/report")).content
        except StoreError as err:
            if err.status == 404:
                return None
            raise
        return RestoreReport.decode(body)

    def close(self) -> None:
        self._session.close()
