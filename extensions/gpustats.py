"""Live use of this server's GPUs, read through NVML, for ``GET {server}/cloudhop/api/gpus``
(the JupyterLab sidebar's GPU panel).

Only the devices this server was given: with ``CUDA_VISIBLE_DEVICES`` set (the local
provider sets it to the UUIDs of the GPUs it assigned, and to "" for none), the devices it
names, by UUID or by index; unset (a cloud VM or a pod of its own), every device NVML
reports. MIG devices are listed as their own devices, as the spawner counts them
(:mod:`cloudhop.spawner.gpus`).

Nothing here fails for want of a GPU: :func:`sample` answers ``{"gpus": [], "reason":
"..."}`` saying why (no NVML library, no driver, no device, none given to this server).
A value NVML does not report for a device (utilisation of a MIG device) is None.
NVML calls block: the handler runs :func:`sample` in a thread.
"""

from __future__ import annotations

import importlib
import os

from cloudhop.spawner.gpus import _mig_devices, _text


def _visible(env) -> list[str] | None:
    """The devices ``CUDA_VISIBLE_DEVICES`` names (UUIDs or indexes); None when unset."""
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    return [d.strip() for d in raw.split(",") if d.strip()]


def _handles(nvml) -> list[tuple[str, object]]:
    """``(index, handle)`` of every device, MIG devices expanded ("0/1": MIG 1 of GPU 0)."""
    out = []
    for i in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        migs = _mig_devices(nvml, handle)
        out += [(f"{i}/{j}", m) for j, m in enumerate(migs)] if migs else [(str(i), handle)]
    return out


def _reading(call, *args):
    """One NVML reading, or None where this device does not report it."""
    try:
        return call(*args)
    except Exception:  # noqa: BLE001 - NVML's own errors: "Not Supported" for this device
        return None


def _device(nvml, index: str, handle) -> dict:
    mem = _reading(nvml.nvmlDeviceGetMemoryInfo, handle)
    util = _reading(nvml.nvmlDeviceGetUtilizationRates, handle)
    temp = _reading(nvml.nvmlDeviceGetTemperature, handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
    return {
        "index": index, "uuid": _text(nvml.nvmlDeviceGetUUID(handle)), "name": _text(nvml.nvmlDeviceGetName(handle)),
        "utilization": None if util is None else int(util.gpu),
        "memory_used": None if mem is None else int(mem.used),
        "memory_total": None if mem is None else int(mem.total),
        "temperature": None if temp is None else int(temp),
    }


def sample(nvml_module: str = "pynvml", env=os.environ) -> dict:
    """This server's GPUs now: ``{"gpus": [{"index", "uuid", "name", "utilization"
    (percent), "memory_used", "memory_total" (bytes), "temperature" (°C)}], "reason"}``;
    ``reason`` is None when there are GPUs, else a sentence for the user."""
    visible = _visible(env)
    if visible == []:
        return {"gpus": [], "reason": "this server was started without a GPU (CUDA_VISIBLE_DEVICES is empty)"}
    try:
        nvml = importlib.import_module(nvml_module)
        nvml.nvmlInit()
    except Exception as err:  # noqa: BLE001 - no library, no driver, no device: said why
        return {"gpus": [], "reason": f"no NVIDIA GPU on this server (NVML: {_text(err) or type(err).__name__})"}
    try:
        handles = _handles(nvml)
        if visible is not None:
            wanted = set(visible)
            handles = [(i, h) for i, h in handles if i in wanted or _text(nvml.nvmlDeviceGetUUID(h)) in wanted]
        gpus = [_device(nvml, i, h) for i, h in handles]
    except Exception as err:  # noqa: BLE001 - a reading that fails is said, not a 500
        return {"gpus": [], "reason": f"NVML failed while reading the GPUs: {_text(err) or type(err).__name__}"}
    finally:
        _reading(nvml.nvmlShutdown)
    if gpus:
        return {"gpus": gpus, "reason": None}
    if visible is None:
        return {"gpus": [], "reason": "no NVIDIA GPU on this server (NVML found no device)"}
    return {"gpus": [], "reason": "NVML does not know this server's GPUs "
                                  f"(CUDA_VISIBLE_DEVICES={','.join(visible)})"}
