"""Defers the import of ``rfc3987_syntax`` until an IRI is actually checked.

Why: ``jsonschema`` imports ``rfc3987_syntax`` when it is imported, to check the
``iri`` and ``iri-reference`` formats, and that module builds about 35 Earley parsers
as it is imported: about 1 CPU-second each time. Every Python process that imports
``jsonschema`` pays it - the hub, each notebook server (through ``jupyter_events``), the
``ray start`` command and Ray's dashboard, client server and agents on every node -
while no schema they validate uses those formats (jsonschema issue 1428). On a 2-core
node starting Ray, that is several CPU-seconds of a node's start.

What: the package installs ``cloudhop-lazy-iri.pth`` into site-packages, which runs
:func:`install` as Python starts. It puts a finder first on ``sys.meta_path`` that
answers only for ``rfc3987_syntax``, and only where the real module is installed: it
gives a stand-in whose ``is_valid_syntax`` (the one name jsonschema takes from it)
imports the real module on its first call, and whose every other attribute does the
same (PEP 562). After that the real module is in ``sys.modules``, so checks give exactly
the answers they gave before; only the time of the import moves. Where the module is
not installed the finder answers nothing, so ``import rfc3987_syntax`` still fails as
jsonschema expects. ``CLOUDHOP_EAGER_IRI=1`` in the environment turns this off.

Nothing here may fail Python's start: :func:`install` swallows its own errors.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from importlib.abc import Loader, MetaPathFinder

NAME = "rfc3987_syntax"
#: the environment variable that keeps the import eager
OFF_ENV = "CLOUDHOP_EAGER_IRI"


class _StandIn(types.ModuleType):
    """The module as seen until it is needed. It has the real package's ``__path__``,
    so its submodules import as usual while the real module loads."""

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return getattr(_load(self), name)


def _load(stand_in: _StandIn) -> types.ModuleType:
    """The real module, imported now (once) and put in ``sys.modules`` in place of the
    stand-in."""
    real = stand_in.__dict__.get("_cloudhop_real")
    if real is not None:
        return real
    spec = stand_in.__dict__["_cloudhop_spec"]
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules[NAME] = stand_in
        raise
    stand_in._cloudhop_real = module
    return module


class _StandInLoader(Loader):
    def __init__(self, spec):
        self.spec = spec

    def create_module(self, spec):
        return _StandIn(spec.name)

    def exec_module(self, module):
        module.__dict__["_cloudhop_spec"] = self.spec
        module.__path__ = list(self.spec.submodule_search_locations or [])

        def is_valid_syntax(*args, **kwargs):
            return _load(module).is_valid_syntax(*args, **kwargs)

        is_valid_syntax.__doc__ = "rfc3987_syntax.is_valid_syntax, imported on the first call"
        module.is_valid_syntax = is_valid_syntax


class LazyFinder(MetaPathFinder):
    """Finds ``rfc3987_syntax`` through the finders after it and wraps it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != NAME:
            return None
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, LazyFinder):
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec  # nothing to wrap: import it as it is
        return importlib.util.spec_from_loader(NAME, _StandInLoader(spec), origin=spec.origin,
                                               is_package=spec.submodule_search_locations is not None)


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once; never raises)."""
    try:
        if os.environ.get(OFF_ENV) == "1" or NAME in sys.modules:
            return
        if not any(isinstance(f, LazyFinder) for f in sys.meta_path):
            sys.meta_path.insert(0, LazyFinder())
    except Exception:  # pragma: no cover - Python's start must go on
        pass
