"""The example notebooks run (nbclient, a real kernel)."""

from __future__ import annotations

import os
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
