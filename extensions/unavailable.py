"""The server extension's stand-in when :mod:`.server` cannot be imported (a package it
needs is missing from the server's Python environment).

jupyter-server itself would only log that ``cloudhop.extensions.server`` "could not be
found", and every ``/cloudhop/api/...`` request (the panel, the JupyterLab extension)
would be a bare 404. Loaded in its place (see :func:`cloudhop.extensions._jupyter_server_extension_points`),
this module logs the real import error with the pip command that fixes it, and answers
every Cloudhop API route with 503 and the same words.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import re
import sys
from pathlib import Path

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

#: the module whose import fails when the server extension cannot load
SERVER_MODULE = "cloudhop.extensions.server"


def import_error() -> ImportError | None:
    """Why :data:`SERVER_MODULE` cannot be imported, or None when it can."""
    try:
        importlib.import_module(SERVER_MODULE)
    except ImportError as err:
        return err
    return None


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_for(module: str) -> str:
    """The requirement of Cloudhop's that provides top-level ``module`` (``ray`` ->
    ``ray[default]>=2.40``), else the module's own name."""
    try:
        requires = importlib.metadata.requires("cloudhop") or []
    except importlib.metadata.PackageNotFoundError:
        requires = []
    for req in requires:
        if "extra ==" in req:
            continue
        spec = req.split(";")[0].strip()
        if _norm(re.split(r"[\[<>=!~ ]", spec, maxsplit=1)[0]) == _norm(module):
            return spec
    return module


def reinstall_command() -> str:
    """The command that installs Cloudhop with everything it needs into this Python:
    the editable install of its checkout when it runs from one, else the package."""
    import cloudhop

    root = Path(cloudhop.__file__).resolve().parent.parent
    target = f"-e {root}" if (root / "pyproject.toml").is_file() else "--upgrade cloudhop"
    return f"{sys.executable} -m pip install {target}"


def missing_package(err: ImportError) -> str | None:
    """The top-level module of another package whose absence ``err`` reports, else None
    (Cloudhop's own code, or a name inside an installed package, failed to import)."""
    if not isinstance(err, ModuleNotFoundError):
        return None
    missing = (err.name or "").partition(".")[0]
    return missing if missing and missing != "cloudhop" else None


def explain(err: ImportError) -> str:
    """One line for the log and the API: what is missing and the command that fixes it."""
    missing = missing_package(err)
    if missing:
        what = (f"the Python package {requirement_for(missing)!r} (module {missing!r}) is not "
                f"installed in this server's environment ({sys.executable})")
        fix = f"{reinstall_command()}  (or only the missing package: {sys.executable} -m pip install '{requirement_for(missing)}')"
    else:
        what = f"importing it failed: {type(err).__name__}: {err}"
        fix = reinstall_command()
    return f"The Cloudhop server extension is not loaded: {what}. Install what it needs with: {fix}"


class UnavailableHandler(APIHandler):
    """Every Cloudhop API route: 503 with why the extension is not loaded."""

    def initialize(self, message: str):
        self.message = message

    @web.authenticated
    def get(self, *args):
        self.set_status(503, reason="Cloudhop server extension not loaded")
        self.finish(json.dumps({"message": self.message, "reason": "not-loaded"}))

    post = put = patch = delete = get


def _load_jupyter_server_extension(serverapp):
    err = import_error()
    if err is None:  # it imports now (installed meanwhile): load the real one
        importlib.import_module(SERVER_MODULE)._load_jupyter_server_extension(serverapp)
        return
    message = explain(err)
    # the traceback too when it is not simply a missing package
    serverapp.log.error(message, exc_info=None if missing_package(err) else err)
    base = url_path_join(serverapp.base_url, "cloudhop/api")
    serverapp.web_app.add_handlers(".*$", [(url_path_join(base, "(.*)"), UnavailableHandler, {"message": message})])
