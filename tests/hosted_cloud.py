"""Cloudhop's real cloud providers against their API doubles (moto for AWS,
tests/fakes/gcp_compute.py for GCP), whose instances' notebook server runs on this
machine.

The doubles record instances but run nothing, so a server spawned on them never answers
(tests/test_e2e_aws.py and tests/test_e2e_clouds.py check only what the hub asks of the
cloud). :class:`Hosted` keeps every call the provider makes to the cloud (the create
with the spot options, the describe, the terminate, tags, user data) and, for each
instance, also starts the server's command on this machine in an ephemeral local region
(the instance's own disk, deleted with it). ``status`` answers the cloud's state with the
local server's address. The hub config maps the cloud's name to the hosted class
(:func:`install_snippet`), so the spawner's offers, failover and state are the cloud's.
"""

from __future__ import annotations

import dataclasses

from cloudhop.spawner.offers import Offer
from cloudhop.spawner.providers.aws import AWSProvider
from cloudhop.spawner.providers.gcp import GCPProvider
from cloudhop.spawner.providers.base import FAILED, RUNNING, TAG_HUB, TERMINATED
from cloudhop.spawner.providers.local import LocalProvider

HOST_REGION = "instance-disk"


def install_snippet(tests_dir: str) -> str:
    """Hub config lines that make providers ``aws`` and ``gcp`` the hosted classes."""
    return f"""
import sys
sys.path.insert(0, {tests_dir!r})
from cloudhop.spawner.providers import REGISTRY
REGISTRY.update(aws="hosted_cloud:HostedAWS", gcp="hosted_cloud:HostedGCP")
"""


class Hosted:
    """Mixin before a cloud provider class: see the module."""

    #: every server on its own free port (two instances share this machine)
    node_port = None

    def __init__(self, **kw):
        super().__init__(**kw)
        self.host = LocalProvider(config=self.config, log=self.log,
                                  regions={HOST_REGION: {"gpus": "none", "ephemeral": True}})
        #: EC2 instance id -> the local node running its server
        self.hosted: dict[str, str] = {}

    def _host_offer(self) -> Offer:
        return next(o for o in self.host.offers() if o.region == HOST_REGION)

    async def launch(self, spec):
        node = await super().launch(spec)
        if node.id not in self.hosted:
            # without the hub's tag: the hub's reaper must see the EC2 instance, not its host process
            tags = {k: v for k, v in spec.tags.items() if k != TAG_HUB}
            local = await self.host.launch(dataclasses.replace(spec, offer=self._host_offer(), tags=tags))
            self.hosted[node.id] = local.id
        return node

    async def status(self, node_id):
        node = await super().status(node_id)
        local_id = self.hosted.get(node_id)
        if local_id is None or node.state != RUNNING:
            return node
        local = await self.host.status(local_id)
        if local.state in (TERMINATED, FAILED):
            return dataclasses.replace(node, state=local.state, detail=local.detail)
        return dataclasses.replace(node, ip=local.ip, port=local.port)

    async def terminate(self, node_id):
        local_id = self.hosted.pop(node_id, None)
        if local_id is not None:
            await self.host.terminate(local_id)
        await super().terminate(node_id)


class HostedAWS(Hosted, AWSProvider):
    pass


class HostedGCP(Hosted, GCPProvider):
    pass
