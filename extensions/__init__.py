"""What runs inside a user's server: the Cloudhop server extension (REST API,
migrations), workspace snapshots, kernel-state checkpoints and the notebook panels.

These talk to the hub only over its REST API, never by importing the hub."""


def _jupyter_server_extension_points():
    """The server extension, :mod:`.server`; when it cannot be imported (a package it
    needs is missing), :mod:`.unavailable`, which logs the real import error and the pip
    command that fixes it (jupyter-server alone would log only that the module "could
    not be found") and answers Cloudhop's API with 503 saying so."""
    from .unavailable import import_error

    if import_error() is not None:
        return [{"module": "cloudhop.extensions.unavailable"}]
    return [{"module": "cloudhop.extensions.server"}]
