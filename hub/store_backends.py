"""Where the snapshot store keeps chunks and manifests.

Each user has a namespace of their own (``users/u-<quoted name>/``): chunks are never
shared between users, so one user cannot learn whether another holds some content. The
one exception are class snapshots (:mod:`.snapshot_classes`): a publication's namespace
(``/class/<id>``; no hub user name holds a ``/``) whose chunks the users the class is
shared with borrow once they started from it.

A backend is synchronous (the service calls it in a thread). Two kinds:

* :class:`LocalBackend` - a directory on the hub; chunks flow through the service.
* :class:`S3Backend` - any S3-compatible bucket through boto3; chunks go straight
  between the user's server and the bucket through presigned URLs for keys under that
  user's prefix, an upload's URL signed for the chunk's exact length. The credentials
  stay in the service's environment.

Cloud SDKs: among Cloudhop's products only the provider modules
(``spawner/providers/``) import one, each its own cloud's. :class:`S3Backend` is the
one exception, and on purpose: it stores snapshots, it launches nothing, and it talks
to any S3-compatible service (MinIO, Ceph, a cloud's bucket) with the store service's
own credentials, not a provider's. It imports boto3/botocore lazily, in its methods,
so a hub without the ``aws`` extra runs the local backend.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator
from urllib.parse import quote

from cloudhop.spawner.schema import SNAPSHOT as _SNAPSHOT

_CHUNK = re.compile(r"^[0-9a-f]{64}$")


class BackendError(ValueError):
    """A request names something malformed (status 400) or missing (404)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def user_dir(user: str) -> str:
    """A user's namespace: the quoted name never contains ``/`` and never is ``..``."""
    return "u-" + quote(user, safe="")


def check_chunk_id(cid) -> str:
    if not isinstance(cid, str) or not _CHUNK.fullmatch(cid):
        raise BackendError(f"chunk id {str(cid)[:80]!r} is not 64 hex digits")
    return cid


def check_snapshot_id(sid) -> str:
    if not isinstance(sid, str) or not _SNAPSHOT.fullmatch(sid):
        raise BackendError(f"snapshot id {str(sid)[:80]!r} is not valid")
    return sid


def new_snapshot_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


def manifest_chunk_ids(body: bytes) -> tuple[dict, set[str]]:
    """Parse a manifest just enough to know which chunks it needs."""
    try:
        data = json.loads(body)
        files = data["files"]
        ids = {check_chunk_id(c) for f in files for c, _ in f["chunks"]}
    except (ValueError, KeyError, TypeError, RecursionError) as err:  # RecursionError: nested too deep
        raise BackendError(f"not a snapshot manifest: {err}") from err
    if data.get("version") != 1:
        raise BackendError("not a version 1 snapshot manifest")
    return data, ids


class Backend:
    """Interface (see the module docstring). ``user`` is an authenticated hub user name."""

    #: True when chunks are uploaded and downloaded through the service itself
    through_service = True

    def missing(self, user: str, ids: list[str]) -> list[str]:
        raise NotImplementedError

    def upload_target(self, user: str, ids: list[str], service_url: str) -> dict:
        """Where the client sends missing chunks: ``{"kind": "pack", "url"}`` (a chunk
        pack, to the service) or ``{"kind": "presigned", "url"}`` (where the client asks
        for the upload URLs, giving each chunk's length: :meth:`presign_uploads`)."""
        return {"kind": "pack", "url": f"{service_url}api/users/{quote(user, safe='')}/chunks"}

    def presign_uploads(self, user: str, sizes: dict[str, int]) -> dict:
        """``{"kind": "presigned", "urls": {id: url}}``: one upload URL per chunk, each
        valid only for a body of exactly ``sizes[id]`` bytes (presigned backends only)."""
        raise NotImplementedError

    def download_target(self, user: str, ids: list[str], service_url: str) -> dict:
        return {"kind": "pack", "url": f"{service_url}api/users/{quote(user, safe='')}/chunks/pack"}

    def put_chunk(self, user: str, cid: str, data) -> None:
        raise NotImplementedError

    def get_chunk(self, user: str, cid: str) -> bytes:
        raise NotImplementedError

    def chunk_size(self, user: str, cid: str) -> int:
        """A stored chunk's length; raises BackendError(404) when missing (backends that
        serve chunks through the service)."""
        raise NotImplementedError

    def sizes(self, user: str) -> Iterator[tuple[str, int]]:
        """``(name, bytes)`` of every object in ``user``'s namespace (a chunk's name is
        its id); what the user's quota counts (:mod:`.store_quota`)."""
        raise NotImplementedError

    def put_object(self, user: str, name: str, body: bytes) -> None:
        raise NotImplementedError

    def get_object(self, user: str, name: str) -> bytes:
        """Raises BackendError(404) when missing."""
        raise NotImplementedError

    def list_objects(self, user: str, suffix: str) -> list[str]:
        raise NotImplementedError

    def delete_object(self, user: str, name: str) -> None:
        """Remove an object; one already gone is no error."""
        raise NotImplementedError

    def list_chunks(self, user: str) -> Iterator[tuple[str, int, float]]:
        """``(id, bytes, modified)`` of every chunk in ``user``'s namespace (``modified``:
        Unix time it was stored), for garbage collection (:mod:`.snapshot_gc`)."""
        raise NotImplementedError

    def delete_chunks(self, user: str, ids: list[str]) -> None:
        """Remove chunks; those already gone are no error."""
        raise NotImplementedError

    def copy_chunks(self, src: str, dst: str, ids: list[str]) -> None:
        """Put ``src``'s chunks ``ids`` into ``dst``'s namespace, inside the store (a class
        snapshot's publication, :mod:`.snapshot_classes`); those ``dst`` has are kept."""
        raise NotImplementedError


class LocalBackend(Backend):
    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        os.makedirs(self.root, mode=0o700, exist_ok=True)

    def _chunk_path(self, user: str, cid: str) -> str:
        return os.path.join(self.root, "users", user_dir(user), "chunks", cid[:2], check_chunk_id(cid))

    def _object_path(self, user: str, name: str) -> str:
        return os.path.join(self.root, "users", user_dir(user), "snapshots", name)

    def missing(self, user, ids):
        return [c for c in ids if not os.path.exists(self._chunk_path(user, c))]

    @staticmethod
    def _write(path: str, data) -> None:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        temp = f"{path}.{secrets.token_hex(4)}.tmp"
        with open(temp, "wb") as f:
            f.write(data)
        os.replace(temp, path)

    def put_chunk(self, user, cid, data):
        path = self._chunk_path(user, cid)
        if not os.path.exists(path):
            self._write(path, data)

    def get_chunk(self, user, cid):
        try:
            with open(self._chunk_path(user, cid), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise BackendError(f"chunk {cid[:12]}... not found", 404) from None

    def chunk_size(self, user, cid):
        try:
            return os.stat(self._chunk_path(user, cid)).st_size
        except FileNotFoundError:
            raise BackendError(f"chunk {cid[:12]}... not found", 404) from None

    def sizes(self, user):
        for folder, _, names in os.walk(os.path.join(self.root, "users", user_dir(user))):
            for name in names:
                try:
                    yield name, os.lstat(os.path.join(folder, name)).st_size
                except FileNotFoundError:  # a temporary file renamed meanwhile
                    continue

    def put_object(self, user, name, body):
        self._write(self._object_path(user, name), body)

    def get_object(self, user, name):
        try:
            with open(self._object_path(user, name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise BackendError(f"{name} not found", 404) from None

    def list_objects(self, user, suffix):
        try:
            names = os.listdir(os.path.join(self.root, "users", user_dir(user), "snapshots"))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.endswith(suffix))

    def delete_object(self, user, name):
        try:
            os.unlink(self._object_path(user, name))
        except FileNotFoundError:
            pass

    def list_chunks(self, user):
        top = os.path.join(self.root, "users", user_dir(user), "chunks")
        for folder, _, names in os.walk(top):
            for name in names:
                if not _CHUNK.fullmatch(name):  # a temporary file of a write under way
                    continue
                try:
                    st = os.stat(os.path.join(folder, name))
                except FileNotFoundError:
                    continue
                yield name, st.st_size, st.st_mtime

    def delete_chunks(self, user, ids):
        for cid in ids:
            try:
                os.unlink(self._chunk_path(user, cid))
            except FileNotFoundError:
                pass

    def copy_chunks(self, src, dst, ids):
        for cid in ids:
            target = self._chunk_path(dst, cid)
            if os.path.exists(target):
                continue
            os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
            temp = f"{target}.{secrets.token_hex(4)}.tmp"
            try:
                os.link(self._chunk_path(src, cid), temp)  # same disk: no second copy
            except FileNotFoundError:
                raise BackendError(f"chunk {cid[:12]}... not found", 404) from None
            except OSError:
                self._write(target, self.get_chunk(src, cid))
                continue
            os.replace(temp, target)


class S3Backend(Backend):
    """Chunks at ``{prefix}users/u-<user>/chunks/<id>``; manifests beside them.

    ``client`` is a boto3 S3 client made from the service's own credentials."""

    through_service = False

    def __init__(self, client, bucket: str, prefix: str = "", expires: int = 3600, workers: int = 16):
        self.s3 = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.expires = expires
        self.workers = workers

    @classmethod
    def from_env(cls, env=os.environ) -> "S3Backend":
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=env.get("CLOUDHOP_STORE_S3_ENDPOINT") or None,
            region_name=env.get("CLOUDHOP_STORE_S3_REGION") or None,
            config=Config(signature_version="s3v4", retries={"mode": "standard"}),
        )
        return cls(client, env["CLOUDHOP_STORE_S3_BUCKET"], env.get("CLOUDHOP_STORE_S3_PREFIX", ""))

    def _key(self, user: str, kind: str, name: str) -> str:
        return f"{self.prefix}users/{user_dir(user)}/{kind}/{name}"

    def missing(self, user, ids):
        from botocore.exceptions import ClientError

        def absent(cid):
            try:
                self.s3.head_object(Bucket=self.bucket, Key=self._key(user, "chunks", check_chunk_id(cid)))
                return False
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return True
                raise

        with ThreadPoolExecutor(self.workers) as pool:
            return [c for c, gone in zip(ids, pool.map(absent, ids)) if gone]

    def _presign(self, method: str, user: str, ids: list[str], sizes: dict[str, int] | None = None) -> dict:
        def params(cid):
            out = {"Bucket": self.bucket, "Key": self._key(user, "chunks", check_chunk_id(cid))}
            if sizes is not None:
                # signed: the bucket refuses a body of any other length
                out["ContentLength"] = sizes[cid]
            return out

        return {
            "kind": "presigned",
            "urls": {c: self.s3.generate_presigned_url(method, Params=params(c), ExpiresIn=self.expires)
                     for c in ids},
        }

    def upload_target(self, user, ids, service_url):
        return {"kind": "presigned", "url": f"{service_url}api/users/{quote(user, safe='')}/chunks/uploads"}

    def presign_uploads(self, user, sizes):
        return self._presign("put_object", user, list(sizes), sizes)

    def download_target(self, user, ids, service_url):
        return self._presign("get_object", user, ids)

    def sizes(self, user):
        prefix = f"{self.prefix}users/{user_dir(user)}/"
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"].rsplit("/", 1)[-1], item["Size"]

    def put_object(self, user, name, body):
        self.s3.put_object(Bucket=self.bucket, Key=self._key(user, "snapshots", name), Body=body)

    def get_object(self, user, name):
        from botocore.exceptions import ClientError

        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._key(user, "snapshots", name))["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise BackendError(f"{name} not found", 404) from None
            raise

    def delete_object(self, user, name):
        self.s3.delete_object(Bucket=self.bucket, Key=self._key(user, "snapshots", name))

    def list_chunks(self, user):
        prefix = self._key(user, "chunks", "")
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                name = item["Key"][len(prefix):]
                if _CHUNK.fullmatch(name):
                    yield name, item["Size"], item["LastModified"].timestamp()

    def delete_chunks(self, user, ids):
        keys = [{"Key": self._key(user, "chunks", check_chunk_id(c))} for c in ids]
        for i in range(0, len(keys), 1000):  # the most one DeleteObjects request takes
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[i:i + 1000], "Quiet": True})

    def copy_chunks(self, src, dst, ids):
        have = set(ids) - set(self.missing(dst, ids))

        def copy(cid):
            self.s3.copy_object(Bucket=self.bucket, Key=self._key(dst, "chunks", cid),
                                CopySource={"Bucket": self.bucket, "Key": self._key(src, "chunks", cid)})

        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(copy, [c for c in ids if c not in have]))

    def list_objects(self, user, suffix):
        prefix = self._key(user, "snapshots", "")
        names = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            names += [o["Key"][len(prefix):] for o in page.get("Contents", [])]
        return sorted(n for n in names if n.endswith(suffix))
