"""Kernel checkpoint/restore in real IPython kernels (jupyter_client)."""

from __future__ import annotations

import json

import pytest
from jupyter_client.manager import AsyncKernelManager

from cloudhop.extensions.kernelstate import KernelStateError, checkpoint_kernel, restore_kernel


async def start_kernel(cwd):
    km = AsyncKernelManager(kernel_name="python3")
    await km.start_kernel(cwd=str(cwd))
    kc = km.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=60)
    return km, kc


async def run(kc, code: str) -> str:
    """Run a cell as the user would (stored in history); return its stdout."""
    out = []

    def hook(msg):
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    reply = await kc.execute_interactive(code, output_hook=hook, timeout=60)
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(out)


@pytest.fixture
async def kernels(tmp_path):
    started = []

    async def new():
        km, kc = await start_kernel(tmp_path)
        started.append((km, kc))
        return kc, km

    yield new
    for km, kc in started:
        kc.stop_channels()
        await km.shutdown_kernel(now=True)


STATE = """
import numpy as np, pandas as pd, sqlite3
import collections as col
x = 42
arr = np.arange(1_000_000, dtype=np.float32).reshape(1000, 1000)
strided = arr[::2, ::3]
same = arr
d = {"a": 1, "b": [1, 2, 3], "arr": np.ones(5)}
df = pd.DataFrame({"n": range(5), "s": list("abcde")})
def square(v):
    return v * v
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
p = Point(1, 2)
counter = col.Counter("hello")
"""


async def test_checkpoint_and_restore_into_a_fresh_kernel(kernels, tmp_path):
    src, src_km = await kernels()
    await run(src, STATE)
    await run(src, "db = sqlite3.connect(':memory:')\nlabel = 'made ' + str(x)")  # unpicklable: replayed
    await run(src, "gen = (i for i in range(x))")  # generator: pickle and dill both refuse
    await run(src, "x = 43")  # the replayed cell read x; its newer value must win
    before_count = await run(src, "print(len(In))")

    ckpt = tmp_path / "ckpt"
    result = await checkpoint_kernel(src_km.get_connection_info(), str(ckpt))
    assert {"x", "arr", "d", "df", "square", "Point", "p", "np", "pd", "col", "db"} <= set(result["variables"])
    skipped = {s["name"]: s for s in result["skipped"]}
    assert "sqlite3.Connection" in skipped["db"]["reason"] and skipped["db"]["rebuilt"] == "by re-running In[2]"
    assert skipped["gen"]["rebuilt"] is not None  # In[3] reads only x and range
    # the checkpoint left the user's kernel as it was: no new history, no new names
    assert await run(src, "print(len(In))") == str(int(before_count) + 1) + "\n"
    assert "_cloudhop" not in await run(src, "print([n for n in globals() if 'cloudhop' in n])")

    dst, dst_km = await kernels()
    restored = await restore_kernel(dst_km.get_connection_info(), str(ckpt))
    assert set(result["variables"]) <= set(restored["variables"])
    out = await run(dst, """
import json
print(json.dumps({
  "x": x, "sum": float(arr.sum(dtype="float64")), "shape": list(arr.shape), "dtype": str(arr.dtype),
  "writable": arr.flags.writeable, "strided": strided.tolist() == arr[::2, ::3].tolist(),
  "alias": same is arr, "d": [d["a"], d["b"], d["arr"].tolist()], "df": df.to_dict("list"),
  "square": square(7), "p": [p.x, p.y, isinstance(p, Point)], "counter": counter["l"],
  "db": db.execute("select 6*7").fetchone()[0], "label": label, "np": np.__name__, "gen": sum(gen),
}))
""")
    got = json.loads(out)
    assert got == {
        "x": 43, "sum": float(sum(range(1_000_000))), "shape": [1000, 1000], "dtype": "float32",
        "writable": True, "strided": True, "alias": True, "d": [1, [1, 2, 3], [1.0] * 5],
        "df": {"n": [0, 1, 2, 3, 4], "s": list("abcde")}, "square": 49, "p": [1, 2, True],
        "counter": 2, "db": 42, "label": "made 42", "np": "numpy", "gen": sum(range(43)),  # replayed with the x of the checkpoint
    }
    # large arrays are mapped copy-on-write from the checkpoint: they outlive its files,
    # and writing to them never changes the checkpoint
    import shutil

    shutil.rmtree(ckpt)
    assert (await run(dst, "arr[0, 0] = -7.0\nprint(arr[0, 0], same is arr)")).split() == ["-7.0", "True"]
    again, again_km = await kernels()
    await checkpoint_kernel(dst_km.get_connection_info(), str(ckpt))
    await restore_kernel(again_km.get_connection_info(), str(ckpt))
    await run(dst, "arr[0, 0] = 5.0")
    assert (await run(again, "print(arr[0, 0], arr[0, 1])")).split() == ["-7.0", "1.0"]


SHARING = """
import numpy as np
class Trainer:
    def __init__(self, cfg, data):
        self.cfg, self.data = cfg, data
cfg = {"lr": 0.1, "layers": [64, 64]}
data = np.arange(10.0)
trainer = Trainer(cfg, data)
view = {"data": data, "layers": cfg["layers"]}
lonely = [1, 2, 3]
"""


async def test_variables_that_share_objects_still_share_them_after_a_restore(kernels, tmp_path):
    src, src_km = await kernels()
    await run(src, SHARING)
    result = await checkpoint_kernel(src_km.get_connection_info(), str(tmp_path / "c"))
    assert {"cfg", "data", "trainer", "view", "lonely", "Trainer"} <= set(result["variables"])
    entries = json.loads((tmp_path / "c" / "state.json").read_text())["entries"]
    groups = [sorted(e["names"]) for e in entries if e["kind"] in ("pickle", "dill") and "names" in e]
    assert groups == [["cfg", "data", "trainer", "view"]], "only the variables that share go together"
    dst, dst_km = await kernels()
    await restore_kernel(dst_km.get_connection_info(), str(tmp_path / "c"))
    out = await run(dst, "cfg['lr'] = 0.5\ndata[0] = -1.0\n"
                         "print(trainer.cfg is cfg, trainer.data is data, view['data'] is data, "
                         "view['layers'] is cfg['layers'], trainer.cfg['lr'], view['data'][0], lonely)")
    assert out.split(maxsplit=6) == ["True", "True", "True", "True", "0.5", "-1.0", "[1, 2, 3]\n"]


async def test_what_cannot_be_saved_or_rebuilt_is_reported_with_the_reason(kernels, tmp_path):
    src, src_km = await kernels()
    await run(src, "import socket\nkeep = 5\ntmp = 'gone'")
    # the cell that made the socket read a name that no longer exists, so it is not replayed
    await run(src, "sock = socket.socket()\nsock_tag = tmp")
    await run(src, "del tmp")
    result = await checkpoint_kernel(src_km.get_connection_info(), str(tmp_path / "c"))
    skipped = {s["name"]: s for s in result["skipped"]}
    assert skipped["sock"]["rebuilt"] is None
    assert "cannot pickle 'socket'" in skipped["sock"]["reason"] and "reads tmp" in skipped["sock"]["reason"]
    assert "keep" in result["variables"] and "sock" not in result["variables"]
    dst, dst_km = await kernels()
    restored = await restore_kernel(dst_km.get_connection_info(), str(tmp_path / "c"))
    assert "sock" in {s["name"] for s in restored["skipped"]}
    assert (await run(dst, "print(keep, sock_tag, 'sock' in globals())")).split() == ["5", "gone", "False"]


async def test_restore_reports_a_damaged_checkpoint(kernels, tmp_path):
    dst, dst_km = await kernels()
    with pytest.raises(KernelStateError, match="state.json"):
        await restore_kernel(dst_km.get_connection_info(), str(tmp_path / "nothing-here"))


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


@pytest.mark.skipif(not _has_torch(), reason="PyTorch is not installed")
async def test_tensors_come_back_with_dtype_shape_grad_and_device(kernels, tmp_path):
    src, src_km = await kernels()
    await run(src, """
import torch
t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
half = torch.linspace(0, 1, 5, dtype=torch.bfloat16)
w = torch.nn.Parameter(torch.full((2, 2), 0.5))
view = t[:, 1]
layer = torch.nn.Linear(2, 3)
gpu = torch.ones(4, device="cuda") if torch.cuda.is_available() else None
""")
    expected = await run(src, "print(t.sum().item(), half.tolist(), w.requires_grad, view.tolist(), "
                              "layer(torch.ones(1, 2)).shape, gpu.device.type if gpu is not None else None)")
    result = await checkpoint_kernel(src_km.get_connection_info(), str(tmp_path / "c"))
    assert {"t", "half", "w", "view", "layer", "torch"} <= set(result["variables"])
    dst, dst_km = await kernels()
    restored = await restore_kernel(dst_km.get_connection_info(), str(tmp_path / "c"))
    got = await run(dst, "print(t.sum().item(), half.tolist(), w.requires_grad, view.tolist(), "
                         "layer(torch.ones(1, 2)).shape, gpu.device.type if gpu is not None else None)")
    assert got == expected
    assert (await run(dst, "print(type(w).__name__, half.dtype, t.is_contiguous())")).split() == \
        ["Parameter", "torch.bfloat16", "True"]
    # a tensor that lived on a GPU comes back on the CPU where there is none, and says so
    state_path = tmp_path / "c" / "state.json"
    state = json.loads(state_path.read_text())
    for entry in state["entries"]:
        if entry.get("name") == "t":
            entry["device"] = "cuda:1"
    state_path.write_text(json.dumps(state))
    other, other_km = await kernels()
    restored = await restore_kernel(other_km.get_connection_info(), str(tmp_path / "c"))
    if "no GPU" in await run(other, "print('GPU' if torch.cuda.is_available() else 'no GPU')"):
        note = {s["name"]: s for s in restored["skipped"]}["t"]
        assert "was on cuda:1; no GPU here, restored on the CPU" == note["reason"]
        assert (await run(other, "print(t.device.type, t.sum().item())")).split() == ["cpu", "66.0"]
    else:
        assert (await run(other, "print(t.device.type)")).strip() == "cuda"


NESTED = """
import torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.BatchNorm1d(512), torch.nn.Linear(512, 2))
opt = torch.optim.Adam(model.parameters(), lr=0.01)
model(torch.randn(8, 512)).sum().backward()
opt.step()
run = {"model": model, "opt": opt}            # the same model and optimizer under another name
bag = {"ids": torch.arange(5), "pair": [torch.ones(2, dtype=torch.bfloat16), torch.zeros(3) + 1j]}
"""

SUMMARY = ("print(round(model[0].weight.sum().item(), 4), round(model[1].running_mean.sum().item(), 4), "
           "opt.state_dict()['state'][0]['step'].item(), bag['ids'].tolist(), bag['pair'][0].dtype, "
           "bag['pair'][1].tolist(), run['opt'].param_groups[0]['params'][0] is run['model'][0].weight)")


@pytest.mark.skipif(not _has_torch(), reason="PyTorch is not installed")
async def test_tensors_inside_modules_optimizers_and_containers_come_back(kernels, tmp_path):
    src, src_km = await kernels()
    await run(src, NESTED)
    expected = await run(src, SUMMARY)
    result = await checkpoint_kernel(src_km.get_connection_info(), str(tmp_path / "c"))
    assert {"model", "opt", "run", "bag"} <= set(result["variables"]) and not result["skipped"]
    # the tensors' bytes went to the raw buffers file, not into the pickle streams
    assert (tmp_path / "c" / "objects.bin").stat().st_size < 200_000 < (tmp_path / "c" / "buffers.bin").stat().st_size
    dst, dst_km = await kernels()
    restored = await restore_kernel(dst_km.get_connection_info(), str(tmp_path / "c"))
    assert {"model", "opt", "run", "bag"} <= set(restored["variables"])
    assert await run(dst, SUMMARY) == expected
    # variables that shared objects still share them: the optimizer holds the model's parameters
    assert (await run(dst, "print(run['model'] is model, run['opt'] is opt, "
                           "opt.param_groups[0]['params'][0] is model[0].weight)")).split() == ["True"] * 3
    # training goes on where it stopped: the restored optimizer updates the restored model
    step = "m, o = run['model'], run['opt']\nm(torch.randn(8, 512)).sum().backward()\nw0 = m[0].weight.clone()\no.step()\n"
    assert (await run(dst, step + "print(o.state_dict()['state'][0]['step'].item(), "
                               "bool((m[0].weight != w0).any()), m[0].weight.device.type)")).split() == \
        ["2.0", "True", "cpu"]


@pytest.mark.skipif(not _has_torch(), reason="PyTorch is not installed")
async def test_nested_gpu_tensors_come_back_on_the_cpu_where_there_is_no_gpu(kernels, tmp_path):
    src, src_km = await kernels()
    # An object that pickles exactly as a CUDA tensor nested in a container does (its
    # bytes and the device record 'cuda:0'), so the CPU-only path runs without a GPU.
    await run(src, """
import sys, torch
class SavedOnGPU:
    def __init__(self, values):
        self.values = values
    def __reduce__(self):
        t = torch.tensor(self.values, dtype=torch.float32)
        return sys.modules["_cloudhop_kernelstate"].rebuild_tensor, (
            t.numpy().tobytes(), "float32", list(t.shape), "cuda:0", False, False)
weights = {"layer": SavedOnGPU([1.0, 2.0, 3.0]), "step": 7}
plain = [torch.ones(2)]
""")
    result = await checkpoint_kernel(src_km.get_connection_info(), str(tmp_path / "c"))
    assert {"weights", "plain"} <= set(result["variables"])
    dst, dst_km = await kernels()
    restored = await restore_kernel(dst_km.get_connection_info(), str(tmp_path / "c"))
    assert {"weights", "plain"} <= set(restored["variables"])
    notes = {s["name"]: s for s in restored["skipped"]}
    assert "plain" not in notes  # CPU tensors stay where they were, nothing to say
    got = (await run(dst, "print(type(weights['layer']).__name__, weights['layer'].device.type, "
                          "weights['layer'].tolist(), weights['step'])")).strip().split(maxsplit=2)
    if "no GPU" in await run(dst, "print('GPU' if torch.cuda.is_available() else 'no GPU')"):
        assert notes["weights"] == {"name": "weights", "reason": "was on cuda:0; no GPU here, restored on the CPU",
                                    "rebuilt": "on the CPU"}
        assert got == ["Tensor", "cpu", "[1.0, 2.0, 3.0] 7"]
    else:
        assert "weights" not in notes and got == ["Tensor", "cuda", "[1.0, 2.0, 3.0] 7"]
