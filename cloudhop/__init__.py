"""Cloudhop: a self-service GPU workbench on JupyterHub.

In a notebook, ``import cloudhop`` gives the user-facing calls (``cloudhop.panel()``,
``cloudhop.migrate(...)``, ``cloudhop.ray_panel()``); they live in
:mod:`cloudhop.extensions` and are imported on first use.
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name == "ray_panel":
        from .extensions.ray_panel import ray_panel

        return ray_panel
    if name in ("panel", "migrate"):
        from . import extensions

        try:
            from .extensions import notebook
        except ImportError as err:  # pragma: no cover - reported to the user
            raise AttributeError(f"cloudhop.{name} is not available: {err}") from err
        return getattr(notebook, name)
    raise AttributeError(name)
