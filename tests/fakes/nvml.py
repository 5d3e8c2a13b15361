"""A test double of NVML with pynvml's API, for machines without NVIDIA GPUs.

The devices come from the environment variable ``CLOUDHOP_FAKE_GPUS`` (JSON list of
``{"name", "memory_gib", "uuid", "mig": [{"name", "memory_gib", "uuid"}...], "mig_mode"}``),
so a hub started in a subprocess sees the same fake GPUs as the test that set it. A
device with a ``mig`` list is MIG-capable; ``"mig_mode": 0`` says MIG is off (NVML then
reports the whole GPU). With the variable unset, ``nvmlInit`` fails the way it does on a
machine without a driver.
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


def nvmlDeviceGetUtilizationRates(h):
    """``"utilization"`` (percent, default 0) of the device's dict."""
    return SimpleNamespace(gpu=int(h.get("utilization", 0)), memory=0)


def nvmlDeviceGetTemperature(h, sensor=0):
    return int(h.get("temperature", 40))


def nvmlDeviceGetMigMode(h):
    if "mig" not in h:
        raise NVMLError("Not Supported")
    mode = int(h.get("mig_mode", 1))
    return (mode, mode)


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


#: NVIDIA's MIG profiles of an A100 80GB: profile -> (memory GiB, how many fit on one GPU)
A100_80GB_MIG = {"1g.10gb": (9.75, 7), "2g.20gb": (19.62, 3), "3g.40gb": (39.38, 2), "7g.80gb": (79.25, 1)}


def mig_gpu(i: int, profile: str = "1g.10gb", count: int | None = None, *,
            name: str = "NVIDIA A100-SXM4-80GB") -> dict:
    """One fake A100 80GB in MIG mode, cut into ``count`` slices of ``profile`` (as many
    as fit by default), each with its own ``MIG-`` UUID."""
    memory, fits = A100_80GB_MIG[profile]
    count = fits if count is None else count
    return {"name": name, "memory_gib": 80.0, "uuid": f"GPU-fake-{i:04d}",
            "mig": [{"name": f"{name} MIG {profile}", "memory_gib": memory, "uuid": f"MIG-fake-{i:04d}-{j}"}
                    for j in range(count)]}


def fake_env(*gpus: dict) -> dict:
    """Environment for a hub whose local provider sees these fake GPU dicts."""
    return {"CLOUDHOP_FAKE_GPUS": json.dumps(list(gpus))}
