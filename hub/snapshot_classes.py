"""Class snapshots: a snapshot published under a name for a group (or everyone) to start from.

Publishing ``week3`` copies the publisher's snapshot into a *publication*, a namespace of
its own in the store (``/class/<publication id>``: no hub user name holds a ``/``, so no
user's namespace is ever one): its manifest and its chunks (a hard link on the local
backend, a copy inside the bucket on S3), once. The class's *record*, in the namespace
``/classes``, names the publication, the publisher and who may start from it (``"all"``
or ``"group:<name>"``). Republishing a name needs ``replace`` and makes a new publication;
revoking deletes the record and the publication's manifest.

A student who starts from ``class:week3`` gets *their own copy*: a manifest in their own
namespace (``meta.kind = "class"``, ``meta.class``), in their server's line, whose
chunks stay in the publication (the summary's ``borrows``; the user's ``borrows.json``
lists the publications they read chunks from). So 30 students add 30 manifests, not 30
copies of the chunks, and a later snapshot of the student's server sends only what
changed. A publication's chunks live as long as its manifest or any manifest that
borrows from it (:func:`marks`): replacing or revoking a class never breaks a student's
copy. Everything here is synchronous, over a :class:`~.store_backends.Backend`; the store
service (:mod:`.snapshot_keeper`) runs it in a thread under its locks.
"""

from __future__ import annotations

import json
import re
import time

from .snapshot_line import list_snapshots, meta_server, summarize, write_summary
from .store_backends import Backend, BackendError, manifest_chunk_ids, new_snapshot_id

#: the namespace of class records
CLASSES = "/classes"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
GROUP = re.compile(r"^group:[^\s/]{1,255}$")
BORROWS = "borrows.list"
BORROWERS = "borrowers.list"
PUBLICATIONS = "publications.list"


class ClassError(ValueError):
    """A refused class request; ``status`` is its HTTP status, the message names the field."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def publication_ns(pub: str) -> str:
    return f"/class/{pub}"


def check_name(name) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ClassError(f"name: {str(name)[:80]!r} is not a class snapshot name (letters, digits, "
                         "'.', '_', '-', at most 64, starting with a letter or digit)")
    return name


def check_share(share) -> str:
    if share == "all" or (isinstance(share, str) and GROUP.fullmatch(share)):
        return share
    raise ClassError(f"share: {str(share)[:80]!r} must be 'all' or 'group:<group name>'")


def visible(record: dict, groups) -> bool:
    """Whether a user in ``groups`` may start from the class of ``record``."""
    share = record.get("share")
    return share == "all" or (isinstance(share, str) and share.startswith("group:")
                              and share[len("group:"):] in set(groups))


def _read_json(backend: Backend, ns: str, name: str, default=None):
    try:
        return json.loads(backend.get_object(ns, name))
    except BackendError as err:
        if err.status == 404:
            return default
        raise


def get_record(backend: Backend, name: str) -> dict | None:
    return _read_json(backend, CLASSES, f"{check_name(name)}.class")


def list_records(backend: Backend) -> list[dict]:
    out = [_read_json(backend, CLASSES, n) for n in backend.list_objects(CLASSES, ".class")]
    return sorted((r for r in out if r), key=lambda r: r["name"])


def borrows(backend: Backend, user: str) -> list[str]:
    """The publications (namespaces) ``user`` reads chunks from."""
    return list(_read_json(backend, user, BORROWS, []))


def _add(backend: Backend, ns: str, name: str, item: str) -> None:
    items = list(_read_json(backend, ns, name, []))
    if item not in items:
        backend.put_object(ns, name, json.dumps(items + [item]).encode())


def locate(backend: Backend, user: str, ids: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Where ``user``'s chunks ``ids`` are: ``({namespace: ids}, missing)``, looking in the
    user's own namespace first, then in the publications they borrow from."""
    found: dict[str, list[str]] = {}
    rest = list(ids)
    for ns in [user, *borrows(backend, user)]:
        if not rest:
            break
        gone = set(backend.missing(ns, rest))
        here = [c for c in rest if c not in gone]
        if here:
            found[ns] = here
        rest = [c for c in rest if c in gone]
    return found, rest


def publish(backend: Backend, owner: str, sid: str, name: str, share: str, *, replace: bool,
            admin: bool = False) -> dict:
    """Publish ``owner``'s snapshot ``sid`` as class ``name``; the new record."""
    check_name(name)
    check_share(share)
    old = get_record(backend, name)
    if old is not None and not replace:
        raise ClassError(f"name: a class snapshot {name!r} exists; send \"replace\": true to replace it", 409)
    if old is not None and old.get("owner") != owner and not admin:
        raise ClassError(f"name: the class snapshot {name!r} was published by another user", 403)
    try:
        body = backend.get_object(owner, f"{sid}.json")
    except BackendError as err:
        raise ClassError(f"snapshot: {owner} has no snapshot {sid!r}", 404) from err
    data, ids = manifest_chunk_ids(body)
    pub = new_snapshot_id()
    ns = publication_ns(pub)
    where, missing = locate(backend, owner, sorted(ids))
    if missing:
        raise ClassError(f"snapshot: {len(missing)} chunk(s) of {sid} are not in the store", 409)
    for src, part in where.items():
        backend.copy_chunks(src, ns, part)
    meta = dict(data.get("meta") or {}) if isinstance(data.get("meta"), dict) else {}
    meta.update({"kind": "class", "class": name})
    meta.pop("server", None)
    data["meta"] = meta
    _add(backend, CLASSES, PUBLICATIONS, ns)
    backend.put_object(ns, f"{pub}.json", json.dumps(data).encode())
    record = {"name": name, "owner": owner, "share": share, "publication": pub, "snapshot": sid,
              "published": time.time(), "summary": summarize(pub, data, server=None)}
    backend.put_object(CLASSES, f"{name}.class", json.dumps(record).encode())
    if old is not None:
        retire(backend, old)
    return record


def retire(backend: Backend, record: dict) -> None:
    """A publication no class record names any more: its manifest goes; its chunks stay
    while students' copies borrow them (the next collection of it decides)."""
    ns = publication_ns(record["publication"])
    backend.delete_object(ns, f"{record['publication']}.json")


def revoke(backend: Backend, name: str) -> dict | None:
    """Delete class ``name``'s record (no new starts); students' copies stay."""
    record = get_record(backend, name)
    if record is not None:
        backend.delete_object(CLASSES, f"{name}.class")
        retire(backend, record)
    return record


def copy_for(backend: Backend, user: str, name: str, groups, *, server: str) -> dict:
    """``user``'s own copy of class ``name`` in ``server``'s line (its summary, plus the
    copied manifest's length, ``manifest_bytes``); refuses
    (404, the same answer as for no such class) a class not shared with ``groups``."""
    record = get_record(backend, name)
    if record is None or not (visible(record, groups) or record.get("owner") == user):
        raise ClassError(f"restore: no class snapshot {name!r} is shared with {user}", 404)
    pub = record["publication"]
    ns = publication_ns(pub)
    data = json.loads(backend.get_object(ns, f"{pub}.json"))
    data["meta"] = {**data.get("meta", {}), "kind": "class", "class": name, "server": server}
    sid = new_snapshot_id()
    _add(backend, ns, BORROWERS, user)
    _add(backend, user, BORROWS, ns)
    body = json.dumps(data).encode()
    backend.put_object(user, f"{sid}.json", body)
    summary = summarize(sid, data, server=meta_server(data), borrows=[ns])
    write_summary(backend, user, summary)
    return {**summary, "manifest_bytes": len(body)}


def marks(backend: Backend, ns: str) -> set[str]:
    """The chunks of publication ``ns`` that borrowers' kept manifests reference."""
    marked: set[str] = set()
    for user in _read_json(backend, ns, BORROWERS, []):
        for summary in list_snapshots(backend, user):
            if ns in (summary.get("borrows") or []):
                _, ids = manifest_chunk_ids(backend.get_object(user, f"{summary['id']}.json"))
                marked |= ids
    return marked


def publications(backend: Backend) -> list[str]:
    """Every publication namespace ever made and not yet emptied by a collection."""
    return list(_read_json(backend, CLASSES, PUBLICATIONS, []))


def forget_publication(backend: Backend, ns: str) -> None:
    """Drop an emptied publication (no record, no manifest, no chunk left) from the list."""
    items = [p for p in publications(backend) if p != ns]
    backend.put_object(CLASSES, PUBLICATIONS, json.dumps(items).encode())
