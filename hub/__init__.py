"""The hub side of Cloudhop: the ``cloudhop`` CLI, the embedded JupyterHub defaults and
the hub-managed services."""
