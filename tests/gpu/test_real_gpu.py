"""Cloudhop on a machine with a real NVIDIA GPU: NVML, a spawned server's CUDA, a Ray GPU
task, and GPU tensors carried through a hibernate and a move.

Every test here skips where NVML sees no GPU (CI, a laptop), so the suite stays the same
everywhere; on a GPU machine run them alone:

    CLOUDHOP_GPU_REPORT=gpu-report.json pytest -m gpu -n 0 -s tests/gpu

Each test appends what it saw (device names, UUIDs, times in seconds) to the JSON file
``CLOUDHOP_GPU_REPORT`` names, for the record; nothing asserts a time. The notebook
kernels need PyTorch with CUDA (the checks skip without it); the Ray test needs Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from cloudhop.spawner.gpus import probe_gpus

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]

GPUS, NO_GPU_WHY = probe_gpus("pynvml")
if not GPUS:
    pytest.skip(f"no real GPU: {NO_GPU_WHY}", allow_module_level=True)

#: the catalog name of this machine's first GPU (``H100``, ``H200``, ``A100-80GB``)
MODEL = GPUS[0].model
WHOLE = [g for g in GPUS if not g.is_mig]


def record(name: str, **figures) -> None:
    """Print ``figures`` and add them to the report file, if one is named."""
    print(f"\n[gpu] {name}: {json.dumps(figures, default=str)}")
    path = os.environ.get("CLOUDHOP_GPU_REPORT")
    if not path:
        return
    try:
        report = json.loads(open(path).read())
    except (OSError, ValueError):
        report = {}
    report[name] = figures
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=str)


def torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


needs_torch = pytest.mark.skipif(not torch_cuda(), reason="PyTorch with CUDA is not installed here")


def test_nvml_lists_the_real_gpus_as_nvidia_smi_does():
    """NVML through Cloudhop's probe: the same devices, names and memory nvidia-smi reports."""
    assert GPUS and all(g.uuid.startswith(("GPU-", "MIG-")) and g.memory_gib > 0 for g in GPUS)
    figures = {"gpus": [{"index": g.index, "uuid": g.uuid, "name": g.name, "model": g.model,
                         "memory_gib": g.memory_gib, "mig": g.is_mig} for g in GPUS]}
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=uuid,name,memory.total,mig.mode.current,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=60).stdout
        rows = [[c.strip() for c in line.split(",")] for line in out.strip().splitlines()]
        figures["nvidia_smi"] = rows
        smi = {r[0]: r for r in rows}
        for g in WHOLE:
            assert g.uuid in smi, (g, rows)
            assert smi[g.uuid][1] == g.name
            mib = float(smi[g.uuid][2].split()[0])
            assert abs(mib / 1024 - g.memory_gib) < 0.2, (mib, g.memory_gib)
    import pynvml
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        try:
            current, pending = pynvml.nvmlDeviceGetMigMode(handle)
            figures["mig_mode"] = {"current": current, "pending": pending}
        except pynvml.NVMLError as err:
            figures["mig_mode"] = f"not supported: {err}"
    finally:
        pynvml.nvmlShutdown()
    figures["device_files"] = {p: oct(os.stat(p).st_mode & 0o777) for p in sorted(os.listdir("/dev"))
                               if p.startswith("nvidia")} if os.path.isdir("/dev") else {}
    record("nvml", **figures)


@needs_torch
def test_a_spawned_server_sees_its_gpu_and_a_cpu_server_sees_none(hub_factory):
    """The GPU server's kernel runs CUDA on exactly the GPU it was given; a "none" server's
    kernel sees no GPU at all; a second GPU request past the machine's GPUs is a 503."""
    hub = hub_factory('c.LocalProvider.regions = {"local": {"gpus": "all"}}\n')
    t0 = time.monotonic()
    hub.spawn("ada", {"provider": "local", "gpu": MODEL, "gpu_count": 1})
    spawn_s = time.monotonic() - t0
    k = hub.kernel("ada")
    seen = json.loads(k.execute(
        "import json, os, time, torch\n"
        "t0 = time.perf_counter(); a = torch.randn(4096, 4096, device='cuda'); b = a @ a; "
        "torch.cuda.synchronize(); first = time.perf_counter() - t0\n"
        "print(json.dumps({'visible': os.environ.get('CUDA_VISIBLE_DEVICES'), 'available': torch.cuda.is_available(),"
        " 'count': torch.cuda.device_count(), 'name': torch.cuda.get_device_name(0),"
        " 'finite': bool(torch.isfinite(b).all()), 'first_matmul_s': first})",
        timeout=300))
    k.close()
    assert seen["available"] and seen["count"] == 1 and seen["finite"], seen
    assert seen["visible"] == WHOLE[0].uuid and seen["name"] == WHOLE[0].name, seen

    hub.spawn("bob", {"provider": "local", "gpu": "none"})
    k = hub.kernel("bob")
    none = json.loads(k.execute("import json, os, torch\nprint(json.dumps({'visible': os.environ.get("
                                "'CUDA_VISIBLE_DEVICES'), 'available': torch.cuda.is_available()}))", timeout=120))
    k.close()
    assert none["available"] is False, none

    if len(WHOLE) == 1:
        hub.ensure_user("cy")
        r = hub.api("POST", "/users/cy/server", json={"provider": "local", "gpu": MODEL, "gpu_count": 1})
        assert r.status_code == 503 and "capacity" in r.json()["message"], r.text
    record("spawned_server", spawn_to_ready_s=round(spawn_s, 2), gpu_kernel=seen, cpu_kernel=none)


STATE = ("import torch\n"
         "g = torch.Generator(device='cuda').manual_seed(7)\n"
         "w = torch.randn(2048, 2048, device='cuda', generator=g)\n"
         "big = torch.ones(64, 1024, 1024, device='cuda', dtype=torch.float16)  # 128 MiB on the GPU\n"
         "cpu = torch.arange(10)\n")
SHOW = ("import json\nprint(json.dumps({'w': [w.device.type, round(float(w.double().sum()), 3)],"
        " 'big': [big.device.type, str(big.dtype), float(big.float().sum())],"
        " 'cpu': [cpu.device.type, cpu.tolist()]}))")


def _session(hub, user, server=""):
    r = hub.server_api("POST", user, "api/sessions", server, json={
        "path": "gpu.ipynb", "name": "gpu.ipynb", "type": "notebook", "kernel": {"name": "python3"}})
    assert r.status_code == 201, r.text
    return r.json()["kernel"]["id"]


def _kernel_of_session(hub, user, server=""):
    sessions = hub.server_api("GET", user, "api/sessions", server).json()
    assert [s["path"] for s in sessions] == ["gpu.ipynb"], sessions
    return hub.kernel(user, server, kernel_id=sessions[0]["kernel"]["id"])


@needs_torch
def test_gpu_tensors_come_back_on_the_gpu_after_a_hibernate_and_a_move(hub_factory):
    """A kernel holding CUDA tensors: stop (hibernate, the workspace deleted) and start
    again, then move to the other region; each time the tensors are back on the GPU with
    the same values. The regions time-share the GPU, so a move's target starts beside its
    source on a one-GPU machine."""
    hub = hub_factory('c.LocalProvider.regions = {'
                      '"site-a": {"gpus": "all", "ephemeral": True, "share_gpus": 2},'
                      '"site-b": {"gpus": "all", "ephemeral": True, "share_gpus": 2}}\n'
                      'c.CloudhopMigration.stop_delay = 5\n')
    shared = f"{MODEL}-shared"
    site_a = {"provider": "local", "region": "site-a", "gpu": shared, "gpu_count": 1}
    hub.spawn("ada", site_a)
    k = hub.kernel("ada", kernel_id=_session(hub, "ada"))
    k.execute(STATE, timeout=300)
    before = json.loads(k.execute(SHOW))
    k.close()
    assert before["w"][0] == "cuda" and before["big"][0] == "cuda", before

    t0 = time.monotonic()
    hub.stop_server("ada", timeout=300)
    stop_s = time.monotonic() - t0
    assert "hibernated into snapshot" in hub.log()
    t0 = time.monotonic()
    hub.spawn("ada", site_a, timeout=300)
    start_s = time.monotonic() - t0
    k = _kernel_of_session(hub, "ada")
    after_hibernate = json.loads(k.execute(SHOW))
    k.close()
    assert after_hibernate == before, (before, after_hibernate)

    import requests
    r = hub.api("POST", "/users/ada/tokens", json={"note": "gpu move"})
    token = r.json()["token"]

    def ada(method, path, server="", **kw):
        prefix = f"/user/ada/{server + '/' if server else ''}"
        return requests.request(method, f"{hub.url}{prefix}{path}", timeout=60,
                                headers={"Authorization": f"token {token}"}, **kw)

    t0 = time.monotonic()
    r = ada("POST", "cloudhop/api/migrations", json={"provider": "local", "region": "site-b", "gpu": shared,
                                                      "gpu_count": 1})
    assert r.status_code == 202, r.text
    mid = r.json()["id"]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        m = ada("GET", f"cloudhop/api/migrations/{mid}").json()
        if m["state"] in ("done", "failed"):
            break
        time.sleep(0.5)
    move_s = time.monotonic() - t0
    assert m["state"] == "done", (m, hub.log()[-4000:])
    k = _kernel_of_session(hub, "ada", m["target_server"])
    after_move = json.loads(k.execute(SHOW))
    k.close()
    assert after_move == before, (before, after_move)
    record("tensors_through_hibernate_and_move", stop_hibernate_s=round(stop_s, 2),
           start_restore_s=round(start_s, 2), move_s=round(move_s, 2), bytes_sent=m.get("bytes_sent"),
           values=before)


@needs_torch
def test_a_ray_task_runs_on_the_workers_gpu(hub_factory):
    """A server whose Ray worker holds the GPU: a task asking for one GPU runs on that
    worker and computes on the GPU; the notebook's own node holds none."""
    pytest.importorskip("ray")
    hub = hub_factory('c.LocalProvider.regions = {"local": {"gpus": "all"}}\n')
    t0 = time.monotonic()
    hub.spawn("ada", {"provider": "local", "gpu": "none",
                      "ray": {"workers": 1, "gpu": MODEL, "gpu_count": 1}}, timeout=400)
    spawn_s = time.monotonic() - t0
    k = hub.kernel("ada")
    out = k.execute(
        "import json, os, socket, time, ray\n"
        "ray.init()\n"
        "@ray.remote(num_gpus=1)\n"
        "def on_gpu():\n"
        "    import os, torch\n"
        "    a = torch.randn(2048, 2048, device='cuda')\n"
        "    return {'visible': os.environ.get('CUDA_VISIBLE_DEVICES'), 'name': torch.cuda.get_device_name(0),"
        " 'count': torch.cuda.device_count(), 'sum_finite': bool(torch.isfinite(a @ a).all()),"
        " 'node': ray.get_runtime_context().get_node_id()}\n"
        "t0 = time.perf_counter(); r = ray.get(on_gpu.remote(), timeout=300); task_s = time.perf_counter() - t0\n"
        "here = ray.get_runtime_context().get_node_id()\n"
        "print(json.dumps({'task': r, 'task_s': task_s, 'driver_node': here,"
        " 'cluster_gpus': ray.cluster_resources().get('GPU', 0)}))", timeout=400)
    k.close()
    seen = json.loads(out.strip().splitlines()[-1])
    task = seen["task"]
    assert seen["cluster_gpus"] == 1, seen
    assert task["count"] == 1 and task["name"] == WHOLE[0].name and task["sum_finite"], seen
    assert task["node"] != seen["driver_node"], "the task ran on the worker, not the notebook's node"
    record("ray_gpu_task", spawn_with_ray_s=round(spawn_s, 2), **seen)
