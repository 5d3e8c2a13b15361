"""Moving real notebooks mid-run: the corpus in tests/corpus (public tutorials and
gallery examples, see its README) run half here, half in a fresh kernel.

For each notebook: run the first half of its code cells in a kernel, checkpoint that
kernel with the agent a move uses (:func:`checkpoint_kernel`), copy the workspace as the
snapshot would, run the rest in the same kernel (the run that never moved), then
restore the checkpoint into a new kernel process in the copy (:func:`restore_kernel`,
what the target of a move does) and run the rest there. Every variable (described by
value, tests/fingerprint.py) and every output of the later cells must be the same,
except the few listed in :data:`EXCEPTIONS` with the reason, which the checkpoint must
also list in ``skipped``. A move of one corpus notebook through a real hub between two
local regions is ``test_a_corpus_notebook_moves_between_two_local_regions``.

Run alone with ``pytest -m corpus -s`` (``-s`` shows the pass rate at the end).
"""

from __future__ import annotations

import ast
import asyncio
import base64
import hashlib
import importlib.util
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from jupyter_client.manager import AsyncKernelManager

from cloudhop.extensions.kernelstate import checkpoint_kernel, restore_kernel

CORPUS = Path(__file__).resolve().parent / "corpus"
NOTEBOOKS = sorted(CORPUS.glob("*.ipynb"))
FINGERPRINT = (Path(__file__).resolve().parent / "fingerprint.py").read_text()

#: what a move cannot carry as it was, per notebook: {variable: (part of the reason
#: the checkpoint gives in ``skipped``, why)}. Later cells that read such a variable
#: may differ (they fail on the target with a NameError).
EXCEPTIONS = {
    "fluent_generators": {
        "it": ("part-way through", ("a generator function's frame stopped mid-loop cannot be rebuilt; "
                                    "replaying the cell would restart it")),
    },
}

#: instance attributes left out of the comparison: {attribute: why}
IGNORED_ATTRIBUTES = {
    "_deprecated_key_to_warnings": "scikit-learn's Bunch (a loaded dataset) drops this table of deprecation "
                                   "warnings when pickled (Bunch.__setstate__ ignores the instance dict)",
}

#: the kernels' environment: set iteration order and BLAS results do not depend on the process
KERNEL_ENV = {"PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

#: memory addresses in reprs (also cut short, as "...x7f0d84910a40" in scikit-learn's tables)
_ADDRESS = re.compile(r"(?<![0-9a-zA-Z])(?:0x|x)[0-9a-fA-F]{8,16}(?![0-9a-zA-Z])")
#: where IPython names the file of a cell: a folder named by the kernel's process id
_CELL_FILE = re.compile(r"[\w./-]*ipykernel_\d+/")


def code_cells(path: Path) -> list[str]:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def missing_modules(cells: list[str]) -> list[str]:
    """Top-level modules the cells import that this environment lacks."""
    wanted = set()
    for source in cells:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue  # a cell with IPython syntax imports nothing we check
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                wanted |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                wanted.add(node.module.split(".")[0])
    local = {p.stem for p in CORPUS.glob("*.py")}
    return sorted(m for m in wanted - local if importlib.util.find_spec(m) is None)


def reads(source: str) -> set[str]:
    try:
        return {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name)}
    except SyntaxError:
        return set()


def describe_code(path: Path | None) -> str:
    """Code that describes the kernel's variables (tests/fingerprint.py) into ``path``,
    or prints them, without adding a name to the kernel's namespace."""
    target = str(path) if path is not None else None
    source = FINGERPRINT + f"\nmain({target!r}, {sorted(IGNORED_ATTRIBUTES)!r})\n"
    return f"exec(compile({source!r}, '<fingerprint>', 'exec'), {{}})"


class Kernel:
    """A kernel in ``cwd`` that runs cells as a notebook does and records their outputs."""

    def __init__(self, km, kc, cwd: Path):
        self.km, self.kc, self.cwd = km, kc, cwd

    @classmethod
    async def start(cls, cwd: Path) -> Kernel:
        km = AsyncKernelManager(kernel_name="python3")
        await km.start_kernel(cwd=str(cwd), env=dict(os.environ, **KERNEL_ENV))
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)
        return cls(km, kc, cwd)

    @property
    def info(self) -> dict:
        return self.km.get_connection_info()

    async def run(self, source: str) -> list:
        outputs = []

        def hook(msg):
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                if outputs and outputs[-1][0] == content["name"]:
                    outputs[-1][1] += content["text"]
                else:
                    outputs.append([content["name"], content["text"]])
            elif kind in ("execute_result", "display_data"):
                outputs.append(["data", {mime: self.clean_data(mime, value) for mime, value in content["data"].items()}])
            elif kind == "error":
                outputs.append(["error", content["ename"], self.clean(content["evalue"])])

        await self.kc.execute_interactive(source, output_hook=hook, timeout=300, allow_stdin=False)
        return [[o[0], self.clean(o[1])] if o[0] in ("stdout", "stderr") else o for o in outputs]

    def clean(self, text: str) -> str:
        text = _CELL_FILE.sub("<ipykernel>/", _ADDRESS.sub("0x?", text))
        return text.replace(str(self.cwd), "<workspace>")

    def clean_data(self, mime: str, value) -> str:
        if mime.startswith("image/") and isinstance(value, str):
            return hashlib.sha256(base64.b64decode(value)).hexdigest()[:20]
        if isinstance(value, str):
            return self.clean(value)
        return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:20]

    async def describe(self, path: Path) -> dict:
        """Every user variable described by value (tests/fingerprint.py), run silently
        in a namespace of its own."""
        code = describe_code(path)
        reply = await self.kc.execute_interactive(code, silent=True, store_history=False, timeout=300,
                                                  output_hook=lambda msg: None)
        assert reply["content"]["status"] == "ok", reply["content"]
        return json.loads(path.read_text())

    def text(self, outputs: list) -> str:
        """A cell's outputs as the hub tests' kernel client reads them: streams and the
        plain text of results."""
        return "".join(o[1] if o[0] in ("stdout", "stderr") else o[1].get("text/plain", "")
                       for o in outputs if o[0] != "error")

    async def stop(self):
        self.kc.stop_channels()
        await self.km.shutdown_kernel(now=True)


def first_difference(a, b, path="") -> str:
    """Where two descriptions first differ, for the failure message."""
    if type(a) is not type(b) or not isinstance(a, list):
        return f"{path or '.'}: {json.dumps(a)[:200]} != {json.dumps(b)[:200]}"
    if len(a) != len(b):
        return f"{path or '.'}: {len(a)} parts != {len(b)} parts: {json.dumps(a)[:200]} != {json.dumps(b)[:200]}"
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            label = x[0] if isinstance(x, list) and len(x) == 2 and isinstance(x[0], str) else i
            return first_difference(x, y, f"{path}/{label}")
    return path


@pytest.fixture(scope="module")
def tally():
    """The corpus pass rate, printed at the end of the module (``-s`` shows it)."""
    rows = {}
    yield rows
    if rows:
        passed = sum(r["ok"] for r in rows.values())
        equal = sum(r["equal"] for r in rows.values())
        total = sum(r["total"] for r in rows.values())
        print(f"\ncorpus: {passed}/{len(rows)} notebooks passed; {equal}/{total} variables equal after the move")
        for name, r in sorted(rows.items()):
            print(f"  {name}: {'pass' if r['ok'] else 'FAIL'} {r['equal']}/{r['total']} variables, "
                  f"{r['outputs']} later outputs, skipped {r['skipped']}")


@pytest.mark.corpus
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
async def test_notebook_moved_mid_run_ends_with_the_same_variables_and_outputs(notebook, tmp_path, tally):
    cells = code_cells(notebook)
    lacking = missing_modules(cells)
    if lacking:
        pytest.skip(f"{notebook.stem} needs {', '.join(lacking)}, not installed here "
                    "(PyTorch is not a test dependency: pip install torch to run these)")
    exceptions = EXCEPTIONS.get(notebook.stem, {})
    half = len(cells) // 2
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    for module in CORPUS.glob("*.py"):  # the notebooks' own modules, beside them as in a project
        shutil.copy(module, here)

    stayed = await Kernel.start(here)
    moved = None
    try:
        for source in cells[:half]:
            await stayed.run(source)
        checkpoint = await checkpoint_kernel(stayed.info, str(tmp_path / "checkpoint"))
        shutil.copytree(here, there)  # the workspace as the snapshot took it

        async def finish(kernel, name):
            outputs = [await kernel.run(source) for source in cells[half:]]
            return outputs, await kernel.describe(tmp_path / f"{name}.json")

        async def move():
            nonlocal moved
            started = time.monotonic()
            moved = await Kernel.start(there)
            restored = await restore_kernel(moved.info, str(tmp_path / "checkpoint"))
            return restored, time.monotonic() - started, await finish(moved, "moved")

        # the two runs of the rest are independent: one kernel each, side by side
        (later_stayed, values_stayed), (restored, restore_seconds, (later_moved, values_moved)) = \
            await asyncio.gather(finish(stayed, "stayed"), move())
    finally:
        await stayed.stop()
        if moved is not None:
            await moved.stop()

    problems = []
    skipped = {s["name"]: s for s in checkpoint["skipped"] + restored["skipped"]}
    for name, (reason, _why) in exceptions.items():
        if name not in skipped or reason not in skipped[name]["reason"]:
            problems.append(f"{name} is an exception but the move did not list it as skipped for {reason!r}: "
                            f"{skipped.get(name)}")
    for name, entry in skipped.items():
        if name not in exceptions and entry.get("rebuilt") is None:
            problems.append(f"{name} was skipped: {entry['reason']}")
    checked = [n for n in values_stayed if n not in exceptions]
    equal = [n for n in checked if values_moved.get(n) == values_stayed[n]]
    for name in checked:
        if name not in values_moved:
            problems.append(f"{name} is missing after the move")
        elif values_moved[name] != values_stayed[name]:
            problems.append(f"{name} differs: {first_difference(values_stayed[name], values_moved[name])}")
    extra = sorted(set(values_moved) - set(values_stayed))
    if extra:
        problems.append(f"only the moved kernel has {', '.join(extra)}")
    for i, (source, a, b) in enumerate(zip(cells[half:], later_stayed, later_moved)):
        if a != b and not reads(source) & set(exceptions):
            problems.append(f"output of cell {half + i} differs:\n  stayed: {json.dumps(a)[:400]}\n"
                            f"  moved:  {json.dumps(b)[:400]}\n  cell: {source[:200]!r}")
    tally[notebook.stem] = {"ok": not problems, "equal": len(equal), "total": len(values_stayed),
                            "outputs": len(later_stayed), "skipped": sorted(skipped)}
    assert not problems, (f"{notebook.stem} (restored in {restore_seconds:.1f} s):\n" + "\n".join(problems))


@pytest.mark.e2e
@pytest.mark.corpus
def test_a_corpus_notebook_moves_between_two_local_regions(hub_factory, tmp_path):
    """The scikit-learn gallery's meta-estimators notebook, half run on a server in
    site-a, moved (strict: nothing may be skipped) through a real hub to site-b, the
    rest run there: same variables, same outputs as a run that never moved."""
    import nbformat
    from test_migration_e2e import REGIONS, UserAPI, wait_migration

    notebook = CORPUS / "sklearn_metadata_routing.ipynb"
    cells = code_cells(notebook)
    if missing_modules(cells):
        pytest.skip(f"needs {', '.join(missing_modules(cells))}")
    half = len(cells) // 2

    async def unmoved():
        kernel = await Kernel.start(tmp_path)
        try:
            outputs = [kernel.text(await kernel.run(source)) for source in cells]
            return outputs[half:], await kernel.describe(tmp_path / "stayed.json"), kernel.clean
        finally:
            await kernel.stop()

    later_stayed, values_stayed, clean = asyncio.run(unmoved())

    hub = hub_factory(REGIONS)
    alice = UserAPI(hub, "alice")
    hub.spawn("alice", {"provider": "local", "region": "site-a"})
    r = alice("PUT", f"api/contents/{notebook.name}",
              json={"type": "notebook", "content": nbformat.read(notebook, as_version=4)})
    assert r.status_code in (200, 201), r.text
    r = alice("POST", "api/sessions", json={"path": notebook.name, "type": "notebook", "name": notebook.name,
                                            "kernel": {"name": "python3"}})
    kernel = hub.kernel("alice", kernel_id=r.json()["kernel"]["id"])
    for source in cells[:half]:
        kernel.execute(source)
    kernel.close()

    r = alice("POST", "cloudhop/api/migrations", json={"provider": "local", "region": "site-b", "strict": True})
    assert r.status_code == 202, r.text
    m = wait_migration(alice, r.json()["id"])
    assert m["state"] == "done", (m, hub.log())
    assert {"ExampleClassifier", "MetaClassifier", "meta_est", "rng", "X"} <= set(m["variables"][notebook.name])
    assert not [s for s in m["skipped"] if s.get("path") == notebook.name]

    sessions = alice("GET", "api/sessions", server=m["target_server"]).json()
    kernel = hub.kernel("alice", server=m["target_server"], kernel_id=sessions[0]["kernel"]["id"])
    later_moved = [clean(kernel.execute(source)) for source in cells[half:]]
    values_moved = json.loads(kernel.execute(describe_code(None), timeout=120))
    kernel.close()
    assert later_moved == [clean(text) for text in later_stayed]
    differ = [n for n in values_stayed if values_moved.get(n) != values_stayed[n]]
    assert not differ, [f"{n}: {first_difference(values_stayed[n], values_moved.get(n))}" for n in differ]
    assert set(values_moved) == set(values_stayed)
