"""The spawn form in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright. Dependent choices narrow each other, prices show, Auto says what it would
pick, submitting starts a local server, and the last options come back pre-selected.
A screenshot of the form with prices is kept in ``test-output/``.

The template-only tests at the top render the form without a browser: escaping and the
context contract.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader

from cloudhop.spawner.catalog import all_catalog_offers
from cloudhop.spawner.offers import Offer

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
OUTPUT = Path(__file__).resolve().parent.parent / "test-output"

PROVIDERS = [
    {"name": "local", "display_name": "Local (this machine)", "available": True, "reason": None},
    {"name": "gcp", "display_name": "Google Cloud", "available": True, "reason": None},
    {"name": "oci", "display_name": "Oracle Cloud", "available": False, "reason": "no OCI config file found"},
]


def render(offers, *, providers=PROVIDERS, last=None, auto=None, paths=()):
    env = Environment(loader=ChoiceLoader([FileSystemLoader(list(paths)), PackageLoader("cloudhop.spawner", "templates")]),
                      autoescape=True)
    dicts = [o.to_dict() for o in offers]
    return env.get_template("form.html").render(
        offers=dicts, offers_json=json.dumps(dicts), providers=providers, last=last or {}, auto=auto)


def offers_data(html: str) -> list:
    m = re.search(r'<script type="application/json" id="ch-offers-data">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


def test_markup_in_offers_and_options_is_escaped():
    evil = Offer(provider="gcp", region="us-central1", instance_type="x", gpu="T4", gpu_count=1, price_hour=1.0,
                 note="</script><script>alert(1)</script>")
    providers = [{"name": "gcp", "display_name": "<b>GCP</b>", "available": False, "reason": "<img src=x onerror=alert(1)>"}]
    html = render([evil], providers=providers, last={"image": '"><script>alert(2)</script>'})
    assert "<script>alert" not in html and "<img src=x" not in html and "<b>GCP</b>" not in html
    assert offers_data(html)[0]["note"] == "</script><script>alert(1)</script>"  # intact as data


def test_form_fields_are_the_ones_options_from_form_reads():
    html = render(all_catalog_offers())
    names = set(re.findall(r'name="([a-z_]+)"', html))
    assert {"provider", "region", "zone", "gpu", "gpu_count", "spot", "image", "ray_workers",
            "ray_gpu", "ray_gpu_count", "restore"} <= names
    assert '.name = "instance_type"' in html  # the machine radios are built by the script
    assert 'disabled title="no OCI config file found"' in html


def test_operator_template_path_comes_first(tmp_path):
    (tmp_path / "form.html").write_text("<p>Ask the front desk for a GPU.</p>{% include 'form.js' %}")
    html = render([], paths=[str(tmp_path)])
    assert html.startswith("<p>Ask the front desk for a GPU.</p>") and "dependent choices" in html


# -- in a browser, against a real hub ------------------------------------------------


def _chromium_or_skip():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package to run browser tests")
    return pytest.importorskip("playwright.sync_api")


HUB_CONFIG = """
import sys
c.CloudhopSpawner.providers = ["local", "gcp"]
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.default_url = "/tree"
# GCP offers come from the catalog; this test launches only on the local provider
c.GCPProvider.project = "cloudhop-test"
c.GCPProvider.api_endpoint = "http://127.0.0.1:9"
c.GCPProvider.anonymous_credentials = True
"""


def options(page, selector):
    return page.eval_on_selector_all(f"{selector} option", "els => els.map(e => e.value)")


@pytest.mark.e2e
@pytest.mark.browser
def test_form_in_chromium_narrows_choices_and_starts_a_local_server(hub_factory):
    sync_api = _chromium_or_skip()
    hub = hub_factory(extra_config=HUB_CONFIG)
    password = (hub.data_dir / "user_password").read_text().strip()
    OUTPUT.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            errors = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(f"{hub.url}/hub/login")
            page.fill("#username_input", "zoe")
            page.fill("#password_input", password)
            page.click("#login_submit")
            page.goto(f"{hub.url}/hub/spawn")
            page.wait_for_selector("#ch-offer-rows tr")

            # provider -> region: GCP lists its regions only
            assert options(page, "#ch-provider")[:3] == ["auto", "local", "gcp"]
            page.select_option("#ch-provider", "gcp")
            regions = options(page, "#ch-region")
            assert "us-central1" in regions and "local" not in regions and regions[0] == ""
            # region -> GPU: what us-central1 has
            page.select_option("#ch-region", "us-central1")
            gpus = options(page, "#ch-gpu")
            assert {"T4", "L4", "A100", "H100"} <= set(gpus)
            # GPU -> count: T4s attach 1, 2 or 4 to an N1 host
            page.select_option("#ch-gpu", "T4")
            assert options(page, "#ch-count") == ["1", "2", "4"]
            page.select_option("#ch-count", "2")
            row = page.locator("#ch-offer-rows tr", has_text="n1-standard-16+T4x2")
            assert "$0.70 + host" in row.inner_text()  # the catalog's 2 x T4 price, partial
            assert "16 GiB" in row.inner_text() and "60 GiB" in row.inner_text()
            assert "T4" in page.inner_text("#ch-auto-pick")
            # spot: the same offer at its spot price
            page.check("#ch-spot")
            page.select_option("#ch-provider", "gcp")
            assert "spot" in page.inner_text("#ch-auto-pick")
            page.uncheck("#ch-spot")
            page.select_option("#ch-provider", "gcp")
            page.select_option("#ch-region", "us-central1")
            page.select_option("#ch-gpu", "L4")
            assert page.eval_on_selector("#ch-count", "e => e.value") == "2"  # still offered: kept
            page.select_option("#ch-count", "1")
            page.screenshot(path=str(OUTPUT / "spawn-form.png"), full_page=True)
            assert "g2-standard-4" in page.inner_text("#ch-offer-rows")

            # Auto, then picking a machine pins its provider and region, and offers its zones
            page.select_option("#ch-provider", "auto")
            page.select_option("#ch-region", "")
            page.select_option("#ch-gpu", "L4")
            page.select_option("#ch-count", "1")
            first = page.locator("#ch-offer-rows tr[data-key]").first
            key = first.get_attribute("data-key")
            first.locator("input[type=radio]").check()
            provider, region, itype = key.split("/")
            assert page.eval_on_selector("#ch-provider", "e => e.value") == provider == "gcp"
            assert page.eval_on_selector("#ch-region", "e => e.value") == region
            assert page.eval_on_selector("input[name=instance_type]:checked", "e => e.value") == itype
            assert len(options(page, "#ch-zone")) > 1 and all(z == "" or z.startswith(region) for z in options(page, "#ch-zone"))

            # local, CPU only: submit and the server starts
            page.select_option("#ch-provider", "local")
            assert options(page, "#ch-region") == ["", "local"]
            page.select_option("#ch-region", "local")
            page.select_option("#ch-gpu", "none")
            assert options(page, "#ch-count") == ["0"]
            page.click("#spawn_form button[type=submit]")
            page.wait_for_url(re.compile(r".*/user/zoe/.*"), timeout=120_000)
            model = hub.wait_ready("zoe")
            assert model["state"]["offer"]["provider"] == "local"
            assert model["user_options"]["provider"] == "local"

            # the next visit pre-selects the last options
            hub.stop_server("zoe")
            page.goto(f"{hub.url}/hub/spawn")
            page.wait_for_selector("#ch-offer-rows tr")
            assert page.eval_on_selector("#ch-provider", "e => e.value") == "local"
            assert page.eval_on_selector("#ch-region", "e => e.value") == "local"
            assert page.eval_on_selector("#ch-gpu", "e => e.value") == "none"
            assert errors == []
        finally:
            browser.close()
