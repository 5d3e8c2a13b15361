"""What runs inside a user's server: the Cloudhop server extension (REST API,
migrations), workspace snapshots, kernel-state checkpoints and the notebook panels.

These talk to the hub only over its REST API, never by importing the hub."""


def _jupyter_server_extension_points():
    return [{"module": "cloudhop.extensions.server"}]
