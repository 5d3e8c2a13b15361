"""Garbage collection of the snapshot store's chunks: mark and sweep, per namespace.

*Mark*: the chunks every manifest kept in the namespace references (for a class
publication, also the manifests of the users who borrow from it, see
:mod:`.snapshot_classes`). If any manifest cannot be read, nothing is swept.
*Sweep*: every chunk not marked is deleted, except

* chunks *claimed* in the last ``grace`` seconds (:class:`Claims`): the store claims
  each chunk a client asks about (``chunks/missing``: a present chunk is one the client
  will not send again), sends (a pack) or gets an upload URL for, so the chunks of a
  snapshot being written, whose manifest is not stored yet, survive; storing the
  manifest releases its chunks' claims (the manifest marks them now); and
* chunks stored less than ``grace`` seconds ago (an upload straight to a bucket the
  store has not heard of since it restarted).

The store runs a collection of a user's namespace under the same lock as storing a
manifest (whose chunks are checked present under it), so no manifest is stored between
the mark and the sweep. A writer whose claim outlived ``grace`` (a snapshot taking longer
than that) or that was claimed before the store restarted may find a chunk gone when it
stores its manifest: the store refuses that manifest (409, chunks missing) rather than
keep a snapshot that cannot be restored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .store_backends import Backend, manifest_chunk_ids
from .snapshot_line import snapshot_ids

#: seconds a claimed or newly stored chunk is safe from a sweep (an upload URL's lifetime)
GRACE_SECONDS = 3600.0


class Claims:
    """Chunks recently asked about or sent, per namespace (in the store's memory)."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self._at: dict[str, dict[str, float]] = {}

    def claim(self, ns: str, ids) -> None:
        now = self.clock()
        seen = self._at.setdefault(ns, {})
        for cid in ids:
            seen[cid] = now

    def release(self, ns: str, ids) -> None:
        """Drop the claims on ``ids`` (a stored manifest now references them)."""
        seen = self._at.get(ns, {})
        for cid in ids:
            seen.pop(cid, None)

    def recent(self, ns: str, grace: float) -> set[str]:
        """The chunks of ``ns`` claimed within ``grace`` seconds (older claims dropped)."""
        since = self.clock() - grace
        seen = self._at.get(ns, {})
        for cid in [c for c, t in seen.items() if t < since]:
            del seen[cid]
        return set(seen)


@dataclass
class Collected:
    namespace: str
    kept: int = 0
    deleted: int = 0
    freed: int = 0

    def to_dict(self) -> dict:
        return {"namespace": self.namespace, "kept": self.kept, "deleted": self.deleted, "freed": self.freed}


def referenced(backend: Backend, ns: str) -> set[str]:
    """Every chunk the manifests kept in ``ns`` reference (raises if one cannot be read)."""
    marked: set[str] = set()
    for sid in snapshot_ids(backend, ns):
        _, ids = manifest_chunk_ids(backend.get_object(ns, f"{sid}.json"))
        marked |= ids
    return marked


def sweep(backend: Backend, ns: str, marked: set[str], *, protected: set[str] = frozenset(),
          min_age: float = GRACE_SECONDS, now: float | None = None) -> Collected:
    """Delete ``ns``'s chunks neither ``marked`` nor ``protected`` and stored at least
    ``min_age`` seconds ago."""
    now = time.time() if now is None else now
    out = Collected(ns)
    doomed = []
    for cid, size, modified in backend.list_chunks(ns):
        if cid in marked or cid in protected or modified > now - min_age:
            out.kept += 1
            continue
        doomed.append(cid)
        out.freed += size
    backend.delete_chunks(ns, doomed)
    out.deleted = len(doomed)
    return out


def collect(backend: Backend, ns: str, *, claims: Claims | None = None, grace: float = GRACE_SECONDS,
            min_age: float | None = None, extra_marks: set[str] = frozenset()) -> Collected:
    """Mark and sweep ``ns``: chunks claimed within ``grace`` seconds are kept, and those
    stored within ``min_age`` (default ``grace``); ``extra_marks``: chunks referenced from
    elsewhere."""
    marked = referenced(backend, ns) | set(extra_marks)
    protected = claims.recent(ns, grace) if claims is not None else set()
    return sweep(backend, ns, marked, protected=protected, min_age=grace if min_age is None else min_age)

