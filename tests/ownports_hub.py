"""A real ``cloudhop up`` (see hubfixture) whose --config chooses no internal port, so
Cloudhop picks the hub's and the proxy's API ports and keeps them in the data folder,
and adds the test service and its role with ``.append``, as an operator would."""

from __future__ import annotations

import textwrap

from hubfixture import TEST_SCOPES, HubProcess
from isolation import TEST_ISOLATION


class OwnPortsHub(HubProcess):
    def write_config(self) -> None:
        self.config_path.write_text(textwrap.dedent(f"""
            c.JupyterHub.services.append({{"name": "cloudhop-test", "api_token": {self.token!r}}})
            c.JupyterHub.load_roles.append({{"name": "cloudhop-test", "scopes": {TEST_SCOPES!r},
                                             "services": ["cloudhop-test"]}})
            c.JupyterHub.last_activity_interval = 5
            c.Spawner.http_timeout = 60
            c.LocalProvider.isolation = {TEST_ISOLATION!r}
        """) + textwrap.dedent(self.extra_config))

    def kept_ports(self) -> tuple[int, int]:
        """The hub's and the proxy's API ports kept in the data folder."""
        return tuple(int((self.data_dir / name).read_text()) for name in ("hub_port", "proxy_api_port"))
