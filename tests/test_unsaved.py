"""Unsaved documents are saved before a snapshot (extensions/unsaved.py, labextension
unsaved.ts): the book of pages' reports, the wait, and end to end in a real browser: what
a user typed and did not save survives a stop from outside JupyterLab."""

from __future__ import annotations

import asyncio
import os

import pytest

from cloudhop.extensions.unsaved import FRESH, MAX_CLIENTS, UnsavedBook


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def run(coro):
    return asyncio.run(coro)


def test_no_page_with_unsaved_documents_means_no_request_and_no_wait():
    pages = UnsavedBook()
    asked = []
    assert run(pages.save(lambda: asked.append(1), timeout=10)) == []
    pages.report("ada/p1", [])
    assert run(pages.save(lambda: asked.append(1), timeout=10)) == [] and asked == []


def test_the_pages_are_asked_once_and_the_wait_ends_when_they_have_saved():
    pages = UnsavedBook()
    pages.report("ada/p1", ["b.ipynb", "a.py"])
    pages.report("bob/p2", ["a.py"])
    asked = []

    async def scenario():
        async def pages_save():
            await asyncio.sleep(0.05)
            pages.report("ada/p1", [])
            await asyncio.sleep(0.05)
            pages.report("bob/p2", [])

        def ask():
            asked.append(1)
            asyncio.ensure_future(pages_save())

        return await pages.save(ask, timeout=30)

    assert run(scenario()) == [] and asked == [1]


def test_what_a_page_does_not_save_in_time_is_returned():
    pages = UnsavedBook()
    pages.report("ada/p1", ["notes.md", "analysis.ipynb"])
    assert run(pages.save(lambda: None, timeout=0.2)) == ["analysis.ipynb", "notes.md"]


def test_a_page_that_went_quiet_is_not_waited_for():
    clock = Clock()
    pages = UnsavedBook(clock=clock)
    pages.report("ada/closed-tab", ["old.ipynb"])
    clock.now += FRESH + 1
    asked = []
    assert run(pages.save(lambda: asked.append(1), timeout=10)) == [] and asked == []


def test_a_flood_of_pages_is_refused_but_stale_ones_make_room():
    clock = Clock()
    pages = UnsavedBook(clock=clock)
    for i in range(MAX_CLIENTS):
        pages.report(f"eve/{i}", ["x"])
    with pytest.raises(ValueError, match="more than"):
        pages.report("eve/one-more", ["x"])
    clock.now += FRESH + 1
    pages.report("ada/p1", ["y"])
    assert list(pages.unsaved()) == ["ada/p1"]


# -- end to end: a real hub, JupyterLab in Chromium, a stop from outside the page ----------

@pytest.mark.e2e
@pytest.mark.browser
def test_what_was_typed_and_not_saved_survives_a_stop_from_the_home_page(hub_factory):
    from test_lab_extension import ARGS, CHROMIUM, NOTEBOOK, SCREENSHOTS
    from test_sharing import login

    hub = hub_factory(extra_config='c.LocalProvider.regions = {"here": {"gpus": "none"}}\n')
    password = (hub.data_dir / "user_password").read_text().strip()
    hub.spawn("ada", {"provider": "local", "region": "here", "gpu": "none"})
    # a report the server cannot use is refused, naming the field
    for body, field in (({"paths": []}, "client"), ({"client": "x" * 65, "paths": []}, "client"),
                        ({"client": "p", "paths": "a.ipynb"}, "paths"), ({"client": "p", "paths": [""]}, "paths"),
                        ({"client": "p", "paths": ["a"] * 501}, "paths"), ([1, 2], "client")):
        r = hub.server_api("POST", "ada", "cloudhop/api/unsaved", json=body)
        assert r.status_code == 400 and r.json()["message"].startswith(f"{field}:"), (body, r.text)
    r = hub.server_api("POST", "ada", "cloudhop/api/unsaved", data=b"not json")
    assert r.status_code == 400 and "JSON" in r.json()["message"], r.text
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package to run browser tests")
    sync_api = pytest.importorskip("playwright.sync_api")
    r = hub.server_api("PUT", "ada", "api/contents/work.ipynb", json={"type": "notebook", "content": NOTEBOOK})
    assert r.status_code in (200, 201), r.text
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = login(browser, hub, "ada", password)
        page.goto(f"{hub.url}/user/ada/lab/tree/work.ipynb")
        cell = page.locator(".jp-Notebook .jp-Cell").first
        cell.locator(".cm-content").wait_for(timeout=120_000)
        page.locator("#jp-main-statusbar", has_text="| Idle").wait_for(timeout=120_000)
        cell.locator(".cm-content").click()
        page.keyboard.press("Control+End")
        page.keyboard.type("\n# typed-but-never-saved-7f3")
        # the page has told the server (JupyterLab's autosave is two minutes away)
        page.wait_for_function("() => document.querySelector('.jp-mod-dirty') !== null", timeout=30_000)
        page.wait_for_timeout(4000)
        page.screenshot(path=str(SCREENSHOTS / "unsaved-before-stop.png"))
        on_disk = hub.server_api("GET", "ada", "api/contents/work.ipynb").json()
        assert "typed-but-never-saved-7f3" not in str(on_disk["content"]), "not saved yet"

        hub.stop_server("ada", timeout=120)  # the Home page's stop: a REST DELETE
        browser.close()

    hub.spawn("ada", {"provider": "local", "region": "here", "gpu": "none"})
    restored = hub.server_api("GET", "ada", "api/contents/work.ipynb").json()
    assert "typed-but-never-saved-7f3" in str(restored["content"])
