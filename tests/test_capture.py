"""Capturing a server (cloudhop.extensions.capture): a real kernel's checkpoint and the
workspace go into the real store as one snapshot, which restores to the same files and
variables."""

from __future__ import annotations

from types import SimpleNamespace

from jupyter_client.manager import AsyncKernelManager

from cloudhop.extensions.capture import KERNEL_PREFIX, capture, checkpoint_kernels, kernel_skipped, source_meta
from cloudhop.extensions.kernelstate import restore_kernel
from cloudhop.extensions.snapshot import Excludes, Manifest, restore_snapshot
from cloudhop.extensions.snapshot.snapshot import workspace_dest


async def _kernel(cwd):
    km = AsyncKernelManager(kernel_name="python3")
    await km.start_kernel(cwd=str(cwd))
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    return km, kc


class _Kernels(dict):
    """A kernel manager's ``in`` and ``get_kernel``."""

    def get_kernel(self, kid):
        return self[kid]


async def test_a_capture_restores_to_the_same_files_and_variables(snapshot_store, tmp_path):
    _, store = snapshot_store
    ws = tmp_path / "ws"
    (ws / "pkg" / "__pycache__").mkdir(parents=True)
    (ws / "a.txt").write_text("hello")
    (ws / "pkg" / "__pycache__" / "m.pyc").write_bytes(b"x")
    km, kc = await _kernel(ws)
    try:
        reply = await kc.execute_interactive("x = 41 + 1\nimport threading\nlock = threading.Lock()", timeout=60)
        assert reply["content"]["status"] == "ok"
        app = SimpleNamespace(
            root_dir=str(ws),
            session_manager=SimpleNamespace(list_sessions=_sessions({"b.ipynb": "k2", "a.ipynb": "k1"})),
            kernel_manager=_Kernels(k1=km),  # k2's kernel is gone: its session is left out
        )
        work = tmp_path / "work"
        kernels = await checkpoint_kernels(app, str(work), timeout=60)
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)

    assert [(k["path"], k["prefix"]) for k in kernels] == [("a.ipynb", f"{KERNEL_PREFIX}/0")]
    assert "x" in kernels[0]["variables"]
    assert kernel_skipped(kernels) == [dict(sk, path="a.ipynb") for sk in kernels[0]["skipped"]]

    seen = []
    sid, _, stats = await capture(app, store, kernels, excludes=Excludes(),
                                  meta={"kind": "test", "source": source_meta({"CLOUDHOP_REGION": "r1"})},
                                  progress=lambda sent, total: seen.append((sent, total)))
    stored = Manifest.loads(store.get_manifest(sid))
    assert stored.meta["kind"] == "test" and stored.meta["source"]["region"] == "r1"
    assert stored.meta["kernels"] == [{k: v for k, v in kernels[0].items() if k != "dir"}]
    assert seen and seen[-1][1] == stats.bytes_total
    assert [s.path for s in stats.skipped] == ["pkg/__pycache__"]

    target, checkpoints = tmp_path / "target", tmp_path / "checkpoints"
    target.mkdir()
    checkpoints.mkdir()
    ws_dest, ck_dest = workspace_dest(str(target), skip_prefix=KERNEL_PREFIX), workspace_dest(str(checkpoints))
    restore_snapshot(stored, store, lambda p: ck_dest(p) if p.startswith(KERNEL_PREFIX + "/") else ws_dest(p))
    assert (target / "a.txt").read_text() == "hello"
    assert not (target / "pkg" / "__pycache__" / "m.pyc").exists()

    km, kc = await _kernel(target)
    try:
        result = await restore_kernel(km.get_connection_info(), str(checkpoints / kernels[0]["prefix"]), timeout=60)
        assert "x" in result["variables"]
        out = []
        await kc.execute_interactive("print(x)", timeout=60,
                                     output_hook=lambda msg: out.append(msg["content"].get("text", "")))
        assert "".join(out).strip() == "42"
    finally:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


def _sessions(by_path: dict):
    async def list_sessions():
        return [{"path": p, "name": p, "type": "notebook", "kernel": {"id": kid, "name": "python3"}}
                for p, kid in by_path.items()]
    return list_sessions
