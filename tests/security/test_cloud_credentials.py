"""Attacks on the newer clouds' credentials (Lambda Cloud's API key, DigitalOcean's token,
Azure's service principal secret, Yandex Cloud's IAM token): a launch spec whose environment carries every
credential variable of every cloud (an operator's ``Spawner.environment`` gone wrong)
still sends none of them to the cloud in the node's user-data or anywhere else in a
request body; the key travels only in the Authorization header; a refused credential's
error, the form's reason, the node and the provider's log never contain it."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging

import pytest

from tests.new_clouds import NEW_CLOUDS

MARKER = "leaked-secret-5d1b"
CREDENTIAL_ENV = ("LAMBDA_API_KEY", "DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN", "YC_IAM_TOKEN", "YC_TOKEN",
                  "CLOUDHOP_YC_TOKEN", "RAY_YANDEX_KEY", "AZURE_CLIENT_SECRET",
                  "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AWS_SECRET_ACCESS_KEY", "JUPYTERHUB_CRYPT_KEY",
                  "CLOUDHOP_AZURE_CLIENT_SECRET", "RAY_AZURE_CLIENT_SECRET")


def sent(double) -> str:
    """Every request body and query the double saw, as text, with Azure's base64 custom
    data (the user-data) decoded."""
    def walk(value):
        if isinstance(value, dict):
            return {k: (base64.b64decode(v).decode() if k == "customData" else walk(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return json.dumps([walk(r["body"]) for r in double.requests] + [r["query"] for r in double.requests])


@pytest.mark.parametrize("cloud", sorted(NEW_CLOUDS))
async def test_no_credential_reaches_the_cloud_in_a_request_body(cloud, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    async with NEW_CLOUDS[cloud](monkeypatch) as wired:
        monkeypatch.setenv("AZURE_CLIENT_SECRET", MARKER)
        spec = wired.make("mallory")
        spec = dataclasses.replace(spec, env={**spec.env, **{k: f"{MARKER}-{k}" for k in CREDENTIAL_ENV}})
        node = await wired.provider.launch(spec)
        status = await wired.provider.status(node.id)
        bodies = sent(wired.double)
        assert "JUPYTERHUB_API_TOKEN=server-own-token-123" in bodies  # the user-data is in there
        for text in (bodies, caplog.text, repr(node), repr(status)):
            assert MARKER not in text
        if wired.secret:
            assert wired.secret not in bodies + caplog.text + repr(node)
            auth = {r["headers"].get("authorization") for r in wired.double.requests}
            assert auth == {f"Bearer {wired.secret}"}, "the key goes in the Authorization header only"
        await wired.provider.terminate(node.id)


@pytest.mark.parametrize("cloud", ["lambda", "digitalocean", "yandex"])
async def test_a_refused_credential_is_not_repeated_in_the_error_or_the_reason(cloud, monkeypatch):
    async with NEW_CLOUDS[cloud](monkeypatch) as wired:
        wrong = "wrong-credential-0a9e"
        monkeypatch.setenv({"lambda": "LAMBDA_API_KEY", "digitalocean": "DIGITALOCEAN_TOKEN",
                            "yandex": "YC_IAM_TOKEN"}[cloud], wrong)
        provider = type(wired.provider)(api_endpoint=wired.provider.api_endpoint,
                                        **({"ssh_key_name": "k"} if cloud == "lambda" else {}))
        with pytest.raises(Exception) as err:
            await provider.launch(wired.make("mallory"))
        assert getattr(err.value, "reason", None) == "credentials"
        reason = await provider.check_available()
        assert reason and wrong not in reason and wrong not in str(err.value) and wired.secret not in reason
