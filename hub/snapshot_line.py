"""Each server's line of snapshots: summaries, listing, retention and deletion.

A snapshot belongs to the line of one of its user's servers (``""`` the default one)
when the store knows which: a snapshot stored with a server's token is that server's; one
stored with a token for all of the user's snapshots is the server its manifest's
``meta["server"]`` names (a string), else no line's (listed, never pruned).

Beside each manifest ``{id}.json`` the store keeps a small *summary*, ``{id}.summary``
(written after the manifest, so a summary never names a manifest that was not stored;
a manifest without one, from an older store, is summarised from itself when listed):

    {"id", "created", "files", "bytes", "server", "kind", "source": {"provider",
     "region", "gpu"}, "kernels": {"count", "paths"}, "skipped", "reason", "class",
     "borrows": [namespace, ...]}

``borrows`` names the class publications (:mod:`.snapshot_classes`) whose chunks the
snapshot uses without holding them: the store writes it, never the client.

Retention (``c.CloudhopStore.keep_snapshots``): after a snapshot is stored in a line,
that line keeps its newest ``keep`` snapshots and the older ones are deleted (manifest,
summary, restore report); their chunks go at the next garbage collection
(:mod:`.snapshot_gc`). Everything here is synchronous, over a
:class:`~.store_backends.Backend` (the store service runs it in a thread).
"""

from __future__ import annotations

import json

from .store_backends import Backend, BackendError

SUMMARY = ".summary"
#: what a summary keeps of a manifest's free-form fields (they are the writer's)
MAX_TEXT = 500
MAX_PATHS = 50


def _text(value, limit: int = MAX_TEXT) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _skipped(value) -> list:
    out = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict):
            out.append({k: _text(item.get(k)) for k in ("path", "name", "reason") if _text(item.get(k))})
        elif isinstance(item, str):
            out.append({"path": _text(item)})
        if len(out) >= MAX_PATHS:
            break
    return out


def summarize(sid: str, data: dict, *, server: str | None, borrows=()) -> dict:
    """The summary of manifest ``data`` stored as ``sid`` in ``server``'s line."""
    files = [f for f in data.get("files") or [] if isinstance(f, dict)]
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    source = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    kernels = [k for k in meta.get("kernels") or [] if isinstance(k, dict)]
    created = data.get("created")
    return {
        "id": sid,
        "created": created if isinstance(created, (int, float)) and not isinstance(created, bool) else None,
        "files": len(files),
        "bytes": sum(f["size"] for f in files if isinstance(f.get("size"), int) and f["size"] >= 0),
        "server": server,
        "kind": _text(meta.get("kind"), 40),
        "source": {k: _text(source.get(k), 100) for k in ("provider", "region", "gpu")},
        "kernels": {"count": len(kernels),
                    "paths": [p for p in (_text(k.get("path")) for k in kernels[:MAX_PATHS]) if p]},
        "skipped": _skipped(meta.get("skipped")),
        "reason": _text(meta.get("reason")),
        "class": _text(meta.get("class"), 128),
        "borrows": sorted(set(borrows)),
    }


def meta_server(data: dict) -> str | None:
    """The server a manifest's meta names (a valid server name), or None."""
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    server = meta.get("server")
    return server if isinstance(server, str) and "/" not in server and len(server) <= 255 else None


def write_summary(backend: Backend, user: str, summary: dict) -> None:
    backend.put_object(user, summary["id"] + SUMMARY, json.dumps(summary).encode())


def read_summary(backend: Backend, user: str, sid: str) -> dict | None:
    """The summary of ``user``'s snapshot ``sid``; None when it is gone."""
    try:
        return json.loads(backend.get_object(user, sid + SUMMARY))
    except BackendError as err:
        if err.status != 404:
            raise
    try:  # stored before summaries were kept
        data = json.loads(backend.get_object(user, sid + ".json"))
    except BackendError as err:
        if err.status == 404:
            return None
        raise
    return summarize(sid, data, server=meta_server(data))


def snapshot_ids(backend: Backend, user: str) -> list[str]:
    """Ids of ``user``'s stored snapshots (their manifests)."""
    return [n[:-5] for n in backend.list_objects(user, ".json") if not n.endswith(".report.json")]


def list_snapshots(backend: Backend, user: str, *, server: str | None = None,
                   allowed: set[str] | None = None) -> list[dict]:
    """``user``'s snapshots newest first (only ``server``'s line when given, only the
    ids in ``allowed`` unless None)."""
    out = []
    for sid in snapshot_ids(backend, user):
        if allowed is not None and sid not in allowed:
            continue
        summary = read_summary(backend, user, sid)
        if summary is None or (server is not None and summary.get("server") != server):
            continue
        out.append(summary)
    out.sort(key=lambda s: (s.get("created") or 0, s["id"]), reverse=True)
    return out


def delete_snapshot(backend: Backend, user: str, sid: str) -> bool:
    """Delete ``user``'s snapshot ``sid`` (manifest first: once it is gone, nothing lists
    or restores the snapshot); False when there was none."""
    try:
        backend.get_object(user, sid + ".json")
    except BackendError as err:
        if err.status == 404:
            return False
        raise
    backend.delete_object(user, sid + ".json")
    backend.delete_object(user, sid + SUMMARY)
    backend.delete_object(user, sid + ".report.json")
    return True


def prune(backend: Backend, user: str, server: str, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` snapshots of ``server``'s line; their ids."""
    gone = []
    for summary in list_snapshots(backend, user, server=server)[max(keep, 1):]:
        if delete_snapshot(backend, user, summary["id"]):
            gone.append(summary["id"])
    return gone
