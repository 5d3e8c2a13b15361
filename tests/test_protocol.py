"""The snapshot store's wire formats (cloudhop.extensions.snapshot.protocol): the chunk
pack round-trips and refuses broken bodies, the restore report the target writes passes
the store's check and reads back on the source, and the module is standard library only."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from types import SimpleNamespace

import pytest
import requests

from cloudhop.extensions import migrate
from cloudhop.extensions.hubclient import HubClient
from cloudhop.extensions.snapshot import StoreClient, take_snapshot
from cloudhop.extensions.snapshot.chunking import hash_bytes
from cloudhop.extensions.snapshot.protocol import (
    PACK_HEADER, REPORT_MAX, KernelReport, PackError, ReportError, RestoreReport, encode_pack, iter_pack,
)
from cloudhop.hub.store_backends import LocalBackend

from .store_double import ACCESS, StoreHarness

TOKENS = {"tok-alice": ("alice", [ACCESS])}


def chunks(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    out = [(hash_bytes(b""), b"")]  # an empty chunk is a valid record
    for _ in range(n - 1):
        data = rng.randbytes(rng.randrange(1, 5000))
        out.append((hash_bytes(data), data))
    return out


def test_an_empty_pack_is_empty():
    assert encode_pack([]) == b""
    assert list(iter_pack(b"")) == []


def test_many_chunks_round_trip_in_order():
    items = chunks(1000)
    body = encode_pack(items)
    assert len(body) == sum(PACK_HEADER.size + len(d) for _, d in items)
    got = [(cid, bytes(data)) for cid, data in iter_pack(body)]
    assert got == items


@pytest.mark.parametrize("cut", [1, PACK_HEADER.size - 1, PACK_HEADER.size + 1])
def test_a_truncated_pack_raises_a_clear_error(cut):
    body = encode_pack(chunks(3, seed=1))
    with pytest.raises(PackError, match="truncated chunk pack"):
        list(iter_pack(body[:-cut]))


def test_a_garbled_length_raises_instead_of_reading_past_the_end():
    (cid, data), = chunks(2, seed=2)[1:]
    body = bytearray(encode_pack([(cid, data)]))
    PACK_HEADER.pack_into(body, 0, bytes.fromhex(cid), len(data) + 10)
    with pytest.raises(PackError, match=f"needs {len(data) + 10} bytes"):
        list(iter_pack(bytes(body)))
    assert issubclass(PackError, ValueError)


@pytest.mark.parametrize("cid", ["ab" * 31, "zz" * 32, "ab" * 33, None])
def test_a_bad_chunk_id_is_refused_when_packing(cid):
    with pytest.raises(PackError, match="hex digits"):
        encode_pack([(cid, b"x")])


def test_the_protocol_module_needs_only_the_standard_library():
    code = ("import sys; import cloudhop.extensions.snapshot.protocol, cloudhop.hub.snapshot_store; "
            "print(sorted(m for m in ('requests', 'blake3', 'pyfastcdc', 'cloudhop.extensions.snapshot.client')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def report_as_the_target_writes_it() -> RestoreReport:
    skipped = {"name": "model", "reason": "was on cuda:0; no GPU here, restored on the CPU", "rebuilt": "on the CPU"}
    return RestoreReport(snapshot="20240101T000000-abcdef", state="done", files={"a.txt": "ab" * 32},
                         kernels=[KernelReport(path="a.ipynb", kernel_name="python3", kernel_id="k1",
                                               variables=["x", "model"], skipped=[skipped])],
                         bytes_total=10, bytes_received=10)


def test_a_report_round_trips_through_json():
    report = report_as_the_target_writes_it()
    assert RestoreReport.decode(report.encode()) == report
    # keys a reader does not know are ignored (a newer target's report still reads)
    assert RestoreReport.from_json(dict(report.to_json(), extra=1)) == report


@pytest.mark.parametrize("change, field", [
    ({"state": "half-done"}, "state"), ({"snapshot": 3}, "snapshot"), ({"files": {"a": 1}}, "files"),
    ({"kernels": {"a": 1}}, "kernels"), ({"kernels": [{"path": "a.ipynb"}]}, "kernels[0].kernel_name"),
    ({"kernels": [{"path": "a", "kernel_name": "p", "variables": "x"}]}, "kernels[0].variables"),
    ({"error": ["x"]}, "error"), ({"bytes_total": -1}, "bytes_total"), ({"bytes_received": True}, "bytes_received"),
])
def test_a_bad_report_is_refused_naming_the_field(change, field):
    data = dict(report_as_the_target_writes_it().to_json(), **change)
    with pytest.raises(ReportError) as err:
        RestoreReport.from_json(data)
    assert str(err.value).startswith(f"{field} must be")


def test_an_oversized_report_is_refused_by_both_sides():
    report = RestoreReport(snapshot="s", files={f"f{i}": "ab" * 32 for i in range(REPORT_MAX // 64)})
    with pytest.raises(ReportError, match="more than"):
        report.encode()
    with pytest.raises(ReportError, match="more than"):
        RestoreReport.decode(b" " * (REPORT_MAX + 1))


@pytest.fixture
def store(tmp_path):
    with StoreHarness(LocalBackend(str(tmp_path / "store")), TOKENS) as h:
        yield h


def test_the_store_takes_a_pack_from_the_codec_and_refuses_a_truncated_one(store):
    items = chunks(50, seed=3)
    url = store.url + "api/users/alice/chunks"
    auth = {"Authorization": "token tok-alice"}
    body = encode_pack(items)
    r = requests.post(url, data=body[:-1], headers=auth, timeout=30)
    assert r.status_code == 400 and "truncated chunk pack" in r.json()["message"]
    assert requests.post(url, data=body, headers=auth, timeout=30).json() == {"stored": 50}
    r = requests.post(url + "/pack", json={"ids": [c for c, _ in items]}, headers=auth, timeout=30)
    assert [(c, bytes(d)) for c, d in iter_pack(r.content)] == items


def test_the_report_the_target_writes_passes_the_store_and_verifies_on_the_source(store, tmp_path, monkeypatch):
    """The real writer (migrate.Restorer) and the real reader (StoreClient.get_report and
    Migrator._verify), with the kernel agent's answer stood in for."""
    ws, kdir = tmp_path / "ws", tmp_path / "kernel0"
    ws.mkdir()
    kdir.mkdir()
    (ws / "a.txt").write_text("hello")
    (kdir / "state.json").write_text("{}")
    kernels = [{"path": "a.ipynb", "name": "", "type": "notebook", "kernel_name": "python3",
                "prefix": f"{migrate.KERNEL_PREFIX}/0", "variables": ["x"], "skipped": []}]
    source_store = StoreClient(store.url, "alice", "tok-alice")
    sid, manifest, _ = take_snapshot(ws, source_store, extra={kernels[0]["prefix"]: str(kdir)},
                                     meta={"kind": "migration", "kernels": kernels})

    agent_answer = {"variables": ["x"], "seconds": 0.1,
                    "skipped": [{"name": "t", "reason": "was on cuda:0, restored on the CPU", "rebuilt": "on the CPU"}]}

    async def restore_kernel(info, directory, timeout):
        return agent_answer

    monkeypatch.setattr(migrate, "restore_kernel", restore_kernel)
    target = tmp_path / "target"
    target.mkdir()
    kernel = SimpleNamespace(get_connection_info=lambda: {})

    async def create_session(**kw):
        return {"kernel": {"id": "k1"}}

    app = SimpleNamespace(
        root_dir=str(target),
        kernel_spec_manager=SimpleNamespace(find_kernel_specs=lambda: {"python3": "/k"}),
        kernel_manager=SimpleNamespace(default_kernel_name="python3", get_kernel=lambda kid: kernel),
        session_manager=SimpleNamespace(create_session=create_session),
    )
    restorer = migrate.Restorer(app, HubClient("http://hub/api", "tok-alice", "alice"),
                                SimpleNamespace(store_url=store.url, kernel_timeout=5), sid)
    written = asyncio.run(restorer.run())
    assert written.state == "done", written.error

    read = source_store.get_report(sid)
    assert read == written
    assert read.kernels[0].skipped == agent_answer["skipped"]
    m = migrate.Migration(id="m1", options={})
    migrate.Migrator._verify(m, manifest, [dict(kernels[0], dir=str(kdir))], read)
    assert [s["name"] for s in m.skipped] == ["t"]
    with pytest.raises(RuntimeError, match="variables missing on the target: y"):
        migrate.Migrator._verify(m, manifest, [dict(kernels[0], variables=["x", "y"])], read)

    # the store keeps only what reads as a report
    url = store.url + f"api/users/alice/snapshots/{sid}/report"
    auth = {"Authorization": "token tok-alice"}
    r = requests.put(url, data=json.dumps({"snapshot": sid, "state": "half-done"}), headers=auth, timeout=30)
    assert r.status_code == 400 and "state must be one of" in r.json()["message"]
    assert requests.put(url, data=b"{" * (REPORT_MAX + 1), headers=auth, timeout=30).status_code == 413
    assert source_store.get_report(sid) == written
