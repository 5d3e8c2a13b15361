"""A test double of NVML with pynvml's API, for machines without NVIDIA GPUs.

The devices come from the environment variable ``CLOUDHOP_FAKE_GPUS`` (JSON list of
``{"name", "memory_gib", "uuid", "mig": [{"name", "memory_gib", "uuid"}...]}``), so a hub
started in a subprocess sees the same fake GPUs as the test that set it. With the
variable unset, ``nvmlInit`` fails the way it does on a machine without a driver.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace


class NVMLError(Exception):
    pass


def _devices() -> list[dict]:
    raw = os.environ.get("CLOUDHOP_FAKE_GPUS")
    if raw is None:
        raise NVMLError("NVML Shared Library Not Found")
    return json.loads(raw)


def nvmlInit():
    _devices()


def nvmlShutdown():
    pass


def nvmlDeviceGetCount():
    return len(_devices())


def nvmlDeviceGetHandleByIndex(i):
    return _devices()[i]


def nvmlDeviceGetName(h):
    return h["name"]


def nvmlDeviceGetUUID(h):
    return h["uuid"]


def nvmlDeviceGetMemoryInfo(h):
    total = int(h["memory_gib"] * 2**30)
    return SimpleNamespace(total=total, free=total, used=0)


def nvmlDeviceGetMigMode(h):
    if "mig" not in h:
        raise NVMLError("Not Supported")
    return (1, 1)


def nvmlDeviceGetMaxMigDeviceCount(h):
    return 7


def nvmlDeviceGetMigDeviceHandleByIndex(h, j):
    try:
        return h["mig"][j]
    except IndexError:
        raise NVMLError("Not Found") from None


def fake_gpus_env(*names: str, memory_gib: float = 15.0) -> dict:
    """Environment for a hub whose local provider sees these fake GPUs."""
    gpus = [{"name": n, "memory_gib": memory_gib, "uuid": f"GPU-fake-{i:04d}"} for i, n in enumerate(names)]
    return {"CLOUDHOP_FAKE_GPUS": json.dumps(gpus)}
