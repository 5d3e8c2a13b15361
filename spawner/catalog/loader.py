"""Parse the catalog's CSV tables into :class:`~cloudhop.spawner.offers.Offer` objects.

Two table shapes exist (see ``data/README.md``):

* **instance rows** (``aws.csv``, ``gcp.csv``, ``oci.csv``, ``lambda.csv``, ``azure.csv``,
  ``digitalocean.csv``):
  ``cloud, instance_type, accelerator, accelerator_count, accelerator_memory_gib,
  vcpus, memory_gib, price_hour, spot_price_hour, region, zones`` — one launchable
  instance type in one region, priced whole.
* **attachable accelerator rows** (``gcp_n1_accelerators.csv``): ``cloud, accelerator,
  accelerator_count, accelerator_memory_gib, accelerator_price_hour,
  accelerator_spot_price_hour, region, zones`` — GPUs that attach to a GCP N1 host.
  :mod:`.attached` turns them into host-plus-accelerator offers.

The functions here are pure: a path (or text) in, rows or offers out. Caching and
operator settings live in :mod:`.catalog`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from ..offers import Offer

DATA_DIR = Path(__file__).parent / "data"

INSTANCE_COLUMNS = (
    "cloud", "instance_type", "accelerator", "accelerator_count", "accelerator_memory_gib",
    "vcpus", "memory_gib", "price_hour", "spot_price_hour", "region", "zones",
)
ATTACHED_COLUMNS = (
    "cloud", "accelerator", "accelerator_count", "accelerator_memory_gib",
    "accelerator_price_hour", "accelerator_spot_price_hour", "region", "zones",
)

# Accelerators in the data that are not NVIDIA GPUs. The spawn form is about GPUs a
# notebook can use through CUDA; these are dropped unless an operator keeps them.
_NON_NVIDIA_WORDS = ("inferentia", "trainium", "gaudi", "qualcomm", "radeon", "virtex", "fpga", "tpu")

# Things a user should know before launching, keyed by accelerator (casefolded).
_NOTES = {
    "t4g": "Arm (Graviton) host",
    "h100-mega": "H100 with more network bandwidth (a3-megagpu)",
}


class CatalogError(ValueError):
    """A catalog table is malformed. ``field`` names the column, ``where`` the file and
    line, so an operator can fix an override file."""

    def __init__(self, where: str, field: str, message: str):
        self.where = where
        self.field = field
        super().__init__(f"{where}: {field}: {message}")


def is_nvidia(accelerator: str) -> bool:
    """False for the data's non-NVIDIA accelerators (Inferentia, Trainium, FPGAs, ...)."""
    low = accelerator.casefold()
    return not any(word in low for word in _NON_NVIDIA_WORDS)


@dataclass(frozen=True)
class AttachedRow:
    """One row of ``gcp_n1_accelerators.csv``: accelerators without their host."""

    cloud: str
    accelerator: str
    count: int
    memory_gib: float | None
    price_hour: float | None
    spot_price_hour: float | None
    region: str
    zones: tuple


def _number(where: str, field: str, text: str, *, integer: bool = False, optional: bool = True):
    text = (text or "").strip()
    if text == "":
        if optional:
            return None
        raise CatalogError(where, field, "is empty")
    try:
        value = float(text)
    except ValueError:
        raise CatalogError(where, field, f"{text!r} is not a number") from None
    if value < 0 or value != value:
        raise CatalogError(where, field, f"{text!r} must be zero or more")
    if integer:
        if value != int(value):
            raise CatalogError(where, field, f"{text!r} is not a whole number")
        return int(value)
    # whole numbers read back as ints so tables and JSON show "96", not "96.0"
    return int(value) if value == int(value) and "." not in text else value


def _zones(text: str) -> tuple:
    return tuple(z.strip() for z in (text or "").split(";") if z.strip())


def _reader(text: str, where: str, columns: tuple) -> csv.DictReader:
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in columns if c not in (reader.fieldnames or ())]
    if missing:
        raise CatalogError(where, missing[0], f"column missing; the header must have {', '.join(columns)}")
    return reader


def table_kind(text: str) -> str:
    """``"instances"`` or ``"attached"`` from a table's header line."""
    header = text.split("\n", 1)[0]
    return "attached" if "accelerator_price_hour" in header else "instances"


def parse_instances(text: str, where: str = "<csv>", *, keep_non_nvidia: bool = False) -> list[Offer]:
    """Offers from an instance table. ``where`` names the source in errors."""
    offers = []
    for line, row in enumerate(_reader(text, where, INSTANCE_COLUMNS), start=2):
        at = f"{where}:{line}"
        cloud = (row["cloud"] or "").strip()
        itype = (row["instance_type"] or "").strip()
        region = (row["region"] or "").strip()
        for field, value in (("cloud", cloud), ("instance_type", itype), ("region", region)):
            if not value:
                raise CatalogError(at, field, "is empty")
        gpu = (row["accelerator"] or "").strip() or "none"
        if not keep_non_nvidia and not is_nvidia(gpu):
            continue
        count = _number(at, "accelerator_count", row["accelerator_count"], integer=True) or 0
        note = _NOTES.get(gpu.casefold(), "")
        if not is_nvidia(gpu):
            note = "not an NVIDIA GPU"
        offers.append(Offer(
            provider=cloud,
            region=region,
            instance_type=itype,
            gpu=gpu,
            gpu_count=count if gpu != "none" else 0,
            gpu_memory_gib=_number(at, "accelerator_memory_gib", row["accelerator_memory_gib"]),
            vcpus=_number(at, "vcpus", row["vcpus"]),
            memory_gib=_number(at, "memory_gib", row["memory_gib"]),
            price_hour=_number(at, "price_hour", row["price_hour"], optional=False),
            spot_price_hour=_number(at, "spot_price_hour", row["spot_price_hour"]),
            zones=_zones(row["zones"]),
            note=note,
        ))
    return offers


def parse_attached(text: str, where: str = "<csv>") -> list[AttachedRow]:
    """Rows of an attachable-accelerator table."""
    rows = []
    for line, row in enumerate(_reader(text, where, ATTACHED_COLUMNS), start=2):
        at = f"{where}:{line}"
        accel = (row["accelerator"] or "").strip()
        region = (row["region"] or "").strip()
        if not accel:
            raise CatalogError(at, "accelerator", "is empty")
        if not region:
            raise CatalogError(at, "region", "is empty")
        count = _number(at, "accelerator_count", row["accelerator_count"], integer=True, optional=False)
        if count < 1:
            raise CatalogError(at, "accelerator_count", "must be at least 1")
        rows.append(AttachedRow(
            cloud=(row["cloud"] or "gcp").strip() or "gcp",
            accelerator=accel,
            count=count,
            memory_gib=_number(at, "accelerator_memory_gib", row["accelerator_memory_gib"]),
            price_hour=_number(at, "accelerator_price_hour", row["accelerator_price_hour"], optional=False),
            spot_price_hour=_number(at, "accelerator_spot_price_hour", row["accelerator_spot_price_hour"]),
            region=region,
            zones=_zones(row["zones"]),
        ))
    return rows


def read_text(path: Path | str) -> str:
    return Path(path).read_text(encoding="utf-8")
