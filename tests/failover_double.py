"""``ScriptedCloud``: a provider double for failover tests. It prices three "regions"
of this machine like a cloud (cheap, mid, dear) and answers "no capacity" for the
offers a test scripts per user; every other launch is a real local process (the local
provider's), so a server that lands really starts.

Plugged in by path: ``c.CloudhopSpawner.providers = ["failover_double:ScriptedCloud"]``.
"""

from __future__ import annotations

from traitlets import Dict, default

from cloudhop.spawner.offers import NO_GPU, Offer
from cloudhop.spawner.providers.base import TAG_USER, CapacityError
from cloudhop.spawner.providers.local import LocalProvider

PRICES = {"cheap": 0.10, "mid": 0.20, "dear": 0.30}


class ScriptedCloud(LocalProvider):
    name = "failover_double:ScriptedCloud"
    display_name = "Scripted cloud"

    no_capacity = Dict(
        help="user name -> offer keys ('<region>/<instance type>') that answer no capacity",
    ).tag(config=True)

    @default("regions")
    def _default_regions(self):
        return {region: {"gpus": "none"} for region in PRICES}

    def offers(self) -> list[Offer]:
        return [
            Offer(provider=self.name, region=region, instance_type="cpu-small", gpu=NO_GPU, gpu_count=0,
                  vcpus=2, memory_gib=4.0, price_hour=price, spot_price_hour=round(price / 3, 4),
                  zones=(f"{region}-a",))
            for region, price in PRICES.items()
        ]

    async def launch(self, spec):
        scripted = self.no_capacity.get(spec.tags.get(TAG_USER), ())
        if f"{spec.offer.region}/{spec.offer.instance_type}" in scripted:
            raise CapacityError(
                f"no capacity for {spec.offer.instance_type} in {spec.offer.region} (scripted)", offer=spec.offer
            )
        return await super().launch(spec)
