"""Capturing a running server into the snapshot store: its kernels' state and its files.

The one way a server's state goes into the store, whatever the reason (a move, a stop
that keeps the server's state, a rescue before the machine goes away):

1. :func:`checkpoint_kernels` - checkpoint the kernel of each session into a local
   folder (one subfolder per kernel); returns one dict per kernel;
2. :func:`capture` - snapshot the workspace plus those checkpoints (under
   :data:`KERNEL_PREFIX` in the manifest) into the store; returns the snapshot's id, its
   manifest and its :class:`~.snapshot.SnapshotStats`.

A kernel dict holds ``path``, ``name``, ``type`` (the session's), ``kernel_name``,
``prefix`` (where its checkpoint lies in the manifest), ``variables`` and ``skipped``
(the checkpoint's: what it could not keep, with the reason) and ``dir`` (the local
checkpoint folder). The manifest's ``meta["kernels"]`` holds the same less ``dir``: a
restore (:class:`~cloudhop.extensions.migrate.Restorer`) recreates each session from it.

Nothing here knows about moves; the caller names why it captures in ``meta``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from .kernelstate import checkpoint_kernel
from .snapshot import Excludes, Manifest, SnapshotStats, StoreClient, take_snapshot

#: where kernel checkpoints lie in a snapshot's manifest (``<prefix>/<n>/...``)
KERNEL_PREFIX = ".cloudhop/kernels"


async def checkpoint_kernels(serverapp, workdir: str, timeout: float) -> list[dict]:
    """Checkpoint the kernel of each of ``serverapp``'s sessions into ``workdir/<n>``,
    sessions in path order; a session whose kernel is gone is left out. ``timeout``:
    seconds one kernel may take (including waiting for a running cell). Raises
    :class:`~.kernelstate.KernelStateError` when a kernel cannot be checkpointed."""
    kernels = []
    sessions = await serverapp.session_manager.list_sessions()
    for i, s in enumerate(sorted(sessions, key=lambda s: s["path"])):
        kernel = s.get("kernel") or {}
        if not kernel.get("id") or kernel["id"] not in serverapp.kernel_manager:
            continue
        info = serverapp.kernel_manager.get_kernel(kernel["id"]).get_connection_info()
        directory = os.path.join(workdir, str(i))
        result = await checkpoint_kernel(info, directory, timeout=timeout)
        kernels.append({"path": s["path"], "name": s.get("name") or "", "type": s.get("type") or "notebook",
                        "kernel_name": kernel.get("name") or "python3", "prefix": f"{KERNEL_PREFIX}/{i}",
                        "variables": result["variables"], "skipped": result["skipped"], "dir": directory})
    return kernels


def kernel_skipped(kernels: list[dict]) -> list[dict]:
    """What the checkpoints of ``kernels`` could not keep, each entry with its session's
    ``path`` (the form of a move's ``skipped``)."""
    return [dict(sk, path=k["path"]) for k in kernels for sk in k["skipped"]]


def source_meta(env=os.environ) -> dict:
    """Where a snapshot was taken: this server's provider, region and GPU (as the hub
    announced them; None where it did not)."""
    return {k: env.get(f"CLOUDHOP_{k.upper()}") for k in ("provider", "region", "gpu")}


async def capture(
    serverapp,
    store: StoreClient,
    kernels: list[dict],
    *,
    excludes: Excludes,
    meta: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[str, Manifest, SnapshotStats]:
    """Snapshot ``serverapp``'s workspace (less ``excludes``) plus the checkpoints of
    ``kernels`` (from :func:`checkpoint_kernels`) into ``store``, in a thread.

    ``meta`` goes into the manifest, with ``kernels`` (less their local ``dir``) added.
    ``progress(bytes_sent, bytes_total)`` is called from the snapshot's thread. Returns
    ``(snapshot_id, manifest, stats)``; ``stats.skipped`` lists every workspace path
    left out (:class:`~.snapshot.excludes.Skipped`)."""
    meta = dict(meta or {}, kernels=[{k: v for k, v in kr.items() if k != "dir"} for kr in kernels])
    return await asyncio.to_thread(
        take_snapshot, serverapp.root_dir, store, excludes=excludes,
        extra={kr["prefix"]: kr["dir"] for kr in kernels}, meta=meta, progress=progress,
    )
