"""``InstantCloud``: an in-memory provider that keeps the whole contract and starts
nothing. A launch answers a running node at once (idempotent on the request id), so a
test can run a real ``CloudhopSpawner.start`` with Ray workers, and the reaper, in
milliseconds."""

from __future__ import annotations

import dataclasses
import time

from cloudhop.spawner.offers import Offer
from cloudhop.spawner.providers.base import RUNNING, TAG_REQUEST, TERMINATED, Node, Provider

NAME = "instant"
CPU = Offer(NAME, "r1", "cpu-4", "none", 0, vcpus=4, memory_gib=16, price_hour=0.25)
SMALL = Offer(NAME, "r1", "cpu-2", "none", 0, vcpus=2, memory_gib=8, price_hour=0.1)


class InstantCloud(Provider):
    name = NAME

    def __init__(self, **kw):
        super().__init__(**kw)
        self.nodes: dict[str, Node] = {}
        self.specs = []

    def offers(self):
        return [CPU, SMALL]

    async def launch(self, spec):
        self.specs.append(spec)
        for node in self.nodes.values():
            if node.tags.get(TAG_REQUEST) == spec.request_id and node.state != TERMINATED:
                return node
        node_id = f"r1/n-{len(self.nodes) + 1}"
        self.nodes[node_id] = Node(node_id, NAME, spec.offer.region, RUNNING, ip=f"10.0.0.{len(self.nodes) + 1}",
                                   port=spec.port, tags={**spec.tags, TAG_REQUEST: spec.request_id},
                                   info={"launched_at": time.time() - 3600})
        return self.nodes[node_id]

    async def status(self, node_id):
        return self.nodes.get(node_id) or Node(node_id, NAME, "r1", TERMINATED)

    async def terminate(self, node_id):
        if node_id in self.nodes:
            self.nodes[node_id] = dataclasses.replace(self.nodes[node_id], state=TERMINATED, ip=None)

    async def list_nodes(self, tags):
        return [n for n in self.nodes.values()
                if n.state != TERMINATED and all(n.tags.get(k) == v for k, v in tags.items())]

    def live(self) -> set[str]:
        return {n.id for n in self.nodes.values() if n.state != TERMINATED}
