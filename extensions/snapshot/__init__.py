"""Workspace snapshots: content-defined chunks, one manifest per snapshot.

A snapshot is a :class:`~.manifest.Manifest` (paths, modes, sizes, per-file BLAKE3 and
chunk lists) plus the chunks it names, kept in the hub's snapshot store. Taking a
snapshot sends only the chunks the store lacks (:func:`~.snapshot.take_snapshot`);
restoring writes each file atomically and checks its hash (:func:`~.snapshot.restore_snapshot`),
never through a symbolic link in the destination (:mod:`.confined`).
The store's wire formats are in :mod:`.protocol`.

The names below are imported on first use, so the hub can import :mod:`.protocol`
(standard library only) without the chunker's and the client's dependencies.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "ChunkRef": "chunking", "Chunker": "chunking", "hash_bytes": "chunking",
    "StoreClient": "client", "StoreError": "client", "Excludes": "excludes",
    "FileEntry": "manifest", "Manifest": "manifest", "ManifestError": "manifest",
    "Place": "snapshot", "RestoreError": "confined", "SnapshotStats": "snapshot",
    "UnsafePath": "confined", "restore_snapshot": "snapshot", "take_snapshot": "snapshot",
}
__all__ = list(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
