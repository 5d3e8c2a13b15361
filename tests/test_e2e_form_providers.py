"""The spawn form of a real hub with clouds enabled but no credentials for them: each
cloud is listed as unavailable with its reason, the local provider still launches, and
the hub neither crashes nor shows a secret."""

from __future__ import annotations

import re

import pytest
import requests


def login(hub, user: str) -> requests.Session:
    """A browser-like session: the login form with its XSRF token, the shared password."""
    s = requests.Session()
    s.get(f"{hub.url}/hub/login", timeout=10)
    password = (hub.data_dir / "user_password").read_text().strip()
    r = s.post(f"{hub.url}/hub/login", data={"username": user, "password": password,
                                             "_xsrf": s.cookies.get("_xsrf")}, timeout=30)
    assert r.status_code == 200, r.text[:500]
    return s


@pytest.mark.e2e
def test_clouds_without_credentials_are_shown_unavailable_with_the_reason(hub_factory, tmp_path):
    nowhere = tmp_path / "no-credentials"
    hub = hub_factory(
        'c.CloudhopSpawner.providers = ["local", "aws", "gcp", "oci", "lambda", "azure", "digitalocean", "yandex"]\n'
        f'c.LambdaProvider.api_key_file = {str(nowhere / "lambda_keys")!r}\n'
        f'c.DigitalOceanProvider.token_file = {str(nowhere / "do-token")!r}\n'
        f'c.YandexProvider.service_account_key_file = {str(nowhere / "yandex-key.json")!r}\n',
        env={
            # no credential of any cloud is found, whatever this machine has
            "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "",
            "AWS_SHARED_CREDENTIALS_FILE": str(nowhere / "aws-credentials"),
            "AWS_CONFIG_FILE": str(nowhere / "aws-config"), "AWS_EC2_METADATA_DISABLED": "true",
            "GOOGLE_APPLICATION_CREDENTIALS": str(nowhere / "adc.json"), "NO_GCE_CHECK": "True",
            "CLOUDSDK_CONFIG": str(nowhere / "gcloud"), "OCI_CONFIG_FILE": str(nowhere / "oci-config"),
            "LAMBDA_API_KEY": "", "DIGITALOCEAN_TOKEN": "", "DIGITALOCEAN_ACCESS_TOKEN": "",
            "YC_IAM_TOKEN": "", "YC_TOKEN": "", "YC_SERVICE_ACCOUNT_KEY_FILE": "",
            "AZURE_SUBSCRIPTION_ID": "",
        },
    )
    page = login(hub, "ada").get(f"{hub.url}/hub/spawn/ada", timeout=60)
    assert page.status_code == 200, page.text[:500]
    listed = re.search(r'<ul class="ch-unavailable" id="ch-unavailable">(.*?)</ul>', page.text, re.S)
    assert listed, "the form lists the providers it cannot launch on"
    reasons = dict(re.findall(r"<li>\s*([\w ]+?): (.*?)</li>", listed.group(1), re.S))
    assert set(reasons) == {"AWS", "GCP", "OCI", "Lambda Cloud", "Azure", "DigitalOcean", "Yandex Cloud"}, reasons
    assert all("credentials" in reason for reason in reasons.values()), reasons
    assert re.search(r'<option value="local"(?![^>]*disabled)', page.text), "local stays launchable"
    assert "Traceback" not in hub.log()

    # and a spawn on the provider that is there still works from the same hub
    model = hub.spawn("ada", {"provider": "local", "gpu": "none"})
    assert model["ready"]
