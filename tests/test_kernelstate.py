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
    await run(src, "gen = (i for i in range(x))")  # a generator not started: rebuilt from its code and range
    await run(src, "x = 43")  # the replayed cell read x; its newer value must win
    before_count = await run(src, "print(len(In))")

    ckpt = tmp_path / "ckpt"
    result = await checkpoint_kernel(src_km.get_connection_info(), str(ckpt))
    assert {"x", "arr", "d", "df", "square", "Point", "p", "np", "pd", "col", "db"} <= set(result["variables"])
    skipped = {s["name"]: s for s in result["skipped"]}
    assert "sqlite3.Connection" in skipped["db"]["reason"] and skipped["db"]["rebuilt"] == "by re-running In[2]"
    assert "gen" in result["variables"] and "gen" not in skipped
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
        "counter": 2, "db": 42, "label": "made 42", "np": "numpy", "gen": sum(range(42)),  # as made, when x was 42
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
    # only the variables that share go together; the notebook's class goes with its instance
    assert groups == [["Trainer", "cfg", "data", "trainer", "view"]]
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


DEFINITIONS = """
import abc, enum
from dataclasses import dataclass, field

class Validated(abc.ABC):
    def __set_name__(self, owner, name):
        self.storage_name = name
    def __set__(self, instance, value):
        instance.__dict__[self.storage_name] = self.validate(self.storage_name, value)
    @abc.abstractmethod
    def validate(self, name, value): ...

class Quantity(Validated):
    def validate(self, name, value):
        if value <= 0:
            raise ValueError(f'{name} must be > 0')
        return value

class LineItem:
    weight = Quantity()
    def __init__(self, weight):
        self.weight = weight

class Vector:
    __slots__ = ('__x', '__y')
    def __init__(self, x, y):
        self.__x, self.__y = float(x), float(y)
    @property
    def x(self):
        return self.__x
    def __repr__(self):
        return f'Vector({self.__x}, {self.__y})'

class Vector3(Vector):
    __slots__ = ('z',)
    def __init__(self, x, y, z):
        super().__init__(x, y)
        self.z = z

Suit = enum.IntEnum('Suit', 'spades hearts')

@dataclass(order=True)
class Card:
    rank: int
    suit: Suit = Suit.spades
    seen = set()
    def __post_init__(self):
        type(self).seen.add(self.rank)

def make_averager():
    series = []
    def averager(value):
        series.append(value)
        return sum(series) / len(series)
    return averager

scale = 2
def scaled(v):
    return v * scale          # reads the global when called
double = lambda v: v * 2

item, v3, card = LineItem(10), Vector3(1, 2, 3), Card(7, Suit.hearts)
avg = make_averager()
avg(10), avg(20)
"""

CHECK_DEFINITIONS = """
import json
try:
    LineItem(-1)
    refused = False
except ValueError as err:
    refused = str(err)
try:
    Validated()
    abstract = False
except TypeError:
    abstract = True
try:
    v3.x = 5
except AttributeError as err:
    no_setter = str(err)
scale = 5
print(json.dumps({
  "descriptor": [type(LineItem.__dict__['weight']) is Quantity, issubclass(Quantity, Validated),
                 isinstance(item, LineItem), item.weight, refused, abstract],
  "slots": [repr(v3), isinstance(v3, Vector), v3.z, v3.x, no_setter, type(v3).__mro__[1] is Vector],
  "enum": [card.suit is Suit.hearts, list(Suit), isinstance(card, Card), card < Card(8), sorted(Card.seen)],
  "closure": avg(30), "late_global": scaled(3), "lambda": double(4),
}, default=str))
"""


async def test_what_the_notebook_defined_comes_back_as_one_set_of_classes_and_functions(kernels, tmp_path):
    src, src_km = await kernels()
    await run(src, DEFINITIONS)
    result = await checkpoint_kernel(src_km.get_connection_info(), str(tmp_path / "c"))
    assert not result["skipped"]
    expected = json.loads(await run(src, CHECK_DEFINITIONS))
    dst, dst_km = await kernels()
    restored = await restore_kernel(dst_km.get_connection_info(), str(tmp_path / "c"))
    assert not restored["skipped"] and set(result["variables"]) <= set(restored["variables"])
    # the instances are of the restored classes, the descriptor still validates, the
    # closure keeps its list, a function reads the namespace it finds on the target
    got = json.loads(await run(dst, CHECK_DEFINITIONS))
    assert got == expected
    assert got["closure"] == 20.0 and got["late_global"] == 15 and got["slots"][4] == \
        "property 'x' of 'Vector3' object has no setter"


RANDOM = """
import random, numpy as np, pandas as pd, warnings
random.seed(1); np.random.seed(2)
random.random(); np.random.rand(3)
rng = np.random.default_rng(3); rng.random()
np.set_printoptions(precision=3)
pd.set_option("display.max_rows", 7)
warnings.filterwarnings("ignore", message="quiet please")
"""
DRAW = ("import json, warnings\nwarnings.warn('quiet please')\n"
        "print(json.dumps([random.random(), np.random.rand(2).tolist(), rng.random(), repr(np.array([1/3])), "
        "pd.get_option('display.max_rows')]))")


async def test_random_streams_and_library_settings_continue_after_a_restore(kernels, tmp_path):
    src, src_km = await kernels()
    await run(src, RANDOM)
    result = await checkpoint_kernel(src_km.get_connection_info(), str(tmp_path / "c"))
    assert {"random", "numpy.random", "numpy.printoptions", "pandas.options", "warnings.filters"} <= \
        set(result["modules"])
    expected = await run(src, DRAW)
    dst, dst_km = await kernels()
    await restore_kernel(dst_km.get_connection_info(), str(tmp_path / "c"))
    reply = await dst.execute_interactive(DRAW, output_hook=lambda m: None, timeout=60)
    assert reply["content"]["status"] == "ok"
    assert await run(dst, DRAW.replace("warnings.warn('quiet please')\n", "")) != expected  # streams moved on
    again, again_km = await kernels()
    await restore_kernel(again_km.get_connection_info(), str(tmp_path / "c"))
    got = []

    def hook(msg):
        if msg["msg_type"] == "stream":
            got.append((msg["content"]["name"], msg["content"]["text"]))

    await again.execute_interactive(DRAW, output_hook=hook, timeout=60)
    assert got == [("stdout", expected)], "same draws, same print options, the warning still filtered"
    assert json.loads(expected)[3:] == ["array([0.333])", 7]


GENERATORS = """
def countdown(n, step=1):
    while n > 0:
        yield n
        n -= step
fresh = countdown(5, step=2)           # not started: rebuilt from its code and arguments
k = 10
offset = (i + k for i in range(3))     # not started, reads a global
done = (i for i in [1, 2]); list(done) # finished
half = (i * i for i in [1, 2, 3, 4]); next(half)      # part-way, one loop over a list: continues
running = countdown(9); next(running)  # part-way through a function: cannot move
"""


async def test_generators_move_when_they_would_continue_and_are_listed_when_not(kernels, tmp_path):
    src, src_km = await kernels()
    await run(src, GENERATORS)
    result = await checkpoint_kernel(src_km.get_connection_info(), str(tmp_path / "c"))
    skipped = {s["name"]: s for s in result["skipped"]}
    assert set(skipped) == {"running"}
    assert "part-way through" in skipped["running"]["reason"] and skipped["running"]["rebuilt"] is None
    assert {"fresh", "offset", "done", "half"} <= set(result["variables"])
    dst, dst_km = await kernels()
    restored = await restore_kernel(dst_km.get_connection_info(), str(tmp_path / "c"))
    assert "running" in {s["name"] for s in restored["skipped"]}
    out = await run(dst, "k = 20\nprint(list(fresh), list(offset), list(done), list(half), 'running' in globals(), "
                         "fresh.__qualname__, type(done).__name__)")
    assert out == "[5, 3, 1] [20, 21, 22] [] [4, 9, 16] False countdown generator\n"


def _verified(move_options, source_skipped, target_variables, target_skipped):
    """Run the source's check of a target's restore report for one kernel."""
    from cloudhop.extensions.migrate import Migration, Migrator
    from cloudhop.extensions.snapshot import Manifest
    from cloudhop.extensions.snapshot.protocol import KernelReport, RestoreReport

    m = Migration(id="m1", options={}, move_options=move_options)
    kernels = [{"path": "a.ipynb", "variables": ["x", "model", "db"], "skipped": source_skipped}]
    report = RestoreReport(snapshot="s", state="done", kernels=[
        KernelReport(path="a.ipynb", kernel_name="python3", variables=target_variables, skipped=target_skipped)])
    Migrator._verify(m, Manifest(), kernels, report)
    return m


GEN = {"name": "gen", "reason": "generator gen is part-way through; it cannot be moved", "rebuilt": None}
DB = {"name": "db", "reason": "TypeError: cannot pickle 'sqlite3.Connection' object", "rebuilt": "by re-running In[2]"}


def test_a_move_reports_what_could_not_be_moved_and_goes_on_unless_strict():
    # the source skipped gen; the target could not re-run the cell that made db: both listed
    failed_db = dict(DB, reason="could not be restored: OperationalError: unable to open database", rebuilt=None)
    m = _verified({}, [GEN, DB], ["x", "model"], [GEN, DB, failed_db])
    assert [s["name"] for s in m.skipped] == ["db"] and m.skipped[0]["path"] == "a.ipynb"
    # a variable gone without a reason fails the move
    with pytest.raises(RuntimeError, match="variables missing on the target: model"):
        _verified({}, [GEN], ["x", "db"], [GEN])
    # strict: anything not moved as it was fails it, from the source or the target
    with pytest.raises(RuntimeError, match=r"not moved as they were \(strict move\): gen: generator gen"):
        _verified({"strict": True}, [GEN], ["x", "model", "db"], [GEN])
    with pytest.raises(RuntimeError, match="strict move.*db: could not be restored"):
        _verified({"strict": True}, [], ["x", "model"], [failed_db])
    assert not _verified({"strict": True}, [], ["x", "model", "db"], []).skipped


def test_strict_is_a_move_option_not_sent_to_the_new_server():
    from cloudhop.extensions.migrate import check_options, split_options
    from cloudhop.spawner.schema import OptionError

    assert split_options(check_options({"region": "b", "strict": True})) == ({"region": "b"}, {"strict": True})
    with pytest.raises(OptionError, match="^strict: must be true or false"):
        check_options({"region": "b", "strict": "yes"})


async def test_checkpoints_of_the_previous_format_still_load_and_newer_ones_are_refused(kernels, tmp_path):
    src, src_km = await kernels()
    await run(src, "import random\nx = [1, 2]")
    await checkpoint_kernel(src_km.get_connection_info(), str(tmp_path / "c"))
    state_path = tmp_path / "c" / "state.json"
    state = json.loads(state_path.read_text())
    # format 1 (an older snapshot): the same entries, without module state
    state_path.write_text(json.dumps(dict(state, format=1, entries=[e for e in state["entries"]
                                                                    if e["kind"] != "modstate"])))
    _dst, dst_km = await kernels()
    assert "x" in (await restore_kernel(dst_km.get_connection_info(), str(tmp_path / "c")))["variables"]
    state_path.write_text(json.dumps(dict(state, format=3)))
    with pytest.raises(KernelStateError, match=r"checkpoint format 3 is not one of \(1, 2\)"):
        await restore_kernel(dst_km.get_connection_info(), str(tmp_path / "c"))


def test_what_a_checkpoint_looks_at_for_sharing_leaves_out_immutable_values():
    """Finding variables that share objects reads only what may be shared: a DataFrame
    of 100,000 strings costs its pickling, not a copy of the pickler's whole memo."""
    from cloudhop.extensions.kernelstate import agent

    shared = {"k": [1, 2]}
    value = {"labels": [f"row-{i}" for i in range(100_000)], "shared": shared, "t": (1.5, "x")}
    _data, _oob, memo = agent._dumps(value, False)
    kinds = {type(obj) for _, obj in memo.values()}
    assert kinds == {dict, list}, kinds
    assert id(shared) in memo and id(value["labels"]) in memo


def test_large_buffers_written_and_read_in_pieces_come_back_whole(tmp_path, monkeypatch):
    """A buffer past PARALLEL_MIN is written and read back by several threads, each its
    own piece; with small records and alignment gaps around it every byte comes back."""
    import numpy as np

    from cloudhop.extensions.kernelstate import agent

    monkeypatch.setattr(agent, "PARALLEL_MIN", 1 << 20)
    monkeypatch.setattr(agent.os, "cpu_count", lambda: 4)
    data = np.random.default_rng(1).integers(0, 255, (3 << 20) + 12345, dtype=np.uint8)
    assert len(agent._pieces(data.nbytes)) == 4
    writer = agent._Writer(tmp_path / "buffers.bin")
    spans = [writer.write(b"abc"), writer.write(data, align=agent.ALIGN), writer.write(b"xyz", align=agent.ALIGN),
             writer.write(b"", align=agent.ALIGN)]  # an empty buffer (an empty array's) too
    writer.close()
    assert spans[1][0] % agent.ALIGN == 0 and spans[2][0] % agent.ALIGN == 0
    reader = agent._Reader(tmp_path / "buffers.bin")
    try:
        assert bytes(reader.read_into_new(*spans[0])) == b"abc"
        assert np.array_equal(reader.read_into_new(*spans[1], numpy_ok=True), data)
        assert bytes(reader.read_into_new(*spans[2])) == b"xyz"
        assert bytes(reader.read_into_new(*spans[3])) == b""
    finally:
        reader.close()
