"""GPU paths end to end with a fake NVML: the form-visible offers, allocation across
users, CUDA_VISIBLE_DEVICES inside the notebook, and a clear capacity error."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes.nvml import fake_gpus_env

pytestmark = pytest.mark.e2e
TESTS = str(Path(__file__).parent)


def test_each_server_sees_only_its_gpus(hub_factory):
    hub = hub_factory(
        'c.LocalProvider.nvml_module = "fakes.nvml"\n',
        env={**fake_gpus_env("Tesla T4", "Tesla T4"), "PYTHONPATH": TESTS},
    )
    seen = []
    for user in ("alice", "bob"):
        hub.spawn(user, {"provider": "local", "gpu": "t4", "gpu_count": 1})
        k = hub.kernel(user)
        seen.append(k.execute("import os; print(os.environ['CUDA_VISIBLE_DEVICES'])").strip())
        k.close()
    assert sorted(seen) == ["GPU-fake-0000", "GPU-fake-0001"]

    hub.ensure_user("carol")
    r = hub.api("POST", "/users/carol/server", json={"provider": "local", "gpu": "T4", "gpu_count": 1})
    assert r.status_code == 503, r.text
    assert "capacity" in r.json()["message"] and "0 T4 GPU(s) free" in r.json()["message"]

    hub.stop_server("alice")
    hub.spawn("carol", {"provider": "local", "gpu": "T4", "gpu_count": 1})
    k = hub.kernel("carol")
    assert k.execute("import os; print(os.environ['CUDA_VISIBLE_DEVICES'])").strip() == seen[0]
    k.close()
