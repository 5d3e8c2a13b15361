"""The example notebooks run (nbclient, a real kernel)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def run(name: str, env: dict | None = None, timeout: int = 180):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3").execute(cwd=str(NOTEBOOKS))
    finally:
        os.environ.clear()
        os.environ.update(old)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_hello_gpu_runs_on_the_cpu_without_a_gpu():
    text = run("01-hello-gpu.ipynb", {"CUDA_VISIBLE_DEVICES": "", "CLOUDHOP_PROVIDER": "local", "CLOUDHOP_REGION": "local"})
    assert "placed this server at: {'provider': 'local', 'region': 'local'}" in text
    assert "0 GPU(s) visible" in text
    assert "Ran on CPU:" in text and "GFLOP/s" in text


@pytest.mark.parametrize("env, says", [
    ({"CUDA_VISIBLE_DEVICES": "MIG-fake-0000-3", "CLOUDHOP_GPU": "A100-80GB-MIG-1g.10gb"},
     "a MIG slice (A100-80GB-MIG-1g.10gb): memory and compute of your own"),
    ({"CUDA_VISIBLE_DEVICES": "GPU-fake-0001", "CLOUDHOP_GPU": "L4-shared", "CLOUDHOP_GPU_SHARED_BY": "4"},
     "a GPU shared by up to 4 servers (L4-shared)"),
])
def test_the_class_notebook_names_the_slice_and_trains_on_the_cpu(env, says):
    text = run("04-class-gpu-slice.ipynb", {"CLOUDHOP_GPU": "none", "CLOUDHOP_GPU_SHARED_BY": "", **env})
    assert f"Your server has {says}" in text
    fitted = re.search(r"slope (-?[\d.]+), intercept (-?[\d.]+)", text)
    assert fitted and abs(float(fitted.group(1)) - 3) < 0.1 and abs(float(fitted.group(2)) + 1) < 0.1, text
    first, last = map(float, re.search(r"loss from ([\d.]+) down to ([\d.]+)", text).groups())
    assert last < first / 10
