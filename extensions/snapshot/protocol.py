"""Wire formats of the snapshot store, shared by the store service (hub side,
:mod:`cloudhop.hub.snapshot_store`) and its clients in users' servers
(:mod:`.client`, :mod:`cloudhop.extensions.migrate`). See docs/architecture.md.

Standard library only, so the hub imports it without the snapshot's own dependencies.

Chunk *pack* (chunk uploads to and downloads from the store's local backend): a
sequence of records ``32-byte raw BLAKE3 id | 8-byte big-endian length | data``, no
header or trailer; an empty body is an empty pack. :func:`encode_pack` writes one,
:func:`iter_pack` reads one and raises :class:`PackError` for a truncated or garbled body.
Neither checks a chunk's data against its id: the receiver hashes it.

*Limits* both sides keep (the store refuses more, its clients never send more):
:data:`MAX_CHUNK` (the chunker cuts no larger chunk), :data:`MAX_IDS` distinct chunk ids
per request, :data:`PACK_MAX` bytes of chunk data per pack either way (a download asks
for at most :data:`PACK_IDS` chunks, which always fit), :data:`MANIFEST_MAX` bytes of
manifest. See docs/migration.md ("Store limits").

Restore *report* (a migration target writes it beside the snapshot,
``PUT .../snapshots/{id}/report``; the source reads it back to verify the move):
:class:`RestoreReport`, with :meth:`RestoreReport.from_json` as the one check both the
store and the source apply. At most :data:`REPORT_MAX` bytes of JSON.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator

#: one pack record's header: raw chunk id, data length
PACK_HEADER = struct.Struct(">32sQ")
ID_BYTES = 32
#: the largest chunk (bytes): the chunker's maximum, and the largest chunk the store takes
MAX_CHUNK = 1 << 20
#: the most distinct chunk ids one request may name (which are missing, download, pack)
MAX_IDS = 5000
#: the most chunk data (bytes) in one pack: an upload's body, a download's reply
PACK_MAX = 64 << 20
#: chunk ids per pack download: that many chunks fit in a pack whatever their sizes
PACK_IDS = PACK_MAX // MAX_CHUNK
#: the largest manifest the store keeps (bytes of JSON): ~400,000 chunks, ~100 GiB of files
MANIFEST_MAX = 32 << 20
#: the largest restore report the store keeps (bytes of JSON)
REPORT_MAX = 4 << 20
#: a report's states: the target is still restoring, has finished, or has given up
REPORT_STATES = ("restoring", "done", "failed")


class PackError(ValueError):
    """A chunk pack (or a chunk id given to one) is malformed."""


def pack_header(cid: str, length: int) -> bytes:
    """The header of one pack record: chunk ``cid`` (hex) of ``length`` bytes follows;
    a sender that streams a pack writes it, then the data."""
    try:
        raw = bytes.fromhex(cid)
    except (TypeError, ValueError):
        raw = b""
    if len(raw) != ID_BYTES:
        raise PackError(f"chunk id {str(cid)[:16]!r} is not {ID_BYTES * 2} hex digits")
    return PACK_HEADER.pack(raw, length)


def encode_pack(items: Iterable[tuple[str, bytes]]) -> bytes:
    """The pack of ``(hex chunk id, data)`` items, in order."""
    out = bytearray()
    for cid, data in items:
        out += pack_header(cid, len(data))
        out += data
    return bytes(out)


def iter_pack(body) -> Iterator[tuple[str, memoryview]]:
    """Split a pack into ``(hex chunk id, data)`` without copying the data; raises
    :class:`PackError` at a record that is cut short (header or data)."""
    view = memoryview(body)
    pos = 0
    while pos < len(view):
        if pos + PACK_HEADER.size > len(view):
            raise PackError(f"truncated chunk pack: a record header at byte {pos} is cut short")
        raw_id, length = PACK_HEADER.unpack_from(view, pos)
        pos += PACK_HEADER.size
        if pos + length > len(view):
            raise PackError(f"truncated chunk pack: chunk {raw_id.hex()[:12]}... needs {length} bytes, "
                            f"{len(view) - pos} left")
        yield raw_id.hex(), view[pos:pos + length]
        pos += length


class ReportError(ValueError):
    """A restore report does not have the shape :class:`RestoreReport` promises; the
    message names the field."""


def _want(ok: bool, name: str, what: str, value) -> None:
    if not ok:
        raise ReportError(f"{name} must be {what}, not {type(value).__name__} {str(value)[:40]!r}")


def _str_list(value, name: str) -> list[str]:
    _want(isinstance(value, list) and all(isinstance(v, str) for v in value), name, "a list of strings", value)
    return list(value)


def _dict_list(value, name: str) -> list[dict]:
    _want(isinstance(value, list) and all(isinstance(v, dict) for v in value), name, "a list of objects", value)
    return [dict(v) for v in value]


def _count(value, name: str) -> int:
    _want(isinstance(value, int) and not isinstance(value, bool) and value >= 0, name,
          "a whole number, 0 or more", value)
    return value


@dataclass
class KernelReport:
    """One session recreated on the target: its notebook ``path``, the kernel it runs
    (``kernel_name``, ``kernel_id``), the ``variables`` loaded into it and what was
    ``skipped`` (``{"name", "reason", "rebuilt"}`` each, as the kernel agent says)."""

    path: str
    kernel_name: str
    kernel_id: str | None = None
    variables: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    @classmethod
    def from_json(cls, data, where: str = "kernels[]") -> "KernelReport":
        _want(isinstance(data, dict), where, "an object", data)
        for key in ("path", "kernel_name"):
            _want(isinstance(data.get(key), str), f"{where}.{key}", "a string", data.get(key))
        kid = data.get("kernel_id")
        _want(kid is None or isinstance(kid, str), f"{where}.kernel_id", "a string or null", kid)
        return cls(path=data["path"], kernel_name=data["kernel_name"], kernel_id=kid,
                   variables=_str_list(data.get("variables", []), f"{where}.variables"),
                   skipped=_dict_list(data.get("skipped", []), f"{where}.skipped"))


@dataclass
class RestoreReport:
    """What a migration target restored from snapshot ``snapshot``.

    ``state`` is one of :data:`REPORT_STATES`; ``files`` maps each restored workspace
    path to its BLAKE3 (hex); ``kernels`` lists the recreated sessions; ``error`` says
    why a ``failed`` restore failed; ``bytes_total``/``bytes_received`` are the
    snapshot's size and how much of it has arrived. Keys a reader does not know are
    ignored, so a newer writer's report still reads."""

    snapshot: str
    state: str = "restoring"
    files: dict[str, str] = field(default_factory=dict)
    kernels: list[KernelReport] = field(default_factory=list)
    error: str | None = None
    bytes_total: int = 0
    bytes_received: int = 0

    def to_json(self) -> dict:
        return asdict(self)

    def encode(self) -> bytes:
        """The report as the store keeps it; raises ReportError above :data:`REPORT_MAX`."""
        body = json.dumps(self.to_json()).encode()
        if len(body) > REPORT_MAX:
            raise ReportError(f"the restore report is {len(body)} bytes, more than {REPORT_MAX}")
        return body

    @classmethod
    def from_json(cls, data) -> "RestoreReport":
        """Check a decoded report; raises :class:`ReportError` naming the first bad field."""
        _want(isinstance(data, dict), "report", "a JSON object", data)
        _want(isinstance(data.get("snapshot"), str), "snapshot", "a string", data.get("snapshot"))
        state = data.get("state")
        _want(state in REPORT_STATES, "state", f"one of {', '.join(REPORT_STATES)}", state)
        files = data.get("files", {})
        _want(isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()),
              "files", "an object of path -> hash", files)
        kernels = data.get("kernels", [])
        _want(isinstance(kernels, list), "kernels", "a list", kernels)
        error = data.get("error")
        _want(error is None or isinstance(error, str), "error", "a string or null", error)
        return cls(snapshot=data["snapshot"], state=state, files=dict(files),
                   kernels=[KernelReport.from_json(k, f"kernels[{i}]") for i, k in enumerate(kernels)],
                   error=error, bytes_total=_count(data.get("bytes_total", 0), "bytes_total"),
                   bytes_received=_count(data.get("bytes_received", 0), "bytes_received"))

    @classmethod
    def decode(cls, body: bytes) -> "RestoreReport":
        """Parse and check a report as sent over the wire (at most :data:`REPORT_MAX` bytes)."""
        if len(body) > REPORT_MAX:
            raise ReportError(f"the restore report is {len(body)} bytes, more than {REPORT_MAX}")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            raise ReportError("the restore report is not JSON") from None
        return cls.from_json(data)
