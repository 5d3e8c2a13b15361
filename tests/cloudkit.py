"""Shared pieces of the cloud provider tests: small catalog-shaped offers, launch specs,
a fake hub environment and waiting for what a cloud double does, so each test reads as
the user's request."""

from __future__ import annotations

import time
import uuid

from cloudhop.spawner.offers import Offer, matching
from cloudhop.spawner.providers.base import TAG_HUB, TAG_SERVER, TAG_USER, LaunchSpec

HUB_ID = "hub-test-1"

# rows as the catalog has them (prices from the shipped catalog, trimmed to a few)
OFFERS = [
    Offer("aws", "us-east-1", "g4dn.xlarge", "T4", 1, 16.0, 4, 16.0, 0.526, 0.1845,
          ("use1-az1", "use1-az2")),
    Offer("aws", "us-east-1", "g4dn.2xlarge", "T4", 1, 16.0, 8, 32.0, 0.752, 0.3095,
          ("use1-az1", "use1-az2")),
    Offer("aws", "us-east-1", "g4dn.12xlarge", "T4", 4, 16.0, 48, 192.0, 3.912, 1.2684,
          ("use1-az1",)),
    Offer("aws", "us-east-1", "g5.xlarge", "A10G", 1, 24.0, 4, 16.0, 1.006, 0.4,
          ("use1-az1",)),
    Offer("gcp", "us-central1", "g2-standard-4", "L4", 1, 24.0, 4, 16.0, 0.70683, 0.2233,
          ("us-central1-a", "us-central1-b")),
    Offer("gcp", "us-central1", "g2-standard-8", "L4", 1, 24.0, 8, 32.0, 0.85, 0.27,
          ("us-central1-a",)),
    Offer("gcp", "us-central1", "n1-standard-8+T4x1", "T4", 1, 16.0, 8, 30.0, 0.73, 0.25,
          ("us-central1-b",)),
    Offer("gcp", "us-central1", "a2-highgpu-1g", "A100", 1, 40.0, 12, 85.0, 3.67, 1.1,
          ("us-central1-a", "us-central1-b")),
    Offer("oci", "eu-amsterdam-1", "VM.GPU.A10.1", "A10", 1, 24.0, 30, 240, 2.0, None,
          ("eu-amsterdam-1-AD-1",)),
    Offer("oci", "eu-amsterdam-1", "VM.GPU.A10.2", "A10", 2, 24.0, 60, 480, 4.0, None,
          ("eu-amsterdam-1-AD-1",)),
]


def cheapest(provider: str, region: str, gpu: str, gpu_count: int, spot: bool = False) -> Offer:
    """The offer the optimizer puts first for a request: the cheapest match."""
    found = matching(OFFERS, provider=provider, region=region, gpu=gpu, gpu_count=gpu_count, spot=spot)
    return min(found, key=lambda o: o.price(spot))


def spec_for(offer: Offer, *, user="alice", server="", request_id=None, spot=False,
             role="notebook", port=8888, token="server-own-token-123") -> LaunchSpec:
    """A LaunchSpec as the spawner builds it for ``offer``."""
    return LaunchSpec(
        request_id=request_id or f"req-{uuid.uuid4().hex[:12]}",
        offer=offer,
        cmd=["jupyterhub-singleuser", "--debug"],
        env={
            "JUPYTERHUB_API_TOKEN": token,
            "JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api",
            "JUPYTERHUB_ACTIVITY_URL": f"http://127.0.0.1:8081/hub/api/users/{user}/activity",
            "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:0/user/{user}/",
            "JUPYTERHUB_USER": user,
            "CLOUDHOP_OFFER": offer.key,
        },
        tags={TAG_HUB: HUB_ID, TAG_USER: user, TAG_SERVER: server},
        role=role,
        port=port,
        spot=spot,
    )


def wait_for(check, timeout: float = 60, what: str = "condition", hub=None, *, interval: float = 0.5):
    """``check()``'s first true value, asked every ``interval`` seconds; TimeoutError
    naming ``what`` (with ``hub``'s log when given) when none comes within ``timeout``
    seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"no {what} in {timeout}s" + (f":\n{hub.log()}" if hub is not None else ""))
