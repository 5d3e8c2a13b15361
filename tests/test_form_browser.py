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
from gated_server import gated_config, open_gate
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


def logged_in(browser, hub, user: str):
    """A new page of ``browser`` logged in to ``hub`` as ``user`` with the shared
    password, and the list the page's script errors go to."""
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", (hub.data_dir / "user_password").read_text().strip())
    page.click("#login_submit")
    return page, errors


def options(page, selector):
    return page.eval_on_selector_all(f"{selector} option", "els => els.map(e => e.value)")


@pytest.mark.e2e
@pytest.mark.browser
def test_form_in_chromium_narrows_choices_and_starts_a_local_server(hub_factory):
    sync_api = _chromium_or_skip()
    hub = hub_factory(extra_config=HUB_CONFIG)
    OUTPUT.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page, errors = logged_in(browser, hub, "zoe")
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


# -- reasons, errors, progress and Home, in a browser --------------------------------

SHOTS = OUTPUT / "screenshots"


def reasons_config(tmp_path) -> str:
    return gated_config(tmp_path) + """
c.CloudhopSpawner.providers = ["local", "aws"]
c.Spawner.default_url = "/tree"
c.LocalProvider.nvml_module = "fakes.nvml"  # NVML that finds no driver, on any machine
"""


def no_cloud_credentials(tmp_path) -> dict:
    nowhere = tmp_path / "no-credentials"
    return {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "",
            "AWS_SHARED_CREDENTIALS_FILE": str(nowhere / "aws-credentials"),
            "AWS_CONFIG_FILE": str(nowhere / "aws-config"), "AWS_EC2_METADATA_DISABLED": "true",
            "PYTHONPATH": str(Path(__file__).parent)}  # the hub imports the NVML double


@pytest.mark.e2e
@pytest.mark.browser
def test_the_form_says_why_errors_read_plainly_progress_shows_and_home_says_where(hub_factory, tmp_path):
    sync_api = _chromium_or_skip()
    # no CLOUDHOP_FAKE_GPUS reaches the hub: the NVML double finds no driver
    hub = hub_factory(extra_config=reasons_config(tmp_path), env=no_cloud_credentials(tmp_path))
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page, errors = logged_in(browser, hub, "zoe")

            # the form: why there is no GPU, why AWS cannot be picked, which providers
            # are not enabled, why the zone is greyed out
            page.goto(f"{hub.url}/hub/spawn/zoe/gpu1")
            page.wait_for_selector("#ch-offer-rows tr")
            assert "Cloudhop" in page.title() and page.is_visible("#cloudhop-name")
            page.select_option("#ch-provider", "local")
            no_gpu = "no NVIDIA GPU found on this machine (NVML: NVML Shared Library Not Found)"
            assert page.inner_text("#ch-gpu-why") == f"Why no GPU: {no_gpu}"
            labels = page.eval_on_selector_all("#ch-gpu option", "els => els.map(e => e.textContent)")
            assert labels == ["No GPU (CPU only): why below"]
            assert page.get_attribute("#ch-gpu", "title") == f"Why no GPU: {no_gpu}"
            assert page.inner_text("#ch-ray-why") == f"Why no GPU: {no_gpu}"
            aws = page.locator("#ch-provider option[value=aws]")
            assert aws.is_disabled() and "credentials" in aws.inner_text()
            assert "AWS: " in page.inner_text("#ch-unavailable")
            assert " ".join(page.inner_text("#ch-not-enabled").split()) == (
                "GCP, OCI, Lambda Cloud, Azure, DigitalOcean, Yandex Cloud and Kubernetes are not enabled on this hub; an admin adds them with "
                "c.CloudhopSpawner.providers.")
            assert page.is_disabled("#ch-zone")
            assert page.inner_text("#ch-zone-why") == "pick a machine in the table to choose its zone"
            page.locator("#ch-offer-rows tr[data-key='local/local/cpu'] input[type=radio]").check()
            assert page.is_disabled("#ch-zone")
            assert page.inner_text("#ch-zone-why") == "no zones to choose for this offer"
            page.screenshot(path=str(SHOTS / "form-reasons.png"), full_page=True)

            # a value the form never offers (sent as a forged form would): the form again,
            # with the field, the value and the choices, and no class name; no gpu1 left
            page.evaluate("""() => { const o = document.createElement("option");
                o.value = "Z9"; o.textContent = "Z9"; document.getElementById("ch-gpu").appendChild(o); }""")
            page.select_option("#ch-gpu", "Z9")
            page.click("#spawn_form button[type=submit]")
            page.wait_for_selector(".spawn-error-msg")
            message = page.inner_text(".spawn-error-msg")
            assert message == "Error: gpu: unknown gpu 'Z9'. Valid choices: 'none'.", message
            assert "SpawnException" not in page.content()
            page.screenshot(path=str(SHOTS / "form-error.png"), full_page=True)
            assert hub.server_model("zoe", "gpu1") is None
            assert "gpu1" not in hub.api("GET", "/users/zoe?include_stopped_servers=1").json()["servers"]

            # the progress page shows the plan while the server is still held at the gate
            page.goto(f"{hub.url}/hub/spawn/zoe/cpu1")
            page.wait_for_selector("#ch-offer-rows tr")
            page.select_option("#ch-provider", "local")
            page.click("#spawn_form button[type=submit]")
            page.wait_for_url(re.compile(r".*/hub/spawn-pending/zoe/cpu1.*"), timeout=60_000)
            page.click("#progress-details summary")
            page.wait_for_function(
                "() => document.getElementById('progress-log').textContent.includes('Plan:')", timeout=30_000)
            assert not hub.server_model("zoe", "cpu1")["ready"]
            assert "Launching on local/local/cpu" in page.inner_text("#progress-log")
            page.screenshot(path=str(SHOTS / "progress.png"), full_page=True)
            open_gate(tmp_path)
            page.wait_for_url(re.compile(r".*/user/zoe/cpu1/.*"), timeout=120_000)

            # Home: where the server runs
            page.goto(f"{hub.url}/hub/home")
            where = page.inner_text("tr[data-server-name=cpu1] .cloudhop-where-col")
            assert " ".join(where.split()) == "local · local · no GPU · $0.00/h · spent $0.00"
            page.screenshot(path=str(SHOTS / "home.png"), full_page=True)
            assert errors == []
        finally:
            open_gate(tmp_path)
            browser.close()
