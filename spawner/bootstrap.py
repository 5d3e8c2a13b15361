"""Node bootstrap: the cloud-init user-data that turns a fresh GPU VM into a user's server.

:func:`render_user_data` is a pure function (no environment, no network): the same spec
renders the same text, so tests read it back. The VM it describes

1. writes the server's environment to a root-only file (``/etc/cloudhop/env``),
2. makes sure Docker is there and, when the offer has GPUs, that Docker's NVIDIA
   runtime is configured (installing Docker and NVIDIA's container toolkit from the
   distribution's and NVIDIA's package repositories when the image lacks them; the
   script only fills in what is missing and logs what it did to the console),
3. for a node of a Ray cluster, confines Ray's ports with the node's own packet filter
   (:func:`ray_guard`: the private address and loopback only; the dashboard and client
   server loopback only), since Ray binds its gRPC servers to every interface,
4. runs the single-user image with ``--gpus all`` (GPU offers only), the environment
   file and ``spec.cmd``, listening on ``spec.port``.

What it carries: the ``JUPYTERHUB_*``/``CLOUDHOP_*``/``RAY_*`` variables from
``spec.env`` — the server's own API token and, for a node of a Ray cluster, the
cluster's Ray token (``RAY_AUTH_TOKEN``, :mod:`.ray.auth`) among them, both only in the
root-only env file — and nothing else. Any other variable is dropped here, and names
that look like cloud credentials are refused even with an allowed prefix, so a
credential can never reach a node's user-data (which any process on the VM can read
from the metadata service, and anyone allowed to read the instance through the cloud's
API: no cloud secret store is used yet).
"""

from __future__ import annotations

import re
import shlex
from importlib import resources
from string import Template
from urllib.parse import quote, urlsplit, urlunsplit

#: prefixes of the variables a node receives; anything else in ``spec.env`` is dropped
ALLOWED_ENV_PREFIXES = ("JUPYTERHUB_", "JPY_", "CLOUDHOP_", "RAY_")
#: names that are never written, whatever their prefix
_SECRET_NAME = re.compile(
    r"(AWS_|AZURE_|GOOGLE_|GCLOUD|OCI_|LAMBDA_|DIGITALOCEAN|YANDEX|(?:^|_)YC_|SECRET|PASSWORD|PRIVATE_KEY|CREDENTIAL|"
    r"SESSION_TOKEN|API_KEY|CRYPT_KEY)",
    re.IGNORECASE,
)
# the server's own token is the one secret the node needs
_TOKEN_NAMES = {"JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN"}
# the URLs by which the node reaches the hub; rewritten to the hub's connect URL
_HUB_URL_VARS = ("JUPYTERHUB_API_URL", "JUPYTERHUB_ACTIVITY_URL")

TEMPLATE = "templates/user-data.yaml"


def allowed_env(env: dict | None) -> dict:
    """The subset of ``env`` a node or pod may receive: the allowed prefixes, the
    server's own token, and nothing that looks like a credential."""
    out = {}
    for key, value in (env or {}).items():
        if not key.startswith(ALLOWED_ENV_PREFIXES):
            continue
        if key not in _TOKEN_NAMES and _SECRET_NAME.search(key):
            continue
        out[key] = str(value)
    return out


def node_env(spec, *, hub_connect_url: str | None = None) -> dict:
    """The environment the node's container gets: :func:`allowed_env` of ``spec.env``,
    with the hub's URLs pointed at ``hub_connect_url`` (the address nodes reach the hub
    by; the hub's own ``JUPYTERHUB_API_URL`` is often ``127.0.0.1``) and the server
    listening on every interface at ``spec.port``."""
    env = allowed_env(spec.env)
    if hub_connect_url:
        for key in _HUB_URL_VARS:
            if key in env:
                env[key] = _rebase(env[key], hub_connect_url)
    # the single-user server reads where to listen from JUPYTERHUB_SERVICE_URL
    service = env.get("JUPYTERHUB_SERVICE_URL")
    path = urlsplit(service).path if service else env.get("JUPYTERHUB_SERVICE_PREFIX", "/")
    env["JUPYTERHUB_SERVICE_URL"] = f"http://0.0.0.0:{int(spec.port)}{path or '/'}"
    if getattr(spec, "role", "notebook") == "notebook" and env.get("JUPYTERHUB_API_URL") and env.get("JUPYTERHUB_USER"):
        # where the start script reports its steps (:mod:`cloudhop.hub.launch_steps_api`)
        server = env.get("JUPYTERHUB_SERVER_NAME", "")
        env["CLOUDHOP_LAUNCH_STEPS_URL"] = (
            f"{env['JUPYTERHUB_API_URL'].rstrip('/')}/cloudhop/launch-steps/{quote(env['JUPYTERHUB_USER'], safe='')}"
            + (f"/{quote(server, safe='')}" if server else ""))
    return env


def _rebase(url: str, base: str) -> str:
    """``url`` with scheme and host taken from ``base`` (path kept)."""
    u, b = urlsplit(url), urlsplit(base.rstrip("/"))
    path = u.path
    if b.path and not path.startswith(b.path + "/"):
        path = b.path + path
    return urlunsplit((b.scheme, b.netloc, path, u.query, u.fragment))


def container_command(spec, *, image: str, gpus: bool) -> list[str]:
    """The ``docker run`` argv the node executes. Host networking publishes the
    server's port (``spec.port``, set in ``JUPYTERHUB_SERVICE_URL``) and, for Ray, the
    head's and workers' ports without a port list; the firewall decides who reaches them."""
    argv = [
        "docker", "run", "--detach", "--restart", "on-failure:5",
        "--name", f"cloudhop-{spec.role}",
        "--network", "host",
        "--shm-size", "8g",
        "--env-file", "/etc/cloudhop/env",
        "--label", f"cloudhop-request={spec.request_id}",
    ]
    if gpus:
        argv += ["--gpus", "all"]
    argv.append(image)
    argv += [str(a) for a in spec.cmd]
    return argv


def _env_file(env: dict) -> str:
    # docker's --env-file takes KEY=VALUE literally, one per line: refuse newlines
    lines = []
    for key in sorted(env):
        value = env[key].replace("\n", " ")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def _indent(text: str, n: int) -> str:
    pad = " " * n
    return "\n".join(pad + line if line else line for line in text.splitlines())


#: the notebook node's start script sends each finished step to the hub's launch timeline
#: (docs/launch-time.md) with the server's own token; a hub that cannot be reached never
#: stops the start. A Ray worker holds no hub token, so its steps are only logged.
_STEP_REPORTER = """\
envvar() { sed -n "/^$1=/{s/^$1=//p;q;}" /etc/cloudhop/env 2>/dev/null || true; }
step() {
  log "step done: $1"
  local url
  url=$(envvar CLOUDHOP_LAUNCH_STEPS_URL)
  [ -n "$url" ] && command -v curl >/dev/null 2>&1 || return 0
  curl -fsS -m 5 -X POST -H "Authorization: token $(envvar JUPYTERHUB_API_TOKEN)" \\
    -H "Content-Type: application/json" -d "{\\"step\\": \\"$1\\"}" "$url" >/dev/null 2>&1 || true
}"""
_STEP_LOGGER = 'step() { log "step done: $1"; }'


def _ray_ports() -> dict:
    """The Ray ports of a VM node (the fixed block, :mod:`.ray.ports`): the whole range,
    and those that must answer on loopback only (the head's dashboard and client server,
    which the notebook's proxy and kernels reach on the node itself)."""
    from .ray.ports import LAYOUT, VM_BASE, VM_PORT_RANGE

    return {"range": f"{VM_PORT_RANGE[0]}:{VM_PORT_RANGE[1]}",
            "loopback": ",".join(str(VM_BASE + LAYOUT[n]) for n in ("dashboard_port", "ray_client_server_port"))}


#: the Ray node's host firewall, set before its container starts. Ray binds its gRPC
#: servers (GCS, raylet, object manager, workers) to every interface of a VM, so the
#: node's own packet filter makes its Ray ports answer only where they must: on the
#: node's private addresses (head<->worker traffic; the cloud's per-cluster rule admits
#: only the cluster's nodes there) and on loopback; the dashboard and the client server on
#: loopback only. Traffic to the public address, a container bridge or over IPv6 is
#: dropped. Without iptables the node does not start Ray (fail closed).
_RAY_GUARD = """\
ray_guard() {
  local chain=CLOUDHOP-RAY addr dev accepted=" "
  if ! command -v iptables >/dev/null 2>&1; then
    log "iptables is missing: Ray's ports cannot be confined to the private network; not starting"
    exit 1
  fi
  iptables -N $$chain 2>/dev/null || iptables -F $$chain
  iptables -A $$chain -i lo -j ACCEPT
  iptables -A $$chain -p tcp -m multiport --dports ${loopback} -j DROP
  while read -r dev addr; do
    case "$$dev" in docker*|br-*|veth*|cni*|virbr*) continue;; esac
    addr=$${addr%%/*}
    case "$$addr" in
      10.*|192.168.*|172.1[6-9].*|172.2[0-9].*|172.3[01].*|100.6[4-9].*|100.[7-9][0-9].*|100.1[01][0-9].*|100.12[0-7].*)
        iptables -A $$chain -d "$$addr" -j ACCEPT
        accepted="$$accepted$$addr "
        log "Ray's ports answer on $$addr ($$dev)";;
    esac
  done < <(ip -o -4 addr show scope global | awk '{print $$2, $$4}')
  # the address Ray advertises for a head (the one its outgoing traffic leaves by): a
  # public one on clouds that put it on the interface; the cloud's cluster rule guards it
  addr=$$(ip -o -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p' || true)
  case "$$accepted" in
    *" $$addr "*) ;;
    *) if [ -n "$$addr" ]; then
         iptables -A $$chain -d "$$addr" -j ACCEPT
         log "Ray's node address $$addr is not private: Ray's ports answer there too, behind the cloud's cluster rule"
       fi;;
  esac
  iptables -A $$chain -j DROP
  iptables -C INPUT -p tcp --dport ${range} -j $$chain 2>/dev/null \\
    || iptables -I INPUT 1 -p tcp --dport ${range} -j $$chain
  if command -v ip6tables >/dev/null 2>&1; then
    ip6tables -C INPUT -p tcp --dport ${range} ! -i lo -j DROP 2>/dev/null \\
      || ip6tables -I INPUT 1 -p tcp --dport ${range} ! -i lo -j DROP
  fi
  step ray-firewall
}
ray_guard"""


def ray_guard(spec) -> str:
    """The start script's lines that confine a Ray node's ports (:data:`_RAY_GUARD`);
    empty for a node that runs no Ray (no cluster tag)."""
    from .providers.base import TAG_RAY_CLUSTER

    if not (getattr(spec, "tags", None) or {}).get(TAG_RAY_CLUSTER):
        return ""
    return Template(_RAY_GUARD).substitute(_ray_ports())


def render_user_data(spec, *, image: str, hub_connect_url: str | None = None) -> str:
    """Cloud-init (``#cloud-config``) text that starts ``spec``'s server on a VM.

    ``image`` is the single-user container image; ``hub_connect_url`` is the hub's
    address as nodes see it (``http://hub.example.org:8081``), used for the hub API
    and activity URLs. The result holds the server's own API token (and a Ray node's
    cluster token) in the root-only env file, and no other secret.
    """
    gpus = bool(getattr(spec.offer, "gpu_count", 0))
    env = node_env(spec, hub_connect_url=hub_connect_url)
    run = " ".join(shlex.quote(a) for a in container_command(spec, image=image, gpus=gpus))
    template = Template(resources.files(__package__).joinpath(TEMPLATE).read_text())
    return template.substitute(
        env_file=_indent(_env_file(env), 6),
        gpus="1" if gpus else "0",
        image=shlex.quote(image),
        docker_run=run,
        port=int(spec.port),
        role=spec.role,
        request_id=shlex.quote(spec.request_id),
        step_function=_indent(_STEP_REPORTER if "CLOUDHOP_LAUNCH_STEPS_URL" in env else _STEP_LOGGER, 6),
        ray_guard=_indent(ray_guard(spec), 6),
    )
