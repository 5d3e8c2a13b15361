"""A stand-in for S3's check of presigned URLs, in front of moto (which serves presigned
URLs without checking their signatures).

:class:`PresignCheck` is an HTTP proxy: a request carrying a query-string signature
(``X-Amz-Signature``, a presigned URL) is checked as S3 checks it - AWS Signature
Version 4 over the method, path, query and the *signed headers as this request sends
them* (so a body of another length than a signed ``content-length`` fails), and the
expiry - and refused with S3's ``403 SignatureDoesNotMatch`` / ``AccessDenied`` when it
does not hold; everything else (boto3's own header-signed calls) goes to moto as it is.
Written from the SigV4 specification, not with botocore's signer.

:func:`checked_bucket` starts moto behind one and yields a boto3 client of a fresh bucket.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import http.client
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, urlsplit

import requests


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def presigned_error(method: str, raw_path: str, headers, secret: str, now: float | None = None) -> str | None:
    """Why S3 would refuse this presigned request (``None``: it would take it)."""
    path, _, query = raw_path.partition("?")
    params = parse_qsl(query, keep_blank_values=True)
    given = dict(params)
    signature = given.get("X-Amz-Signature", "")
    scope = given.get("X-Amz-Credential", "").split("/", 1)[-1]
    date = given.get("X-Amz-Date", "")
    signed = given.get("X-Amz-SignedHeaders", "")
    expires = int(given.get("X-Amz-Expires", "0"))
    start = calendar.timegm(time.strptime(date, "%Y%m%dT%H%M%SZ"))
    if (now or time.time()) > start + expires:
        return "AccessDenied: Request has expired"
    encode = lambda text: quote(text, safe="-_.~")  # noqa: E731
    canonical_query = "&".join(sorted(f"{encode(k)}={encode(v)}" for k, v in params if k != "X-Amz-Signature"))
    canonical_headers = "".join(f"{h}:{' '.join((headers.get(h) or '').split())}\n" for h in signed.split(";"))
    canonical = "\n".join([method, path, canonical_query, canonical_headers, signed, "UNSIGNED-PAYLOAD"])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in scope.split("/"):
        key = _hmac(key, part)
    if not hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), signature):
        return "SignatureDoesNotMatch: The request signature we calculated does not match the signature you provided"
    return None


class PresignCheck:
    """``PresignCheck(upstream_url, secret).start()`` -> the proxy's URL; ``stop()``."""

    def __init__(self, upstream: str, secret: str):
        self.upstream = urlsplit(upstream).netloc
        self.secret = secret
        self.refused: list[str] = []

    def start(self) -> str:
        check = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_one(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if "X-Amz-Signature=" in self.path:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    error = presigned_error(self.command, self.path, headers, check.secret)
                    if error:
                        check.refused.append(error)
                        code, message = error.split(": ", 1)
                        reply = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                                 f"<Message>{message}</Message></Error>").encode()
                        self.send_response(403)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(reply)))
                        self.end_headers()
                        self.wfile.write(reply)
                        return
                conn = http.client.HTTPConnection(check.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(k, v)
                # a HEAD's reply tells the object's length, with no body
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_one

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def checked_bucket(monkeypatch, bucket: str = "snaps"):
    """A moto S3 server behind a :class:`PresignCheck`, with moto's test credentials in
    the environment; yields a boto3 client (SigV4) that has created ``bucket``. Moto's
    buckets live as long as the process, so they are reset before and after."""
    import boto3
    from botocore.config import Config
    from moto.server import ThreadedMotoServer

    from store_double import free_port

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    reset = f"http://127.0.0.1:{port}/moto-api/reset"
    requests.post(reset)
    check = PresignCheck(f"http://127.0.0.1:{port}", "testing")
    try:
        s3 = boto3.client("s3", endpoint_url=check.start(), region_name="us-east-1",
                          config=Config(signature_version="s3v4"))
        s3.create_bucket(Bucket=bucket)
        yield s3
    finally:
        requests.post(reset)
        check.stop()
        server.stop()
