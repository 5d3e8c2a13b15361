"""Cloudhop's example notebooks in every new workspace.

The server extension calls :func:`copy_examples` as each user's server starts, on every
provider (the extension runs on every node), so a new workspace gets the notebooks
shipped with the package (``notebooks/`` in the repository, ``cloudhop.notebooks`` when
installed) in a folder :data:`FOLDER`:

* once per workspace: a marker file (:data:`MARKER`) records that the examples were
  offered, so examples a user deleted do not come back;
* never over a file: an existing file of the same name is left as it is;
* not on a move's target (``CLOUDHOP_RESTORE`` set): the restored workspace is the
  source's, marker included;
* not at all when the server's environment has ``CLOUDHOP_EXAMPLES=0`` (an operator sets
  it with ``c.Spawner.environment``).
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

#: the folder of the workspace the examples go to
FOLDER = "cloudhop-examples"
#: written once the examples have been offered to a workspace
MARKER = ".cloudhop/examples-copied"
#: the package the notebooks are shipped in
PACKAGE = "cloudhop.notebooks"


def shipped() -> list:
    """The example notebooks of the installed package (``importlib.resources`` files),
    by name; none when the package has none."""
    try:
        folder = resources.files(PACKAGE)
    except ModuleNotFoundError:
        return []
    return sorted((f for f in folder.iterdir() if f.name.endswith(".ipynb") and f.is_file()),
                  key=lambda f: f.name)


def copy_examples(root: str | os.PathLike, notebooks=None) -> list[str]:
    """Copy the example ``notebooks`` (default: :func:`shipped`) into ``root``/:data:`FOLDER`
    unless this workspace has had them (:data:`MARKER`); a file that exists is kept.
    Returns the workspace paths written."""
    root = Path(root)
    marker = root / MARKER
    if marker.exists():
        return []
    notebooks = shipped() if notebooks is None else list(notebooks)
    if not notebooks:
        return []
    dest = root / FOLDER
    dest.mkdir(exist_ok=True)
    written = []
    for notebook in notebooks:
        try:
            with open(dest / notebook.name, "xb") as out:  # "x": never over an existing file
                out.write(notebook.read_bytes())
        except FileExistsError:
            continue
        written.append(f"{FOLDER}/{notebook.name}")
    marker.parent.mkdir(exist_ok=True)
    marker.write_text("Cloudhop's example notebooks were copied into this workspace once; "
                      "delete this file to get them again (existing files are kept).\n")
    return written


def offer_examples(serverapp) -> None:
    """At server start: :func:`copy_examples` into the server's root folder, unless this
    server restores a move or the operator turned the examples off. Never stops the
    server: a failure is logged."""
    if os.environ.get("CLOUDHOP_RESTORE"):
        return
    if os.environ.get("CLOUDHOP_EXAMPLES", "1").strip().lower() in ("0", "false", "no", "off"):
        return
    try:
        written = copy_examples(serverapp.root_dir)
    except OSError as err:
        serverapp.log.warning("Cloudhop: the example notebooks were not copied: %s", err)
        return
    if written:
        serverapp.log.info("Cloudhop: example notebooks copied into %s/", FOLDER)
