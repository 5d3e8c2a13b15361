"""Workspace snapshots: content-defined chunks, one manifest per snapshot.

A snapshot is a :class:`~.manifest.Manifest` (paths, modes, sizes, per-file BLAKE3 and
chunk lists) plus the chunks it names, kept in the hub's snapshot store. Taking a
snapshot sends only the chunks the store lacks (:func:`~.snapshot.take_snapshot`);
restoring writes each file atomically and checks its hash (:func:`~.snapshot.restore_snapshot`).
"""

from .chunking import ChunkRef, Chunker, hash_bytes
from .client import StoreClient, StoreError
from .excludes import Excludes
from .manifest import FileEntry, Manifest, ManifestError
from .snapshot import RestoreError, SnapshotStats, restore_snapshot, take_snapshot

__all__ = [
    "ChunkRef", "Chunker", "hash_bytes", "StoreClient", "StoreError", "Excludes",
    "FileEntry", "Manifest", "ManifestError", "RestoreError", "SnapshotStats",
    "restore_snapshot", "take_snapshot",
]
