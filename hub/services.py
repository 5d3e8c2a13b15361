"""What every hub-managed Cloudhop service shares: how it is added to a JupyterHub
config, which hub-side secrets it may inherit, and how it ends with its hub.

JupyterHub starts managed services in their own session, so a hub killed outright
(SIGKILL, OOM) leaves them running; its successor starts new ones. A service therefore
watches its parent process and exits when the hub that started it is gone.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys

from traitlets.config.loader import LazyConfigValue

from cloudhop.spawner.validate import require_number

#: cloud credentials a service on the hub may inherit from the hub's environment (they go
#: to hub-side services only, never to a user's server or a node)
CREDENTIAL_ENV = (
    "HOME", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AWS_EC2_METADATA_DISABLED", "AWS_CA_BUNDLE", "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CONFIG", "OCI_CONFIG_FILE", "KUBECONFIG",
    # in a hub pod: the in-cluster API address (the service account's token is a file),
    # and EKS's IAM roles for service accounts and Pod Identity
    "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_SESSION_NAME", "AWS_STS_REGIONAL_ENDPOINTS",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    # Azure's default credential chain (a service principal, workload identity, az CLI),
    # Lambda Cloud's API key, DigitalOcean's token and Yandex Cloud's tokens, key file and folder
    "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST", "AZURE_SUBSCRIPTION_ID", "AZURE_CONFIG_DIR",
    "LAMBDA_API_KEY", "DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN",
    "YC_IAM_TOKEN", "YC_TOKEN", "YC_SERVICE_ACCOUNT_KEY_FILE", "YC_FOLDER_ID",
)


def hub_credentials(env=os.environ) -> dict:
    """The credential variables set in ``env`` (for a hub-side service's environment)."""
    return {k: env[k] for k in CREDENTIAL_ENV if env.get(k)}


#: the settings Cloudhop adds its own entries to after the operator's config is loaded,
#: with JupyterHub's defaults for them
EXTENDED_SETTINGS = {
    ("JupyterHub", "services"): [], ("JupyterHub", "load_roles"): [],
    ("JupyterHub", "extra_handlers"): [], ("Spawner", "args"): [],
    ("Spawner", "server_token_scopes"): [], ("Spawner", "environment"): {},
}


def setting(c, section: str, name: str, initial):
    """``c.<section>.<name>`` as a plain list or dict: a copy of ``initial`` (JupyterHub's
    default) when unset; an operator's ``.append``/``.extend``/``.prepend``/``.update``
    (traitlets keeps those as a ``LazyConfigValue`` until it knows the value they change)
    applied to ``initial``; else a copy of the value set."""
    if name not in c[section]:
        return copy.deepcopy(initial)
    value = c[section][name]
    if isinstance(value, LazyConfigValue):
        return value.get_value(initial)
    return type(initial)(value or initial)


def settle_operator_settings(c) -> None:
    """Make each of :data:`EXTENDED_SETTINGS` that the config changes lazily a plain list
    or dict (an operator's ``.append``/``.update`` applied to JupyterHub's default), so
    Cloudhop's services, roles, handlers and spawner settings are added to the operator's
    instead of failing on a lazy value. Call it once the operator's config is loaded."""
    for (section, name), initial in EXTENDED_SETTINGS.items():
        if isinstance(c[section].get(name), LazyConfigValue):
            c[section][name] = setting(c, section, name, initial)


def add_service(c, service: dict, role: dict | None = None) -> None:
    """Add ``service`` (a ``c.JupyterHub.services`` entry) and its ``role`` to config
    ``c``, replacing entries of the same name, keeping everything else the operator set
    (a plain list or one they added to with ``.append``/``.extend``)."""
    # the config is loaded by the hub itself: the service learns its hub's pid from it, so
    # a hub killed while the service is still starting up is not missed (see hub_pid)
    service = {**service, "environment": {**service.get("environment", {}), HUB_PID_ENV: str(os.getpid())}}
    services = setting(c, "JupyterHub", "services", [])
    c.JupyterHub.services = [s for s in services if s.get("name") != service["name"]] + [service]
    if role is not None:
        roles = setting(c, "JupyterHub", "load_roles", [])
        c.JupyterHub.load_roles = [r for r in roles if r.get("name") != role["name"]] + [role]


HUB_PID_ENV = "CLOUDHOP_HUB_PID"


def hub_pid() -> int:
    """The pid of the hub that started this service (its parent, as the hub wrote it)."""
    try:
        return int(os.environ[HUB_PID_ENV])
    except (KeyError, ValueError):
        return os.getppid()


def hub_is_gone(parent: int) -> bool:
    """True once the process that started this service (pid ``parent``) has gone."""
    return os.getppid() != parent


def exit_with_hub(interval_ms: int = 1000) -> None:
    """In a tornado service: stop the IOLoop once the hub that started us is gone, and
    when the hub stops us (JupyterHub sends SIGINT, then SIGTERM), so the service ends
    at once and quietly instead of with a KeyboardInterrupt traceback in the hub's log.
    Call it before the IOLoop starts."""
    import signal

    from tornado import ioloop

    parent = hub_pid()
    loop = ioloop.IOLoop.current()

    def check():
        if hub_is_gone(parent):
            loop.stop()

    ioloop.PeriodicCallback(check, interval_ms).start()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.asyncio_loop.add_signal_handler(sig, loop.stop)


#: what the idle culler's token may do: list users and their groups, read servers'
#: activity and state (the GPU type a server runs on), stop servers
CULLER_SCOPES = ["list:users", "read:users:activity", "read:users:groups", "read:servers",
                 "admin:server_state", "delete:servers"]


def add_idle_culler(c, *, timeout: int | None = None, every: int | None = None) -> dict:
    """Stop servers whose time is up under the culling policy (:mod:`.culling`): idle
    for their group's ``idle_minutes`` (per GPU type) or running past ``max_hours``, with
    ``timeout`` seconds (when given) as the idle limit where no group rule applies,
    checking every ``every`` seconds (default: ``c.CloudhopCuller.every``, else a quarter
    of the shortest limit). jupyterhub-idle-culler does the stopping; a cull is a normal
    hub stop. Servers report their activity (busy kernels, GPU use) every
    ``c.CloudhopCuller.report_seconds`` and warn their user before a cull."""
    from .culling import GPU_BUSY_ENV, REPORT_ENV, SETTINGS_ENV, CullSettings

    if timeout is not None:
        require_number(timeout, "the idle culler's timeout", minimum=0, strict=True, integer=True)
    settings = CullSettings.from_config(c, idle_minutes=None if timeout is None else timeout / 60)
    settings = dataclasses.replace(settings, enabled=True)
    every = every or settings.check_every()
    c.CloudhopCuller.enabled = True
    if timeout is not None:
        # the hub's own view of the limit (the servers' cull warnings, a stop's "cull"
        # reason: hub/culling_api.py, the spawner) is the culler's, not the config's
        c.CloudhopCuller.idle_minutes = timeout / 60
    env = setting(c, "Spawner", "environment", {})
    env.setdefault(REPORT_ENV, str(min(settings.report_seconds, every)))
    env.setdefault(GPU_BUSY_ENV, f"{settings.gpu_busy_percent:g}")
    c.Spawner.environment = env
    # the default idle limit goes in --timeout too, so the culler's own log says it
    service = {
        "name": "cloudhop-idle-culler",
        "command": [sys.executable, "-m", "cloudhop.hub.culling_service",
                    f"--timeout={int((settings.idle_minutes or 0) * 60) or 3600 * 24 * 365}",
                    f"--cull-every={every}", "--remove-named-servers=false", "--config=",
                    # the hub's largest page (its default is 50): its per-page count and
                    # offset scan grow with the users, so fewer pages cost it less
                    "--api-page-size=200"],
        "environment": {SETTINGS_ENV: settings.to_json()},
        "display": False,
    }
    add_service(c, service, {"name": "cloudhop-idle-culler", "scopes": CULLER_SCOPES,
                             "services": ["cloudhop-idle-culler"]})
    return service
