"""GPUs on this machine, found through NVML (``nvidia-ml-py``).

A machine without NVIDIA GPUs, without a driver or without the NVML library is not an
error: :func:`detect_gpus` returns an empty list and Cloudhop offers CPU only.

GPU slices:

- **MIG.** A GPU in MIG mode is listed as its MIG devices, never as a whole: each is a
  GPU of its own, model ``<model>-MIG-<profile>`` (``A100-MIG-1g.10gb``, the form shows
  "A100 1g.10gb") with its own memory and UUID (``MIG-...``), which
  ``CUDA_VISIBLE_DEVICES`` accepts. CUDA uses one MIG device per process, so a server
  gets one slice.
- **Time-sharing** of whole GPUs is the local provider's (a region's ``share_gpus``):
  NVML knows nothing of it.
"""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GPU:
    #: position in NVML's enumeration ("0", or "0/1" for MIG device 1 of GPU 0)
    index: str
    #: what CUDA_VISIBLE_DEVICES takes ("GPU-..." or "MIG-...")
    uuid: str
    #: NVML's full name ("NVIDIA H100 80GB HBM3")
    name: str
    #: the catalog's spelling ("H100"), used to match offers
    model: str
    memory_gib: float

    @property
    def is_mig(self) -> bool:
        """A MIG device (a slice of a GPU in MIG mode), not a whole GPU."""
        return "/" in self.index


# (pattern on NVML's name, catalog model); first match wins, so specific names first.
_MODELS = [
    (r"GH200", "GH200"),
    (r"H200", "H200"),
    (r"H100", "H100"),
    (r"A100.*80\s*GB", "A100-80GB"),
    (r"A100", "A100"),
    (r"L40S", "L40S"),
    (r"L40", "L40"),
    (r"\bL4\b", "L4"),
    (r"A10G", "A10G"),
    (r"\bA10\b", "A10"),
    (r"\bT4G?\b", "T4"),
    (r"V100.*32\s*GB", "V100-32GB"),
    (r"V100", "V100"),
    (r"P100", "P100"),
    (r"\bP4\b", "P4"),
    (r"RTX\s*A6000|\bA6000\b", "A6000"),
    (r"RTX\s*6000", "RTX6000"),
]


def model_name(nvml_name: str) -> str:
    """Map NVML's device name to the catalog's accelerator name (``H100``, ``A100-80GB``).
    Unknown devices keep their name without the vendor prefix, spaces as dashes."""
    for pattern, model in _MODELS:
        if re.search(pattern, nvml_name, re.IGNORECASE):
            if "MIG" in nvml_name.upper():
                profile = re.search(r"(\d+g\.\d+gb)", nvml_name, re.IGNORECASE)
                return f"{model}-MIG-{profile.group(1)}" if profile else f"{model}-MIG"
            return model
    short = re.sub(r"^NVIDIA\s+", "", nvml_name.strip(), flags=re.IGNORECASE)
    return re.sub(r"[^A-Za-z0-9.]+", "-", short).strip("-") or "GPU"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def detect_gpus(nvml_module: str = "pynvml") -> list[GPU]:
    """The GPUs NVML reports, MIG devices expanded; ``[]`` when NVML is unavailable.

    ``nvml_module`` is the import path of an NVML binding with pynvml's API (the tests
    pass a double)."""
    return probe_gpus(nvml_module)[0]


def probe_gpus(nvml_module: str = "pynvml") -> tuple[list[GPU], str | None]:
    """:func:`detect_gpus`'s GPUs and, when there are none, why, in words a user reads
    beside "No GPU" in the spawn form: ``no NVIDIA GPU found on this machine (NVML:
    NVML Shared Library Not Found)``."""
    try:
        nvml = importlib.import_module(nvml_module)
    except Exception as err:  # nvidia-ml-py missing: CPU only
        log.info("No NVIDIA GPUs visible (%s); offering CPU only", err)
        return [], f"no NVIDIA GPU found on this machine (NVML could not be loaded: {err})"
    try:
        nvml.nvmlInit()
    except Exception as err:  # no library, no driver, no device: CPU only
        log.info("No NVIDIA GPUs visible (%s); offering CPU only", err)
        return [], f"no NVIDIA GPU found on this machine (NVML: {_text(err) or type(err).__name__})"
    gpus: list[GPU] = []
    why = None
    try:
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            migs = _mig_devices(nvml, handle)
            if migs:
                for j, mig in enumerate(migs):
                    gpus.append(_gpu(nvml, mig, f"{i}/{j}"))
            else:
                gpus.append(_gpu(nvml, handle, str(i)))
    except Exception as err:
        log.warning("NVML failed while listing GPUs: %s", err)
        why = f"NVML failed while listing this machine's GPUs ({_text(err) or type(err).__name__})"
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
    if not gpus and why is None:
        why = "no NVIDIA GPU found on this machine (NVML sees none)"
    return gpus, (why if not gpus else None)


def _gpu(nvml, handle, index: str) -> GPU:
    name = _text(nvml.nvmlDeviceGetName(handle))
    mem = nvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30
    return GPU(index=index, uuid=_text(nvml.nvmlDeviceGetUUID(handle)), name=name,
               model=model_name(name), memory_gib=round(mem, 1))


def _mig_devices(nvml, handle) -> list:
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except Exception:  # not MIG-capable
        return []
    if not current:
        return []
    out = []
    for j in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            out.append(nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, j))
        except Exception:  # empty slot
            continue
    return out
