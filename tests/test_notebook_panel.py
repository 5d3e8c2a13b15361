"""The notebook side: the panel's target list and migrate()'s errors."""

from __future__ import annotations

import pytest

from cloudhop.extensions import notebook


def offer(provider, region, gpu, count, price):
    return {"provider": provider, "region": region, "gpu": gpu, "gpu_count": count, "price_hour": price,
            "instance_type": f"{gpu}-{count}"}


def test_targets_are_distinct_places_cheapest_first():
    choices = notebook.offer_choices([
        offer("aws", "us-east-1", "A100", 8, 32.0), offer("aws", "us-east-1", "A100", 8, 29.5),
        offer("gcp", "us-central1", "L4", 1, 0.9), offer("local", "site-b", "none", 0, None),
    ])
    labels = [label for label, _ in choices]
    assert labels == ["gcp / us-central1 / 1 x L4  ($0.90/h)", "aws / us-east-1 / 8 x A100  ($29.50/h)",
                      "local / site-b / no GPU"]
    assert choices[0][1] == {"provider": "gcp", "region": "us-central1", "gpu": "L4", "gpu_count": 1}


def test_migrate_outside_a_cloudhop_server_says_so(monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_SERVICE_URL", raising=False)
    with pytest.raises(notebook.CloudhopAPIError, match="not running in a Cloudhop server"):
        notebook.migrate(provider="local", region="site-b")
