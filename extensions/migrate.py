"""Moving a running project to another server: the source's and the target's halves.

Source (:class:`Migrator`), one migration at a time:

1. ``snapshotting`` - checkpoint each session's kernel (notebook path -> kernel)
   (:mod:`.capture`) and ask the hub for the move's token (:mod:`cloudhop.hub.tokens_api`:
   short-lived, for the one new server, its API and its snapshot only);
2. ``launching`` - with the move's token, start the new named server of the same user
   with the requested user_options plus ``"restore": "none"`` and, at the same time,
   snapshot the workspace plus those checkpoints into the hub's snapshot store; wait
   until both are done (the hub's progress stream says when the target is ready);
3. ``restoring`` - ask the target to restore the snapshot (``POST {target}/cloudhop/api/
   restore``, through the hub's proxy: :mod:`.target`) and wait until it answers that
   it has; read its report (kept in the store beside the snapshot). A server that knows
   no way to the proxy (``proxy_url`` empty) snapshots first and starts the target with
   ``"restore": <snapshot id>`` instead;
4. ``verifying`` - every file's BLAKE3 and every kernel's variable list must match;
5. ``done`` - ``target_url`` is set; shortly after, the source asks the hub to stop it.
   When the snapshot left out something of the user's (anything in ``skipped`` that is
   not a cache: :func:`left_out`) and the move was not sent ``accept_skipped``, the move
   reads ``awaiting-accept`` instead: target and source both run until the user accepts
   (:meth:`Migrator.accept`, then ``done`` and the source stops) or stops the target.
   The move's snapshot stays in the store either way.

Each phase is shown in the state with the time it began (``timeline``) and recorded
by the hub (:mod:`cloudhop.hub.move_book`) before the source acts in it; a phase the hub
will not record (the hub restarted meanwhile and cut the move off, or the target no
longer runs at ``done``) fails the move. The hub's reconciler cleans up after moves cut
off by a fault (docs/migration.md, "Faults").

Any failure or timeout stops (and removes) the target and leaves the source running
and unchanged: state ``failed`` with ``error``. The server's own token cannot start or
stop any server but itself; only the move's token reaches the target.

Target (:class:`Restorer`), when started with ``CLOUDHOP_RESTORE`` or asked later:
restores the files while it recreates each session with the same path and kernel name,
loads each kernel's variables once the files are in place, then writes its report (also
served at ``cloudhop/api/restore``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field

from traitlets import Float, List, Unicode, default, validate
from traitlets.config import Configurable

from cloudhop.spawner.schema import MOVE_OPTIONS, OPTIONS, OptionError, check_shape
from cloudhop.spawner.server_settings import apply as apply_hub_settings
from cloudhop.spawner.validate import SettingError, check_number, require_url, setting_name

from .capture import KERNEL_PREFIX, capture, checkpoint_kernels, kernel_skipped, source_meta
from .hubclient import HubClient, HubError
from .kernelstate import restore_kernel
from .snapshot import Excludes, Manifest, StoreClient, restore_snapshot
from .snapshot.confined import Confined, RestoreError
from .snapshot.excludes import DEFAULT_MAX_FILE_BYTES, DEFAULT_PATTERNS, summary
from .snapshot.manifest import check_path
from .snapshot.protocol import KernelReport, RestoreReport
from .snapshot.snapshot import workspace_dest
from .target import Target, TargetError, default_proxy_url
from .unsaved import save_open_documents

log = logging.getLogger("cloudhop.migrate")
STATES = ("snapshotting", "launching", "restoring", "verifying", "awaiting-accept", "done", "failed")

#: user_options a move may carry: the spawner's schema, less ``restore`` (the move sets it),
#: plus the move's own options (``accept_skipped``), which stay with the source
MOVABLE = tuple(o for o in OPTIONS if o.name != "restore") + MOVE_OPTIONS


#: a folder a move waits in at each phase while a file named after the phase is there
#: (tests hold a move at a phase to kill a process then); unset, nothing waits
HOLD_ENV = "CLOUDHOP_MOVE_HOLD"


async def hold(phase: str, env=os.environ) -> None:
    """Wait while ``$CLOUDHOP_MOVE_HOLD/<phase>`` exists (a test's hold; see
    :data:`HOLD_ENV`). A move waits here once the hub has recorded ``phase``; at
    ``launching``, once the target was asked for."""
    folder = env.get(HOLD_ENV)
    while folder and os.path.exists(os.path.join(folder, phase)):
        await asyncio.sleep(0.1)


#: the ``restore`` option that starts a server with nothing to restore (the spawner's)
RESTORE_NONE = "none"


class Cancelled(RuntimeError):
    """A move's snapshot was ended because the move failed meanwhile."""


class Busy(RuntimeError):
    """A migration of this server is already running."""


class NotAccepted(RuntimeError):
    """An accept the move cannot take: it does not wait for one, or its target no longer
    runs (the move has then failed and this server keeps running)."""


def split_options(options: dict) -> tuple[dict, dict]:
    """``(the new server's user_options, the move's own options)`` of checked options."""
    own = {o.name for o in MOVE_OPTIONS}
    return ({k: v for k, v in options.items() if k not in own},
            {k: v for k, v in options.items() if k in own})


def left_out(skipped: list[dict]) -> list[dict]:
    """The workspace paths a move left out that are the user's: every ``skipped`` entry
    of the snapshot (those with a ``kind``) that is not a cache its tool rebuilds."""
    return [s for s in skipped if "kind" in s and not s.get("cache")]


def check_options(raw) -> dict:
    """Shape-check a move's user_options with the spawner's schema (same types, limits
    and messages as a spawn); the hub then checks the values against offers and policy.
    Returns them normalised, absent ones left out; raises :class:`OptionError`."""
    if isinstance(raw, dict) and "restore" in raw:
        raise OptionError("restore", "is set by the migration itself; leave it out")
    return check_shape(raw, MOVABLE)


def target_name(options: dict, mid: str) -> str:
    base = options.get("region") or options.get("provider") or "moved"
    base = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")[:40] or "moved"
    return f"{base}-{mid[:6]}"


@dataclass
class Migration:
    id: str
    options: dict
    #: the move's own options (:data:`~cloudhop.spawner.schema.MOVE_OPTIONS`)
    move_options: dict = field(default_factory=dict)
    state: str = "snapshotting"
    target_server: str | None = None
    target_url: str | None = None
    bytes_total: int = 0
    bytes_sent: int = 0
    variables: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    error: str | None = None
    snapshot_id: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    #: when each phase began (``{"snapshotting": t, "launching": t, ...}``)
    timeline: dict = field(default_factory=dict)
    #: the id of the hub's record of this move (None from a hub that keeps none)
    hub_move: str | None = None
    #: set once a client has read the state "done" (the source may then stop)
    read_done: asyncio.Event | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        """Not over yet; a move awaiting the user's accept is not (its target runs)."""
        return self.state not in ("done", "failed")

    def to_json(self) -> dict:
        return {
            "id": self.id, "state": self.state, "target_server": self.target_server,
            "target_url": self.target_url, "bytes_total": self.bytes_total,
            "bytes_sent": self.bytes_sent, "variables": self.variables, "skipped": self.skipped,
            "error": self.error, "snapshot": self.snapshot_id, "options": self.options,
            "move_options": self.move_options, "started": self.started, "finished": self.finished,
            "timeline": self.timeline,
            "left_out": summary(left_out(self.skipped)),
        }


def _default_store_url(env) -> str:
    """The store as the hub announced it; a server of the local provider runs on the
    hub's machine and reaches the service directly instead of through the proxy."""
    if env.get("CLOUDHOP_PROVIDER") == "local" and env.get("CLOUDHOP_STORE_LOCAL_URL"):
        return env["CLOUDHOP_STORE_LOCAL_URL"]
    return env.get("CLOUDHOP_STORE_URL", "")


class CloudhopMigration(Configurable):
    """Settings of moves from and into this server (``c.CloudhopMigration.*``): the one
    settings object the :class:`Migrator` and the :class:`Restorer` read. A bad value is
    refused when the server loads its config, as a ``TraitError`` naming the setting
    (the checks of :mod:`cloudhop.spawner.validate`). The hub's config may set them too:
    the hub passes its section on to every server (:mod:`cloudhop.spawner.server_settings`),
    and this server's own config wins."""

    store_url = Unicode(
        help="URL of the hub's snapshot store service. Default: $CLOUDHOP_STORE_URL, set by the "
        "hub ($CLOUDHOP_STORE_LOCAL_URL on the local provider, whose servers share the hub's host).",
    ).tag(config=True)
    proxy_url = Unicode(
        help="URL of the hub's proxy as this server reaches it, through which a move asks its target "
        "to restore. Default: $JUPYTERHUB_PUBLIC_URL, else the proxy of $CLOUDHOP_STORE_URL. Empty: "
        "a move starts its target only once the snapshot is stored (slower).",
    ).tag(config=True)
    launch_timeout = Float(900, help="Seconds to wait for the target server to start.").tag(config=True)
    restore_timeout = Float(1800, help="Seconds to wait for the target to restore files and kernels.").tag(config=True)
    kernel_timeout = Float(600, help="Seconds one kernel may take to checkpoint or restore "
                           "(including waiting for a cell that is running).").tag(config=True)
    save_timeout = Float(10, help="Seconds a snapshot (a stop, a spot rescue, a move) waits for JupyterLab "
                         "pages with unsaved documents to save them; a document still unsaved is listed in the "
                         "snapshot's skipped. 0: pages are not asked.").tag(config=True)
    stop_delay = Float(10, help="Seconds the source keeps running after a migration is done, "
                       "until a client has read the final state.").tag(config=True)
    token_lifetime = Float(3 * 3600, help="Seconds a move's token lives, 1 or more (the hub allows at "
                           "most a day): it must outlast the snapshot, the launch and the restore."
                           ).tag(config=True)
    exclude = List(Unicode(), list(DEFAULT_PATTERNS),
                   help="Glob patterns of workspace paths a snapshot leaves out. The default lists caches "
                   "their tools rebuild; anything else left out is the user's, and a move that leaves it "
                   "out keeps its source running until the user accepts.").tag(config=True)
    max_file_bytes = Float(DEFAULT_MAX_FILE_BYTES, help="Files larger than this (bytes) are left out "
                           "of a snapshot and listed in the move's skipped; the move keeps its source "
                           "running until the user accepts.").tag(config=True)
    #: seconds between looks at the store while a target without a reachable API restores
    #: (no ``proxy_url``; not a setting)
    poll_interval = 1.0

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # the section as the hub's config sets it, under this server's own config
        apply_hub_settings(self, os.environ)

    @default("store_url")
    def _store_url_default(self):
        return self._store_url("")

    @validate("store_url")
    def _check_store_url(self, proposal):
        return self._store_url(proposal["value"])

    def _store_url(self, value: str) -> str:
        """``value`` or, when empty, the URL the hub announced; either must be an http(s) URL."""
        return require_url(value or _default_store_url(os.environ), setting_name(self, type(self).store_url))

    @default("proxy_url")
    def _proxy_url_default(self):
        return default_proxy_url(os.environ)

    @validate("proxy_url")
    def _check_proxy_url(self, proposal):
        value = proposal["value"]
        return require_url(value, setting_name(self, type(self).proxy_url)).rstrip("/") if value else ""

    @validate("launch_timeout", "restore_timeout", "kernel_timeout")
    def _check_timeout(self, proposal):
        return check_number(proposal, minimum=0, strict=True, must="a number of seconds above 0")

    @validate("token_lifetime")
    def _check_token_lifetime(self, proposal):
        return check_number(proposal, minimum=1)

    @validate("stop_delay", "save_timeout")
    def _check_stop_delay(self, proposal):
        return check_number(proposal, minimum=0, must="a number of seconds, 0 or more")

    @validate("max_file_bytes")
    def _check_max_file_bytes(self, proposal):
        return check_number(proposal, minimum=0, strict=True, must="a number of bytes above 0")

    @validate("exclude")
    def _check_exclude(self, proposal):
        bad = [p for p in proposal["value"] if not p.strip()]
        if bad:
            raise SettingError(f"{setting_name(self, proposal['trait'])} must be a list of non-empty "
                               f"glob patterns, not one with {bad[0]!r}")
        return proposal["value"]

    @property
    def excludes(self) -> Excludes:
        """What a snapshot leaves out (a new :class:`Excludes` each time: it records its walk)."""
        return Excludes(patterns=tuple(self.exclude), max_file_bytes=int(self.max_file_bytes))

    def settings(self) -> "CloudhopMigration":
        """The settings of moves: this object, checked when its config was loaded, with
        the store URL resolved now (so a bad one the hub announced fails at load too)."""
        self.store_url  # noqa: B018 - computes (and checks) the default
        return self


class Migrator:
    """The source side. ``serverapp`` gives the root dir, sessions and kernels."""

    def __init__(self, serverapp, hub: HubClient, settings: CloudhopMigration):
        self.app = serverapp
        self.hub = hub
        self.settings = settings
        self.migrations: dict[str, Migration] = {}
        self._tasks: set[asyncio.Task] = set()

    def store(self, token: str) -> StoreClient:
        return StoreClient(self.settings.store_url, self.hub.user, token)

    async def move_hub(self, target: str, m: Migration | None = None) -> HubClient:
        """The hub client of a move to the new server ``target``: with the move's own
        short-lived token, asked of the hub with this server's token (which also opens
        the hub's record of move ``m``)."""
        try:
            grant = await self.hub.move_token(target, int(self.settings.token_lifetime))
        except HubError as err:
            raise RuntimeError(f"the hub gave no token for the snapshot store and the new server ({err})") from None
        if m is not None:
            m.hub_move = grant.get("move")
        return self.hub.with_token(grant["token"])

    async def check(self, options) -> None:
        """Check the options' shape here, then their values with the hub (the same offers
        and policy as a spawn), so a typo fails before the snapshot. A hub without the
        check endpoint, or out of reach, leaves it to the spawn itself."""
        options, _ = split_options(check_options(options))
        await self._drop_gone_targets()
        try:
            await self.hub.check_options(options)
        except HubError as err:
            if err.status in (400, 403):
                raise OptionError("", err.message, err.status) from None

    def start(self, options: dict) -> Migration:
        """Check, register and start a migration; raises Busy or OptionError."""
        options, move_options = split_options(check_options(options))
        for other in self.migrations.values():
            if other.state == "awaiting-accept":
                raise Busy(f"a move of this server to {other.target_server!r} waits for you to accept what it "
                           f"left out (POST cloudhop/api/migrations/{other.id}/accept) or to stop that server")
            if other.running:
                raise Busy("a migration of this server is already running")
        m = Migration(id=uuid.uuid4().hex[:12], options=options, move_options=move_options)
        self.migrations[m.id] = m
        task = asyncio.ensure_future(self._run(m))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return m

    def seen(self, m: Migration) -> None:
        """A client has read the final state: the source may stop now."""
        if m.state == "done" and m.read_done is not None:
            m.read_done.set()

    async def _run(self, m: Migration) -> None:
        workdir = tempfile.mkdtemp(prefix="cloudhop-migrate-")
        move: HubClient | None = None
        store: StoreClient | None = None
        m.timeline["snapshotting"] = m.started
        try:
            kernels = await self._checkpoint(m, workdir)
            move = await self.move_hub(target_name(m.options, m.id), m)
            await hold("snapshotting")
            store = self.store(move.token)
            if self.settings.proxy_url:
                # the target starts while the snapshot is sent, then restores it when asked
                await self._enter(m, "launching", wait=False)  # held once the target was asked for
                manifest = await self._launch_while_snapshotting(m, move, store, kernels)
                await self._enter(m, "restoring")
                target = Target(self.settings.proxy_url, m.target_url, move.token)
                report = await self._restore_on(m, target, store, move)
            else:  # the target cannot be reached before it runs: it restores as it starts
                manifest = await self._snapshot(m, store, kernels)
                await self._enter(m, "launching", wait=False)
                await self._launch(m, move, m.snapshot_id)
                await self._enter(m, "restoring")
                report = await self._wait_report(m, store, move)
            await self._enter(m, "verifying")
            self._verify(m, manifest, kernels, report)
            if left_out(m.skipped) and not m.move_options.get("accept_skipped"):
                await self._enter(m, "awaiting-accept")
                log.info("migration %s: %s runs; %d paths were left out, so this server runs until the "
                         "user accepts", m.id, m.target_url, len(left_out(m.skipped)))
            else:
                await self._enter(m, "done")
                self._done(m)
        except Exception as err:  # noqa: BLE001 - every failure is reported in the state
            m.error = str(err) or type(err).__name__
            log.warning("migration %s failed while %s: %s", m.id, m.state, m.error)
            m.error = f"{m.state}: {m.error}"
            m.state = "failed"
            m.finished = time.time()
            if m.target_server and move is not None:
                try:
                    await move.stop_server(m.target_server, remove=True)
                except HubError as stop_err:
                    if stop_err.status not in (403, 404):  # 403: the hub ended the move, its reconciler stops it
                        m.error += f" (and stopping the target failed: {stop_err})"
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            if store is not None:
                store.close()
        if m.state == "failed":
            await self._record_failure(m)
        if m.state == "done":
            await self._stop_source(m)

    async def _record(self, m: Migration, phase: str) -> None:
        """The hub records that ``m`` enters ``phase`` (HubError when it will not: 409,
        or cannot: out of reach), then the timeline. A hub that keeps no records is not
        asked."""
        if m.hub_move:
            sent = {"bytes": m.bytes_sent} if phase in ("awaiting-accept", "done") else {}  # the hub's metrics
            await self.hub.report_move({"move": m.hub_move, "phase": phase, **sent})
        m.timeline[phase] = time.time()

    async def _enter(self, m: Migration, phase: str, *, wait: bool = True) -> None:
        """``m`` enters ``phase`` once the hub has recorded it (else the move fails in the
        phase it was in), and with ``wait`` a test's :func:`hold` may keep it there."""
        try:
            await self._record(m, phase)
        except HubError as err:
            raise RuntimeError(f"the hub ended the move ({err})") from None
        m.state = phase
        if wait:
            await hold(phase)

    async def _record_failure(self, m: Migration) -> None:
        """Tell the hub that ``m`` failed, so its reconciler removes whatever is left of
        the target; when the hub is out of reach, again for about half a minute (a hub
        that restarts meanwhile has failed the move itself)."""
        m.timeline["failed"] = m.finished
        for delay in (0, 1, 2, 4, 8, 15) if m.hub_move else ():
            await asyncio.sleep(delay)
            try:
                await self.hub.report_move({"move": m.hub_move, "phase": "failed", "error": m.error})
                return
            except HubError as err:
                if err.status is not None:  # refused: the hub already ended it
                    return
        if m.hub_move:
            log.warning("migration %s: the hub did not hear that it failed; its reconciler will", m.id)

    @staticmethod
    def _done(m: Migration) -> None:
        m.read_done = asyncio.Event()
        m.state = "done"
        m.finished = time.time()
        log.info("migration %s done: %s", m.id, m.target_url)

    async def _stop_source(self, m: Migration) -> None:
        """Stop this server once a client has read ``done`` (or after ``stop_delay``)."""
        try:
            await asyncio.wait_for(m.read_done.wait(), self.settings.stop_delay)
        except asyncio.TimeoutError:
            pass
        await asyncio.sleep(0.5)  # let the reply that saw "done" go out
        try:
            await self.hub.stop_server(self.hub.server_name)
        except HubError as err:
            log.warning("migration %s: could not stop this server: %s", m.id, err)

    async def _target_runs(self, m: Migration) -> bool:
        """Whether the move's target server is ready (this server's own token reads the
        user's server models); HubError when the hub cannot say."""
        model = await self.hub.server(m.target_server)
        return bool(model and model.get("ready"))

    def _target_gone(self, m: Migration) -> None:
        m.state = "failed"
        m.finished = time.time()
        m.error = (f"awaiting-accept: the target server {m.target_server!r} no longer runs; this server "
                   "keeps running")

    async def _drop_gone_targets(self) -> None:
        """A move awaiting the user's accept whose target was stopped meanwhile has failed:
        it no longer blocks a new move."""
        for m in list(self.migrations.values()):
            if m.state == "awaiting-accept":
                try:
                    if not await self._target_runs(m):
                        self._target_gone(m)
                except HubError:
                    pass  # the hub cannot say: the move keeps waiting

    async def accept(self, m: Migration) -> None:
        """The user accepts what move ``m`` left out: it reads ``done`` and this server
        stops shortly after (the target runs on). Raises :class:`NotAccepted` when ``m``
        does not await an accept or its target no longer runs (``m`` has then failed;
        this server keeps running), HubError when the hub cannot say whether it runs."""
        if m.state != "awaiting-accept":
            raise NotAccepted(f"the move is {m.state}; it does not wait for an accept")
        if not await self._target_runs(m):
            self._target_gone(m)
            raise NotAccepted(m.error.removeprefix("awaiting-accept: "))
        try:
            await self._record(m, "done")
        except HubError as err:
            if err.status is None:
                raise
            self._target_gone(m)
            raise NotAccepted(f"the hub ended the move ({err.message})") from None
        m.move_options["accept_skipped"] = True
        self._done(m)
        task = asyncio.ensure_future(self._stop_source(m))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _checkpoint(self, m: Migration, workdir: str) -> list[dict]:
        """Checkpoint each session's kernel into ``workdir`` (:func:`.capture.checkpoint_kernels`)."""
        # what the user's pages have not saved yet, saved first (or listed as left out)
        m.skipped += await save_open_documents(self.app, self.settings.save_timeout)
        kernels = await checkpoint_kernels(self.app, workdir, self.settings.kernel_timeout)
        for k in kernels:
            m.variables[k["path"]] = k["variables"]
        m.skipped += kernel_skipped(kernels)
        return kernels

    async def _snapshot(self, m: Migration, store: StoreClient, kernels: list[dict],
                        cancel: threading.Event | None = None) -> Manifest:
        """Snapshot the workspace and ``kernels`` (:func:`.capture.capture`) as move ``m``'s;
        setting ``cancel`` ends it at its next upload (:class:`Cancelled`)."""
        def progress(sent, total):
            if cancel is not None and cancel.is_set():
                raise Cancelled("the snapshot was cancelled")
            m.bytes_sent, m.bytes_total = sent, total

        sid, manifest, stats = await capture(
            self.app, store, kernels, excludes=self.settings.excludes,
            meta={"kind": "migration", "migration": m.id, "source": source_meta()}, progress=progress,
        )
        m.snapshot_id = sid
        m.bytes_total, m.bytes_sent = stats.bytes_total, stats.bytes_sent
        m.skipped += [s.to_json() for s in stats.skipped]  # workspace paths: path, kind, size, reason, cache
        return manifest

    async def _launch_while_snapshotting(self, m: Migration, move: HubClient, store: StoreClient,
                                         kernels: list[dict]) -> Manifest:
        """Launch the target (with nothing to restore) and take the snapshot at the same
        time; returns the snapshot's manifest once both are done. The first failure ends
        the other (the caller removes the target)."""
        cancel = threading.Event()
        launch = asyncio.ensure_future(self._launch(m, move, RESTORE_NONE))
        snap = asyncio.ensure_future(self._snapshot(m, store, kernels, cancel))
        try:
            done, _ = await asyncio.wait({launch, snap}, return_when=asyncio.FIRST_EXCEPTION)
            for task in (launch, snap):
                if task in done and task.exception() is not None:
                    raise task.exception()
            await launch
            return await snap
        finally:
            cancel.set()
            launch.cancel()
            await asyncio.gather(launch, snap, return_exceptions=True)

    async def _launch(self, m: Migration, move: HubClient, restore: str) -> None:
        """Start the target with the move's options plus ``"restore": restore`` and wait
        until the hub says it is ready (its progress stream: no polling)."""
        name = m.target_server = target_name(m.options, m.id)
        try:
            await move.start_server(name, dict(m.options, restore=restore))
        except HubError as err:
            raise RuntimeError(f"the target server {name!r} failed to start ({err})") from None
        await hold("launching")
        try:
            m.target_url = await move.wait_ready(name, self.settings.launch_timeout)
        except TimeoutError:
            raise
        except (RuntimeError, HubError) as err:
            raise RuntimeError(f"the target server {name!r} failed to start ({err})") from None

    async def _restore_on(self, m: Migration, target: Target, store: StoreClient, move: HubClient) -> RestoreReport:
        """Ask ``target`` to restore the move's snapshot and wait until it has (the target
        answers the moment it is done); returns the report the target kept in the store."""
        try:
            await target.restore(m.snapshot_id)
            answer = await target.wait_restored(self.settings.restore_timeout)
        except TargetError as err:
            model = await move.server(m.target_server)
            if not model or not (model.get("ready") or model.get("pending")):
                raise RuntimeError(f"the target server {m.target_server!r} stopped while restoring") from None
            raise RuntimeError(f"the target could not restore: {err}") from None
        if answer.get("state") == "failed":
            raise RuntimeError(f"the target could not restore: {answer.get('error')}")
        report = await asyncio.to_thread(store.get_report, m.snapshot_id)
        if report is None or report.state != "done":
            raise RuntimeError("the target kept no restore report in the store")
        return report

    async def _wait_report(self, m: Migration, store: StoreClient, move: HubClient) -> RestoreReport:
        deadline = time.monotonic() + self.settings.restore_timeout
        while time.monotonic() < deadline:
            report = await asyncio.to_thread(store.get_report, m.snapshot_id)
            if report and report.state == "failed":
                raise RuntimeError(f"the target could not restore: {report.error}")
            if report and report.state == "done":
                return report
            model = await move.server(m.target_server)
            if not model or not (model.get("ready") or model.get("pending")):
                raise RuntimeError(f"the target server {m.target_server!r} stopped while restoring")
            await asyncio.sleep(self.settings.poll_interval)
        raise TimeoutError(f"the target did not finish restoring in {self.settings.restore_timeout:.0f} s")

    @staticmethod
    def _verify(m: Migration, manifest: Manifest, kernels: list, report: RestoreReport) -> None:
        for entry in manifest.files:
            if entry.path.startswith(KERNEL_PREFIX + "/"):
                continue
            if report.files.get(entry.path) != entry.hash:
                raise RuntimeError(f"{entry.path} differs on the target")
        restored = {k.path: k for k in report.kernels}
        for k in kernels:
            got = restored.get(k["path"])
            if got is None:
                raise RuntimeError(f"no session for {k['path']} on the target")
            new = [sk for sk in got.skipped if sk not in k["skipped"]]
            # a variable the source or the target listed as skipped, with its reason, is
            # not missing: the move reports it and goes on (unless it is strict)
            listed = {sk.get("name") for sk in k["skipped"] + got.skipped}
            missing = set(k["variables"]) - set(got.variables) - listed
            if missing:
                raise RuntimeError(f"{k['path']}: variables missing on the target: {', '.join(sorted(missing))}")
            if m.move_options.get("strict") and (k["skipped"] or new):
                what = "; ".join(f"{sk.get('name')}: {sk.get('reason')}" for sk in k["skipped"] + new)
                raise RuntimeError(f"{k['path']}: not moved as they were (strict move): {what}")
            m.skipped += [dict(sk, path=k["path"]) for sk in new]


class Restorer:
    """The target side: restore one snapshot into this server, once - the one named by
    ``snapshot_id`` at once (``CLOUDHOP_RESTORE``), or the one :meth:`start` names later
    (a move's source asks, ``POST cloudhop/api/restore``, once it has stored the snapshot
    of a target it launched while snapshotting).

    The sessions' kernels start while the files arrive (in their notebook's folder, made
    first), unless a kernel would read something of the workspace as it starts (its
    home or its interpreter is in the workspace: :meth:`_starts_early`); each loads its
    state once every file is in place (a re-run cell may read them). The report is written to the store when the restore ends, and :meth:`wait`
    returns then."""

    def __init__(self, serverapp, hub: HubClient, settings: CloudhopMigration, snapshot_id: str | None = None):
        self.app = serverapp
        self.hub = hub
        self.settings = settings
        self.report = RestoreReport(snapshot=snapshot_id or "")
        self._ended: asyncio.Event | None = None
        self._task: asyncio.Future | None = None

    @property
    def started(self) -> bool:
        """Whether this server restores (or restored) a snapshot."""
        return bool(self.report.snapshot)

    def start(self, snapshot_id: str) -> None:
        """Restore ``snapshot_id`` in the background; ValueError when this server already
        restores one (a server restores at most one snapshot)."""
        if self.started:
            raise ValueError(f"this server already restores snapshot {self.report.snapshot}")
        self.report.snapshot = snapshot_id
        self._task = asyncio.ensure_future(self.run())

    async def wait(self, timeout: float) -> RestoreReport:
        """The report once the restore has ended (``done`` or ``failed``), or as it stands
        after ``timeout`` seconds (``restoring``)."""
        if self._ended is None:
            self._ended = asyncio.Event()
        if self.report.state == "restoring":
            try:
                await asyncio.wait_for(self._ended.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        return self.report

    async def run(self) -> RestoreReport:
        sid = self.report.snapshot
        store = StoreClient(self.settings.store_url, self.hub.user, self.hub.token)
        workdir = tempfile.mkdtemp(prefix="cloudhop-restore-")
        sessions: list[asyncio.Future] = []
        try:
            manifest = Manifest.loads(await asyncio.to_thread(store.get_manifest, sid))
            self.report.bytes_total = manifest.total_bytes
            kernels = manifest.meta.get("kernels") or []
            ws = workspace_dest(self.app.root_dir, skip_prefix=KERNEL_PREFIX)
            checkpoints = workspace_dest(workdir)

            def dest(path):
                # both kinds go through the one confined restore (docs/security.md)
                if path.startswith(KERNEL_PREFIX + "/"):
                    return checkpoints(path)
                return ws(path)

            def progress(got, total):
                self.report.bytes_received = got

            # each kernel starts now, in its notebook's folder, while the files arrive,
            # unless it would read something of the workspace as it starts
            early = [self._starts_early(k) and await asyncio.to_thread(self._make_folder, k["path"])
                     for k in kernels]
            sessions = [asyncio.ensure_future(self._session(k)) if ok else None for k, ok in zip(kernels, early)]
            restored = await asyncio.to_thread(restore_snapshot, manifest, store, dest, progress=progress)
            self.report.files = {p: h for p, h in restored.items() if not p.startswith(KERNEL_PREFIX + "/")}
            for k, session in zip(kernels, sessions):
                started = await session if session is not None else await self._session(k)
                self.report.kernels.append(await self._kernel(k, started, os.path.join(workdir, k["prefix"])))
            self.report.state = "done"
        except Exception as err:  # noqa: BLE001 - reported to the source through the store
            log.exception("restore of %s failed", sid)
            self.report.state = "failed"
            self.report.error = str(err) or type(err).__name__
            await asyncio.gather(*[s for s in sessions if s is not None], return_exceptions=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        try:
            await asyncio.to_thread(store.put_report, sid, self.report)
        finally:
            store.close()
            if self._ended is None:
                self._ended = asyncio.Event()
            self._ended.set()
        return self.report

    def _starts_early(self, k: dict, env=os.environ) -> bool:
        """Whether kernel ``k`` may start before the files arrive: only when nothing it
        reads as it starts lies in the workspace - not its home (IPython's profile and
        history, the user's site-packages and kernel specs, when home is the workspace)
        and not its interpreter (a kernel of a virtualenv in the workspace)."""
        root = os.path.realpath(self.app.root_dir)

        def inside(path) -> bool:
            path = os.path.realpath(path)
            return path == root or path.startswith(root + os.sep)

        if inside(env.get("HOME") or os.path.expanduser("~")):
            return False
        try:
            argv = self.app.kernel_spec_manager.get_kernel_spec(k["kernel_name"]).argv
        except Exception:  # noqa: BLE001 - not installed here: the default kernel starts later
            return False
        return not (argv and os.path.isabs(argv[0]) and inside(argv[0]))

    def _make_folder(self, path: str) -> bool:
        """Make the folder of the notebook ``path`` in the workspace (confined: never
        through a link), so its kernel starts there before the files arrive; False when
        it cannot be made now (the kernel then starts once the files are in place)."""
        try:
            with Confined(os.path.abspath(self.app.root_dir)) as tree, tree.parent(check_path(path), create=True):
                return True
        except (OSError, ValueError, RestoreError):
            return False

    async def _session(self, k: dict) -> tuple[dict, list]:
        """Start the session of kernel ``k`` (same path, name, type and kernel name, else
        the default kernel, listed as skipped); returns its model and what it skipped."""
        specs = self.app.kernel_spec_manager.find_kernel_specs()
        kernel_name = k["kernel_name"]
        skipped = []
        if kernel_name not in specs:
            skipped.append({"name": "*", "reason": f"kernel {kernel_name!r} is not installed here; "
                            f"used {self.app.kernel_manager.default_kernel_name!r}", "rebuilt": None})
            kernel_name = self.app.kernel_manager.default_kernel_name
        model = await self.app.session_manager.create_session(
            path=k["path"], name=k.get("name") or k["path"], type=k.get("type") or "notebook",
            kernel_name=kernel_name,
        )
        return model, skipped

    async def _kernel(self, k: dict, session: tuple[dict, list], directory: str) -> KernelReport:
        """Load kernel ``k``'s checkpoint in ``directory`` into its started ``session``."""
        model, skipped = session
        info = self.app.kernel_manager.get_kernel(model["kernel"]["id"]).get_connection_info()
        result = await restore_kernel(info, directory, timeout=self.settings.kernel_timeout)
        return KernelReport(path=k["path"], kernel_name=model["kernel"].get("name") or k["kernel_name"],
                            kernel_id=model["kernel"]["id"], variables=result["variables"],
                            skipped=skipped + result["skipped"])
