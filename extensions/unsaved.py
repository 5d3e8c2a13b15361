"""What a user typed in JupyterLab and has not saved yet, saved before a snapshot.

A stop (hibernate), a spot rescue and a move take the workspace as it is on disk; what a
user typed since the document's last save (JupyterLab autosaves every two minutes) lives
only in the browser, and a stop from the Home page, the budget watcher, an admin or a spot
interruption would lose it. So:

- each JupyterLab page (Cloudhop's lab extension, ``labextension/src/unsaved.ts``) tells
  this server which of its documents have unsaved changes: ``POST cloudhop/api/unsaved``
  (:class:`.handlers.UnsavedHandler`)
  ``{"client": "<page id>", "paths": ["analysis.ipynb"]}``, at each change and every
  minute while any remain (``"paths": []`` once all are saved);
- before a snapshot, :func:`save_open_documents` asks the pages that reported unsaved
  documents within :data:`FRESH` seconds to save them (an event on jupyter_server's event
  bus, :data:`SCHEMA_ID`, which JupyterLab receives on ``/api/events/subscribe``) and waits
  until each has reported nothing unsaved, at most ``c.CloudhopMigration.save_timeout``
  seconds (10). A page closed without saying so stops counting after :data:`FRESH`
  seconds, so nothing waits for it;
- a document still unsaved then is listed in the snapshot's ``skipped`` (``kind``
  ``"unsaved"``): a move then waits for the user's accept, as for any file it left out.

Anyone who may use the server (its owner, users it is shared with) may report: their
pages' documents are the server's files.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger("cloudhop.unsaved")

#: the event that asks the pages to save (its ``data``: ``{"request": id}``)
SCHEMA_ID = "urn:cloudhop:events:save-request"
SCHEMA = {
    "$id": SCHEMA_ID,
    "version": "1",
    "title": "Cloudhop: save the open documents",
    "description": "Sent before a snapshot of this server to the JupyterLab pages that have unsaved documents.",
    "type": "object",
    "properties": {"request": {"type": "string", "title": "request", "description": "the request's id"}},
    "required": ["request"],
}
#: seconds a page's report counts: pages with unsaved documents report every minute
FRESH = 150.0
#: at most this many pages and paths per page are kept (a report beyond is refused)
MAX_CLIENTS = 200
MAX_PATHS = 500
SETTINGS_KEY = "cloudhop_unsaved"


class UnsavedBook:
    """Which pages have which documents unsaved, and waits for them to save."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._pages: dict[str, tuple[tuple[str, ...], float]] = {}
        self._changed = asyncio.Event()

    def report(self, client: str, paths: list[str]) -> None:
        if paths:
            if client not in self._pages and len(self._pages) >= MAX_CLIENTS:
                self._forget_stale()
                if len(self._pages) >= MAX_CLIENTS:
                    raise ValueError(f"more than {MAX_CLIENTS} pages report unsaved documents")
            self._pages[client] = (tuple(sorted(set(paths))), self._clock())
        else:
            self._pages.pop(client, None)
        self._changed.set()

    def _forget_stale(self) -> None:
        now = self._clock()
        for client, (_, at) in list(self._pages.items()):
            if now - at > FRESH:
                del self._pages[client]

    def unsaved(self) -> dict[str, tuple[str, ...]]:
        """The pages with unsaved documents that reported within :data:`FRESH` seconds."""
        self._forget_stale()
        return {client: paths for client, (paths, _) in self._pages.items()}

    def paths(self) -> list[str]:
        """The documents some page has unsaved, each once."""
        return sorted({p for paths in self.unsaved().values() for p in paths})

    async def save(self, ask, timeout: float) -> list[str]:
        """Ask the pages with unsaved documents to save (``ask()``), then wait until none
        is left or ``timeout`` seconds pass; returns the paths still unsaved."""
        if not self.unsaved() or timeout <= 0:
            return self.paths()
        ask()
        deadline = self._clock() + timeout
        while self.unsaved() and (left := deadline - self._clock()) > 0:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))
            except asyncio.TimeoutError:
                pass
        return self.paths()


def book(serverapp) -> UnsavedBook | None:
    """This server's book (None where the extension's routes are not loaded)."""
    settings = getattr(getattr(serverapp, "web_app", None), "settings", None)
    return settings.get(SETTINGS_KEY) if isinstance(settings, dict) else None


async def save_open_documents(serverapp, timeout: float) -> list[dict]:
    """Before a snapshot: have the pages save what they have unsaved (see the module);
    returns a ``skipped`` entry for each document still unsaved."""
    pages = book(serverapp)
    if pages is None:
        return []
    request = f"{time.time():.3f}"

    def ask():
        serverapp.event_logger.emit(schema_id=SCHEMA_ID, data={"request": request})

    started = time.monotonic()
    left = await pages.save(ask, timeout)
    waited = time.monotonic() - started
    if waited >= 0.05 or left:
        log.info("open documents saved before the snapshot in %.1f s%s", waited,
                 f"; still unsaved in a browser: {', '.join(left)}" if left else "")
    return [{"path": p, "kind": "unsaved", "size": None, "cache": False,
             "reason": f"unsaved in a browser: not saved within {timeout:g} s before the snapshot"} for p in left]


def load(serverapp) -> UnsavedBook:
    """Register the event's schema and the ``unsaved`` route; returns the book."""
    from jupyter_server.utils import url_path_join

    from .handlers import UnsavedHandler

    pages = UnsavedBook()
    serverapp.web_app.settings[SETTINGS_KEY] = pages
    try:
        serverapp.event_logger.register_event_schema(SCHEMA)
    except Exception as err:  # the event bus refuses it: pages are not asked, nothing waits
        log.warning("Cloudhop cannot ask pages to save before a snapshot: %s", err)
        serverapp.web_app.settings.pop(SETTINGS_KEY, None)
    serverapp.web_app.add_handlers(".*$", [
        (url_path_join(serverapp.base_url, "cloudhop/api/unsaved"), UnsavedHandler, {"pages": pages}),
    ])
    return pages
