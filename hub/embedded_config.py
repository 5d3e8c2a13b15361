"""The embedded JupyterHub defaults of ``cloudhop up`` (a JupyterHub config file).

``cloudhop up`` sets CLOUDHOP_DATA_DIR, CLOUDHOP_IP, CLOUDHOP_PORT and
CLOUDHOP_EXTRA_CONFIG, then starts JupyterHub with this file. The extra config file, if
any, is loaded after the defaults, so a plain assignment there overrides anything here;
Cloudhop's services, roles and handlers are then added to what it set, also when it used
``.append``/``.extend``/``.update`` (:func:`cloudhop.hub.services.settle_operator_settings`).
The internal ports are kept in the data folder unless it chose them
(:func:`cloudhop.hub.datadir.keep_internal_ports`).
"""

import getpass
import os
import shutil
import sys
from pathlib import Path

from cloudhop.hub.datadir import hub_id, keep_internal_ports, kept_port, secret_file

c = get_config()  # noqa: F821 - provided by traitlets when loading a config file

data_dir = Path(os.environ["CLOUDHOP_DATA_DIR"])

c.JupyterHub.ip = os.environ.get("CLOUDHOP_IP", "127.0.0.1")
c.JupyterHub.port = int(os.environ.get("CLOUDHOP_PORT", "8000"))
c.JupyterHub.db_url = f"sqlite:///{data_dir / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(data_dir / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.pid_file = str(data_dir / "jupyterhub-proxy.pid")

# the npm proxy when it is on PATH, else the Python port shipped as a dependency, run with
# event streams passed on as they come (cloudhop.hub.proxy: the spawn progress page)
_node_proxy = shutil.which("configurable-http-proxy")
_py_proxy = Path(sys.executable).with_name("configurable-http-proxy")
if _node_proxy and Path(_node_proxy).resolve() != _py_proxy.resolve() and b"node" in Path(_node_proxy).read_bytes()[:200]:
    c.ConfigurableHTTPProxy.command = [_node_proxy]
else:
    c.ConfigurableHTTPProxy.command = [sys.executable, "-m", "cloudhop.hub.proxy"]

# user servers survive a hub restart; the hub re-attaches from its database
c.JupyterHub.cleanup_servers = False
c.JupyterHub.allow_named_servers = True
c.JupyterHub.spawner_class = "cloudhop"
c.Spawner.default_url = "/lab"
# JupyterLab asks no user about "Jupyter news" and fetches no news or update feed: a
# server may have no internet, and the hub's admin, not each user, picks the version
c.Spawner.args = ["--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
c.Spawner.start_timeout = 900  # cloud GPU VMs can take minutes to boot
c.Spawner.http_timeout = 300
c.CloudhopSpawner.providers = ["local"]
c.CloudhopSpawner.hub_id = hub_id(data_dir)  # random, kept: the reaper uses it too
# local workspaces: in the data folder, or outside it when the hub is root and each user's
# servers run as their own account (docs/security.md, "Local provider isolation")
from cloudhop.spawner.providers.workspaces import cloudhop_up_settings  # noqa: E402

c.LocalProvider.update(cloudhop_up_settings(data_dir, c.CloudhopSpawner.hub_id))
# Cloudhop's hub APIs (offers, move and kernel tokens, Ray clusters - docs/ray.md) are
# registered by the application `cloudhop up` runs (cloudhop.hub.app.CloudhopHub)

# a first run and a workshop: one shared password for users, another for the admin
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = secret_file(data_dir / "user_password")
c.SharedPasswordAuthenticator.admin_password = secret_file(data_dir / "admin_password", 32)
c.Authenticator.admin_users = {getpass.getuser()}
c.Authenticator.allow_all = True

print(
    "\n  Cloudhop: log in at http://{ip}:{port}/ with any user name and the password {pw}\n"
    "  (admin: {admin}, password in {adminfile})\n".format(
        ip=c.JupyterHub.ip, port=c.JupyterHub.port,
        pw=c.SharedPasswordAuthenticator.user_password, admin=getpass.getuser(),
        adminfile=data_dir / "admin_password",
    ),
    flush=True,
)

# workshop mode (`cloudhop up --workshop students=30,gpu=share:4`, docs/teaching.md): a
# students group, its policy, GPU slices; before the operator's config, which still wins
from cloudhop.hub import workshop  # noqa: E402

if os.environ.get(workshop.ENV):
    for _line in workshop.apply(c, workshop.Workshop.from_env(os.environ[workshop.ENV])):
        print(f"  workshop: {_line}", flush=True)

_extra = os.environ.get("CLOUDHOP_EXTRA_CONFIG")
if _extra:
    load_subconfig(_extra)  # noqa: F821 - provided by traitlets

# an operator's c.JupyterHub.services.append(...) and the like, made plain lists and dicts
# that Cloudhop's own entries are added to below
from cloudhop.hub.services import settle_operator_settings  # noqa: E402

settle_operator_settings(c)
# Cloudhop's name on every hub page and where each server runs on Home (hub/templates),
# after the operator's own template folders, so an operator's template still wins
import cloudhop.hub  # noqa: E402
from cloudhop.hub.services import setting  # noqa: E402

c.JupyterHub.template_paths = [*setting(c, "JupyterHub", "template_paths", []),
                               str(Path(cloudhop.hub.__file__).parent / "templates")]
# the hub's and the proxy's APIs on ports of this data folder's own, so two hubs coexist
keep_internal_ports(c, data_dir)

# the snapshot store for migrations (docs/migration.md); after the extra config, so the
# services and roles it set are extended, not replaced. c.CloudhopStore.port / .s3 tune it
# (cloudhop.hub.config.CloudhopStore): s3 = {"bucket": ...} keeps snapshots in a bucket
# instead of the data dir.
from cloudhop.hub.config import CloudhopStore  # noqa: E402
from cloudhop.hub.snapshot_store import add_store_service  # noqa: E402

_store = CloudhopStore(config=c)
_public_ip = c.JupyterHub.ip if c.JupyterHub.ip not in ("", "0.0.0.0", "::") else "127.0.0.1"
add_store_service(
    c, data_dir=str(data_dir), port=_store.port or kept_port(data_dir, "store_port"),
    public_url=c.JupyterHub.get("public_url") or f"http://{_public_ip}:{c.JupyterHub.port}",
    s3=_store.s3 or None,
)

# sharing a live server (docs/teaching.md): users may share their own servers, and each
# server's token may manage that server's shares (its owner's "Share this server")
from cloudhop.hub.sharing import add_sharing_scopes  # noqa: E402

add_sharing_scopes(c)
# the instructor's page (docs/teaching.md): running servers, seats, stop or hand a notebook
# to a whole group, all with the instructor's own permissions
from cloudhop.hub.instructor import add_instructor_service  # noqa: E402

add_instructor_service(c, port=kept_port(data_dir, "instructor_port"),
                       proxy_url=f"http://{_public_ip}:{c.JupyterHub.port}", seats=workshop.seats(os.environ))

# the spend ledger (cloudhop.spawner.ledger): every node's priced running time, in the data
# folder unless the operator named a file; the group policy (budgets included) is checked
# here, so a bad rule stops the hub naming the setting
from cloudhop.spawner.policy import Policy  # noqa: E402

if "path" not in c.CloudhopLedger:
    c.CloudhopLedger.path = str(data_dir / "ledger.sqlite")
Policy(config=c)
# spot rescues (cloudhop.hub.rescue_api): c.CloudhopRescue.on_demand, checked here by name
from cloudhop.spawner.rescue import CloudhopRescue  # noqa: E402

CloudhopRescue(config=c)

# the reaper (docs/clouds.md): terminates nodes tagged with this hub that no active server
# owns, after a grace period; c.CloudhopReaper.enabled / .interval / .grace tune it
# (cloudhop.hub.config.CloudhopReaper)
from cloudhop.hub.reaper import reaper_service_config  # noqa: E402

reaper_service_config(c, data_dir=str(data_dir))

# moves' records (moves.json) and their reconciler (docs/migration.md, "Faults"): stops
# and removes what a move cut off by a fault left running; c.CloudhopMoves.* tunes it
from cloudhop.hub.move_reconciler import add_move_reconciler  # noqa: E402

add_move_reconciler(c, data_dir=str(data_dir))

# idle culling (cloudhop.hub.culling): the groups' idle_minutes (per GPU type) and
# max_hours in c.Policy.groups, and `cloudhop up --cull-idle MINUTES` for the rest; a
# bad rule stops the hub here, naming it. A cull is a normal stop of the server.
from cloudhop.hub.culling import CullSettings  # noqa: E402
from cloudhop.hub.services import add_idle_culler  # noqa: E402

if int(os.environ.get("CLOUDHOP_CULL_IDLE") or 0) > 0:
    add_idle_culler(c, timeout=int(os.environ["CLOUDHOP_CULL_IDLE"]))
elif CullSettings.from_config(c).any_limit:
    add_idle_culler(c)

# the servers' own settings (c.CloudhopMigration.*: moves and hibernation) written in the
# hub's config: checked here by name, then passed on to every server
from cloudhop.spawner.server_settings import forward as forward_server_settings  # noqa: E402

forward_server_settings(c)

# the store's config function (shared with a plain `jupyterhub -f`) lists Cloudhop's hub
# APIs in c.JupyterHub.extra_handlers; CloudhopHub registers them instead, so that
# deprecated setting holds only the operator's own routes
from cloudhop.hub.app import leave_routes_to_the_app  # noqa: E402

leave_routes_to_the_app(c)
