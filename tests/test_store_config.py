"""The hub config that adds the snapshot store: scopes, roles, and where credentials go."""

from __future__ import annotations

from traitlets.config import Config

from cloudhop.hub.snapshot_store import EXTENSION_ARG, SERVICE_NAME, SNAPSHOTS_SCOPE, add_store_service
from cloudhop.hub.tokens_api import MOVES_SCOPE


def test_store_service_config_keeps_credentials_on_the_hub(tmp_path):
    c = Config()
    c.JupyterHub.services = [{"name": "other", "api_token": "x"}]
    c.JupyterHub.load_roles = [{"name": "other-role", "scopes": ["read:users"], "services": ["other"]}]
    env = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "HOME": "/root"}
    add_store_service(c, data_dir=str(tmp_path), port=12345, public_url="http://hub.example:8000/",
                      s3={"bucket": "snaps", "endpoint_url": "http://minio:9000"}, env=env)

    services = {s["name"]: s for s in c.JupyterHub.services}
    assert set(services) == {"other", SERVICE_NAME}
    store = services[SERVICE_NAME]
    assert store["url"] == "http://127.0.0.1:12345"
    assert store["environment"]["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    assert store["environment"]["CLOUDHOP_STORE_S3_BUCKET"] == "snaps"
    assert store["environment"]["HOME"] == "/root", "boto3 finds ~/.aws files through HOME"
    # users' servers learn only where the store is - never a credential
    user_env = c.Spawner.environment.get_value({})  # a lazy update of the trait's dict
    assert user_env == {"CLOUDHOP_STORE_URL": f"http://hub.example:8000/services/{SERVICE_NAME}/",
                        "CLOUDHOP_STORE_LOCAL_URL": f"http://127.0.0.1:12345/services/{SERVICE_NAME}/"}
    assert not any("s3cr3t" in str(v) or "AKIA" in str(v) for v in c.Spawner.args)

    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert sorted(roles["user"]["scopes"]) == sorted([
        "self", f"access:services!service={SERVICE_NAME}", f"{SNAPSHOTS_SCOPE}!user", f"{MOVES_SCOPE}!user"])
    assert "other-role" in roles
    assert set(c.JupyterHub.custom_scopes) == {SNAPSHOTS_SCOPE, MOVES_SCOPE}
    # the server's own token: the default server role plus exactly what a migration needs,
    # on this server only (never servers!user: starting and stopping the user's servers)
    assert sorted(c.Spawner.server_token_scopes) == sorted([
        "users:activity!user", "access:servers!server", "read:servers!user", "delete:servers!server",
        f"access:services!service={SERVICE_NAME}", f"{SNAPSHOTS_SCOPE}!server", f"{MOVES_SCOPE}!server",
    ])
    assert EXTENSION_ARG in c.Spawner.args
    assert any("offers" in h[0] for h in c.JupyterHub.extra_handlers)
    assert any("cloudhop/moves" in h[0] for h in c.JupyterHub.extra_handlers)
