"""``HeadlessRay``: a provider double for tests of who may see and resize a Ray cluster.

Every node is a real local process (the local provider's), but no Ray runs: the
notebook starts without the head launcher in front of it, with
``CLOUDHOP_RAY_DASHBOARD_PORT`` pointing at ``dashboard_port`` (a test's stand-in for
Ray's dashboard), and a worker is a process that only sleeps. So the hub's Ray API,
its policy checks and the server's Ray routes and dashboard proxy run for real, in
seconds instead of the minute a Ray cluster takes on a small machine.

Plugged in by path: ``c.CloudhopSpawner.providers = ["ray_double:HeadlessRay"]``.
"""

from __future__ import annotations

import dataclasses
import sys

from traitlets import Integer

from cloudhop.spawner.providers.local import LocalProvider
from cloudhop.spawner.ray import WORKER_ROLE

SLEEPER = [sys.executable, "-c", "import time; time.sleep(3600)"]


class HeadlessRay(LocalProvider):
    name = "ray_double:HeadlessRay"
    display_name = "Local, Ray stand-in"

    dashboard_port = Integer(0, help="Port of the test's Ray dashboard stand-in.").tag(config=True)

    def offers(self):
        return [dataclasses.replace(o, provider=self.name) for o in super().offers()]

    async def launch(self, spec):
        cmd = list(spec.cmd)
        env = dict(spec.env)
        if spec.role == WORKER_ROLE:
            cmd = SLEEPER
        elif "cloudhop.spawner.ray.head" in cmd:
            cmd = cmd[cmd.index("--") + 1:]  # the notebook without the head launcher
            env["CLOUDHOP_RAY_DASHBOARD_PORT"] = str(self.dashboard_port)
        if cmd[:1] == ["jupyterhub-singleuser"]:
            cmd = [sys.executable, "-m", "jupyterhub.singleuser", *cmd[1:]]
        return await super().launch(dataclasses.replace(spec, cmd=cmd, env=env))
