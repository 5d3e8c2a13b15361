"""``CloudhopSpawner``: one JupyterHub spawner for every provider.

The spine of a launch (docs/architecture.md, "Spawn"): the options (form or REST JSON)
are validated in one step against the offers the user may launch; the optimizer ranks
the matching offers into a failover list; :func:`.failover.launch_first` walks it; the
spawner waits for the node to serve and returns its URL. ``poll`` asks the provider
(which answers from a cache), ``stop`` terminates every node the server owns, and the
state written by ``get_state`` (versioned, :mod:`.state`) lets a restarted hub
re-attach instead of launching anew.

A server that asks for Ray (``request.ray``) also goes through its
:class:`.ray.launcher.RayLauncher`, which the spawner owns and calls with explicit
arguments; a server without Ray never enters Ray code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import sys
import time
import uuid

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader
from sqlalchemy.orm import object_session
from sqlalchemy.orm.exc import UnmappedInstanceError
from jupyterhub.spawner import SpawnException, Spawner
from jupyterhub.utils import random_port
from traitlets import Bool, Float, List, Unicode, default, validate

from . import durable, launch_timeline
from .events import announce
from .failover import launch_first, launch_id
from .form_reasons import no_gpu_reasons, provider_choices
from .limits import Usage, usage_of, user_lock
from .listening import wait_listening
from . import spend
from .ledger import Ledger, LedgerError, ledger_for
from .offers import Offer
from .options import LaunchRequest, options_from_form
from .schema import MAX_GPUS, MAX_RAY_WORKERS, OptionError
from .optimizer import auto_pick
from .policy import LedgerUnavailable, Policy, PolicyError, server_price, validate_request
from .providers import provider_class, quoted
from .validate import check_number
from .providers.base import (
    FAILED, RUNNING, STOPPING, TAG_HUB, TAG_ROLE, TAG_SERVER, TAG_USER, TERMINATED, LaunchSpec, Node,
    Provider,
)
from .ray import WORKER_ROLE
from .ray.launcher import NotebookSpec, RayLauncher, resized_request
from .refusal import Refused, forget_after_refusal, never_ran, refused, shown_plainly
from .state import NOTEBOOK_ROLE, STATE_VERSION, Attempt, NodeRef, StateVersionError, check_version
from .timeline import Timeline

# One provider instance per (name, config) per hub process: they hold the status caches
# and SDK clients that every server shares.
_PROVIDERS: dict[tuple[str, int], Provider] = {}

#: seconds of start_timeout left to JupyterHub when start() stops waiting for the port
START_MARGIN = 5.0


@functools.lru_cache(maxsize=8)
def _jinja(template_paths: tuple) -> Environment:
    """The form's template environment: the operator's folders first, then ours."""
    return Environment(
        loader=ChoiceLoader([FileSystemLoader(list(template_paths)),
                             PackageLoader("cloudhop.spawner", "templates")]),
        autoescape=True,
    )


def _zone_for(offer: Offer, request: LaunchRequest) -> str | None:
    """The requested zone where it belongs to ``offer``; a failover offer in another
    region (or without that zone) launches in its own zones instead."""
    if not request.zone:
        return None
    if request.zone in offer.zones or (not offer.zones and offer.region == request.region):
        return request.zone
    return None


def _options_applied_by_start(spawner, user_options) -> None:
    """``Spawner.apply_user_options``: nothing; :meth:`CloudhopSpawner.start` applies them."""


class CloudhopSpawner(Spawner):
    """Spawns a user's server on the provider, region and GPU they pick (or the
    cheapest that fits), with failover down a ranked list of offers."""

    providers = List(
        Unicode(), ["local"],
        help=f"""Providers users may launch on, in the order the form lists them:
        any of {quoted()} (or "module:Class" for a custom provider).""",
    ).tag(config=True)

    hub_id = Unicode(
        help="""Id of this hub, written into every node's tags so a restarted hub and
        the reaper find the nodes it owns. `cloudhop up` keeps one in its data dir.""",
    ).tag(config=True)

    form_template = Unicode(
        "form.html", help="Name of the spawn form's Jinja template (looked up in template_paths first).",
    ).tag(config=True)

    template_paths = List(
        Unicode(),
        help="Folders searched for the form template before Cloudhop's own, so an "
        "operator can override it without forking.",
    ).tag(config=True)

    node_poll_interval = Float(
        2.0, help="Seconds between status checks while waiting for a node to serve.",
    ).tag(config=True)

    @validate("node_poll_interval")
    def _valid_poll_interval(self, proposal):
        return check_number(proposal, minimum=0, strict=True)

    listen_poll_interval = Float(
        0.1, help="""Seconds between probes of a starting server's port. ``start`` returns
        once the port takes connections, so JupyterHub's readiness check (which backs off up
        to 5 s between tries) answers at once (spawner/listening.py).""",
    ).tag(config=True)

    @validate("listen_poll_interval")
    def _valid_listen_poll(self, proposal):
        return check_number(proposal, minimum=0, strict=True)

    hibernate = Bool(
        True, help="""Whether a stop first snapshots the server's workspace into the
        snapshot store (and a start restores the newest snapshot of that server), so a
        stop keeps everything on every provider (docs/durability.md). A stop whose
        snapshot fails keeps the node and says why.""",
    ).tag(config=True)

    hibernate_kernels = Bool(
        True, help="Whether a hibernating stop also keeps the state of the server's running "
        "kernels (their variables), which the next start loads back.",
    ).tag(config=True)

    hibernate_timeout = Float(
        1800, help="Seconds a stop waits for the server's snapshot before it keeps the node.",
    ).tag(config=True)

    restore_timeout = Float(
        1800, help="Seconds a start waits for the server to restore its snapshot.",
    ).tag(config=True)

    @validate("hibernate_timeout", "restore_timeout")
    def _valid_phase_timeout(self, proposal):
        return check_number(proposal, minimum=0, strict=True, must="a number of seconds above 0")

    @default("hub_id")
    def _default_hub_id(self):
        from .hubid import default_hub_id  # random, kept beside the hub's cookie secret

        return default_hub_id()

    @default("options_from_form")
    def _default_options_from_form(self):
        return lambda formdata: options_from_form(formdata)

    @default("apply_user_options")
    def _default_apply_user_options(self):
        # JupyterHub's hook for user_options (it warns "unhandled user_options" without
        # one). start() validates and applies them, against the offers it reads then
        # (parse_request), so the hook has nothing to do; an operator's own still runs.
        return _options_applied_by_start

    def __init__(self, **kw):
        super().__init__(**kw)
        self.request: LaunchRequest | None = None
        self.offer: Offer | None = None
        self.node: Node | None = None
        #: every node the server owns, notebook and Ray workers (:meth:`.state.NodeRef.to_dict`)
        self.nodes: list[dict] = []
        #: the failover walk of the last spawn (:meth:`.state.Attempt.to_dict`)
        self.attempts: list[dict] = []
        #: this spawn's progress events; a new list per spawn (see :meth:`progress`)
        self._events: list[dict] = []
        self._event_added = asyncio.Event()
        #: a named server that has never run: a refused first start removes it (:mod:`.refusal`)
        self._never_ran = never_ran(self)
        self._policy: Policy | None = None
        #: USD/hour of the server as checked at its spawn, Ray workers included (None: unknown)
        self._price_hour: float | None = None
        #: nodes a stop kept because their snapshot failed (:func:`.durable.kept_entry`);
        #: they outlive the stop, in the state, until an admin discards them
        self.kept: list[dict] = []
        #: a snapshot already taken of this node (e.g. by the preemption agent): the
        #: next stop takes no other one
        self.hibernated_snapshot: str | None = None
        #: the snapshot this spawn restores (None: it starts as the workspace is)
        self.restore_id: str | None = None
        #: whether the server finished starting (its restore included): only such a
        #: server is snapshotted when it stops
        self.serving = False
        #: when a stop began its snapshot (in the state while it runs), else None
        self.hibernating: float | None = None
        self._restore_size: int | None = None
        #: a spot rescue's start (:mod:`cloudhop.hub.rescue_api`): ``avoid`` (the preempted offer's key), ``from``
        self.rescue: dict | None = None
        #: a cloud launch's phases (:mod:`.timeline`); None for a local server
        self.timeline: Timeline | None = None
        self._answer_probe = None
        #: the server's Ray head and workers (used only when the server asks for Ray)
        self.ray_launcher = RayLauncher(lambda name: self.provider(name), progress=self._progress,
                                        save=self._ray_changed, log=self.log)

    @property
    def ray_cluster(self):
        """The server's Ray workers (:class:`.ray.cluster.RayCluster`), None without a Ray
        cluster; the hub's Ray API reads it."""
        return self.ray_launcher.cluster

    @ray_cluster.setter
    def ray_cluster(self, cluster) -> None:
        self.ray_launcher.cluster = cluster

    # -- providers and offers ---------------------------------------------------

    def provider(self, name: str) -> Provider:
        key = (name, id(self.config))
        if key not in _PROVIDERS:
            _PROVIDERS[key] = provider_class(name)(config=self.config, log=self.log)
        return _PROVIDERS[key]

    async def provider_status(self) -> list[dict]:
        """Each enabled provider with whether it can launch and, if not, why."""
        out = []
        for name in self.providers:
            try:
                prov = self.provider(name)
                reason = await prov.check_available()
                display = prov.display_name or name
            except Exception as err:  # a missing SDK or bad config must not break the hub
                reason, display = f"{type(err).__name__}: {err}", name
            out.append({"name": name, "display_name": display, "available": reason is None, "reason": reason})
        return out

    async def all_offers(self, statuses: list[dict] | None = None) -> list[Offer]:
        """Every available provider's offers, before the user's policy. ``statuses``
        is :meth:`provider_status`'s answer when the caller already has it."""
        offers: list[Offer] = []
        for status in statuses if statuses is not None else await self.provider_status():
            if not status["available"]:
                continue
            try:
                offers.extend(self.provider(status["name"]).offers())
            except Exception as err:  # e.g. a broken catalog override: that provider only
                self.log.error("Offers of provider %s are unavailable: %s", status["name"], err)
                status.update(available=False, reason="its offers could not be read (the hub's log says why)")
        return offers

    @property
    def policy(self) -> Policy:
        """The group policies (``c.Policy.groups``, :mod:`.policy`)."""
        if self._policy is None:
            self._policy = Policy(config=self.config, parent=self)
        return self._policy

    def user_groups(self) -> list[str]:
        return [g.name for g in (getattr(self.user, "groups", None) or [])]

    async def user_offers(self, statuses: list[dict] | None = None) -> list[Offer]:
        """The offers this user may launch: what the user's group policy allows of
        every available provider's offers."""
        return self.policy.filter_offers(await self.all_offers(statuses), self.user_groups())

    # -- options ----------------------------------------------------------------

    async def get_options_form(self):
        statuses = await self.provider_status()
        every = await self.all_offers(statuses)
        offers = self.policy.filter_offers(every, self.user_groups())
        template = _jinja(tuple(self.template_paths)).get_template(self.form_template)
        last = dict(self.orm_spawner.user_options or {}) if self.orm_spawner else {}
        auto = self.auto_offer(offers, last)
        dicts = [o.to_dict() for o in offers]
        # every provider, with why the user cannot pick it (:mod:`.form_reasons`)
        providers = provider_choices(statuses, self.policy.allowed_providers(self.providers, self.user_groups()))
        # what a provider wants every user to know before choosing it (the local provider
        # without isolation: users see each other's files); optional, so getattr
        notices = [n for p in providers if p["available"]
                   and (n := getattr(self.provider(p["name"]), "form_notice", None))]
        no_gpu = no_gpu_reasons(every, offers, self._no_gpu_reason)
        return template.render(
            offers=dicts, offers_json=json.dumps(dicts), providers=providers,
            last=last, auto=auto.to_dict() if auto else None,
            max_gpus=MAX_GPUS, max_ray_workers=MAX_RAY_WORKERS, notices=notices,
            no_gpu_json=json.dumps(no_gpu), start_from=await self._start_choices(),
            spend={"running": spend.running_servers(self.user), "budget": self.budget_notice},
        )

    async def _start_choices(self) -> dict:
        """The form's "Start from" list: this server's line and the class snapshots the
        user may start from (:func:`cloudhop.hub.snapshot_link.start_choices`)."""
        from cloudhop.hub.snapshot_link import start_choices

        return await start_choices(self.config, self.user.name, self.name or "", self.user_groups())

    def _no_gpu_reason(self, provider: str, region: str) -> str | None:
        """The provider's own reason why ``region`` has no GPU (``no_gpu_reason``, which
        the local provider has), None when it gives none."""
        explain = getattr(self.provider(provider), "no_gpu_reason", None)
        try:
            return explain(region) if explain else None
        except Exception as err:  # a reason must never break the form
            self.log.warning("No GPU reason of %s/%s: %s", provider, region, err)
            return None

    def auto_offer(self, offers: list[Offer], last: dict) -> Offer | None:
        """What "Auto (cheapest that fits)" picks: for the last-used GPU and count
        when there are some, else the cheapest GPU offer."""
        gpu, count = last.get("gpu"), last.get("gpu_count")
        spot = last.get("spot") is True
        if isinstance(gpu, str) and isinstance(count, int):
            pick = auto_pick(offers, gpu=gpu, gpu_count=count, spot=spot)
            if pick:
                return pick
        return auto_pick(offers, spot=spot) or auto_pick(offers, gpu_count=0)

    async def parse_request(self, offers: list[Offer] | None = None) -> LaunchRequest:
        """Validate ``self.user_options`` in one step; a bad option is a 400 naming the
        field, one the user's group policy forbids a 403 naming the field and the rule.
        ``offers``: :meth:`all_offers`' answer when the caller already has it."""
        offers = await self.all_offers() if offers is None else offers
        try:
            return validate_request(
                self.user_options, offers, self.policy, self.user_groups(),
                providers=self.providers, price_of=self._first_price,
            )
        except OptionError as err:
            reason = "policy" if isinstance(err, PolicyError) else "bad-option"
            raise Refused(str(err), reason=reason, status_code=err.status_code) from None

    def _first_price(self, request: LaunchRequest, offers: list[Offer]) -> float | None:
        """What the cheapest match costs in the request's price mode, its Ray workers
        included (for the price rule)."""
        from .optimizer import rank

        ranked = rank(request, offers, spread="none")
        return self._server_price(request, ranked[0], offers) if ranked else None

    def _server_price(self, request: LaunchRequest, offer: Offer, offers: list[Offer]) -> float | None:
        """USD/hour of the server on ``offer``, its Ray workers (if any) included."""
        if request.ray is None:
            return server_price(request, offer)
        return self.ray_launcher.server_price(request, offer, offers)

    def check_limits(self, request: LaunchRequest, ranked: list[Offer], offers: list[Offer],
                     others: Usage) -> dict[str, float | None]:
        """The offers of the failover list ``ranked`` on which a new server for ``request``
        keeps the user's totals within the policy, beside ``others`` (what the user's other
        servers hold, :mod:`.limits`): servers, GPUs, USD/hour and budget, Ray workers
        included. Returns offer key -> the server's USD/hour there, best first. Raises
        the first offer's :class:`PolicyError` (403 naming the field and the rule) when
        none fits."""
        groups, fits, first = self.user_groups(), {}, None
        spent: dict = {}  # the spend hook is asked once per group, not once per offer
        for offer in ranked:
            price = self._server_price(request, offer, offers)
            try:
                self.policy.check_request(request, groups, price, others)
                self.policy.check_budget(groups, self.user.name, price, others=others, spent=spent)
            except PolicyError as err:
                first = first or err
                continue
            fits[offer.key] = price
        if not fits and first is not None:
            raise first
        return fits

    def check_new_server(self, request: LaunchRequest, offers: list[Offer]) -> None:
        """Raise the :class:`PolicyError` a new server for ``request`` would get beside
        every server the user runs now, this one included (the hub's option check for a
        move, whose target runs beside its source), this one's GPUs and price counted but
        not this server itself for ``max_servers``: the target replaces it
        (:func:`.limits.usage_of`). ``offers``: every provider's offers."""
        allowed = self.policy.filter_offers(offers, self.user_groups())
        self.check_limits(request, self.plan(request, allowed), allowed, usage_of(self.user, replacing=self))

    def usage(self) -> Usage:
        """What this server holds for the rules that count all of a user's servers
        (:mod:`.limits`): nothing until its notebook node is recorded (a spawn holds the
        user's lock from its check to that point), then its notebook and Ray workers,
        those asked for included, at the price checked at its spawn or since resized."""
        offer = self.offer
        if offer is None or not (self.node or self.nodes):
            return Usage()
        request = self.request or LaunchRequest()
        cluster = self.ray_cluster
        if cluster is not None:
            request = resized_request(request, offer, cluster, cluster.request.workers)
            return Usage.of_server(request, server_price(request, offer, cluster.offers))
        request = dataclasses.replace(request, gpu=offer.gpu, gpu_count=offer.gpu_count)
        price = self._price_hour if self._price_hour is not None else server_price(request, offer)
        return Usage.of_server(request, price)

    def plan(self, request: LaunchRequest, offers: list[Offer]) -> list[Offer]:
        """The failover list for a request, best first, within the user's policy in
        the request's price mode (spot or on-demand)."""
        from .optimizer import rank

        return rank(request, self.policy.filter_offers(offers, self.user_groups(), spot=request.spot))

    # -- progress ---------------------------------------------------------------

    def _progress(self, message: str, progress: int | None = None) -> None:
        event = {"message": message}
        if progress is not None:
            event["progress"] = progress
        self._events.append(event)
        self._event_added.set()
        self.log.info("%s: %s", self._log_name, message)

    async def progress(self):
        """This spawn's events, from its first. A stream opened before ``start`` runs (the
        hub marks a spawn pending first) switches to the new spawn's list as soon as
        ``start`` makes it, so it neither replays the last spawn nor skips this one's."""
        events, sent = self._events, 0
        while True:
            if self._events is not events:
                events, sent = self._events, 0
            while sent < len(events):
                yield events[sent]
                sent += 1
            if not self._spawn_pending and self._events is events:
                return
            self._event_added.clear()
            try:
                await asyncio.wait_for(self._event_added.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass

    # -- lifecycle --------------------------------------------------------------

    def tags(self, role: str = "notebook") -> dict:
        return {TAG_HUB: self.hub_id, TAG_USER: self.user.name, TAG_SERVER: self.name or "", TAG_ROLE: role}

    def launch_spec(self, offer: Offer, request: LaunchRequest, request_id: str) -> LaunchSpec:
        """The spec for the notebook node on ``offer``: command, env and tags (without
        Ray: :meth:`.RayLauncher.wrap_notebook_spec` adds the head)."""
        self.port = self.provider(offer.provider).node_port or random_port()
        self.ip = "127.0.0.1" if offer.provider == "local" else "0.0.0.0"
        env = self.get_env()
        env.update({
            "CLOUDHOP_PROVIDER": offer.provider,
            "CLOUDHOP_REGION": offer.region,
            "CLOUDHOP_INSTANCE_TYPE": offer.instance_type,
            "CLOUDHOP_GPU": offer.gpu,
            "CLOUDHOP_GPU_COUNT": str(offer.gpu_count),
            "CLOUDHOP_HUB_ID": self.hub_id,
        })
        if self.restore_id:
            env["CLOUDHOP_RESTORE"] = self.restore_id
        if request.spot:
            env["CLOUDHOP_SPOT"] = "1"  # the preemption agent watches the cloud's notice
        if self.rescue:
            env["CLOUDHOP_RESCUED_FROM"] = self.rescue.get("from") or "?"
        cmd = list(self.cmd)
        if offer.provider == "local" and cmd == ["jupyterhub-singleuser"]:
            # the hub's own interpreter, so a venv need not be on PATH
            cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
        return LaunchSpec(
            request_id=request_id, offer=offer, cmd=cmd + self.get_args(), env=env,
            tags=self.tags("notebook"), role="notebook", port=self.port,
            image=self.image_for(offer, request), zone=_zone_for(offer, request), spot=request.spot,
        )

    def image_for(self, offer: Offer, request: LaunchRequest) -> str | None:
        """The image the notebook on ``offer`` runs: the request's (which the policy's
        ``images`` rule allowed), except where the provider fixes one for the offer (a
        Kubernetes profile's image, ``profile_image``) and no group of the user may
        replace it (``image_override``): then None, and the provider's own image runs."""
        fixed = getattr(self.provider(offer.provider), "profile_image", None)
        if not request.image or fixed is None or not fixed(offer):
            return request.image
        if self.policy.may_replace_profile_image(request.image, self.user_groups()):
            return request.image
        self.log.info("%s: %s keeps its profile's image; %s is not used (no image_override)",
                      self._log_name, offer.key, request.image)
        return None

    async def _record_attempt(self, record: dict) -> None:
        """Each attempt of the failover walk: a progress event as it starts and ends, and
        once it ends, a line in the server's state (a failed one saved at once, so the walk
        so far shows in the hub's database while it goes on; the launched one is saved by
        :meth:`_launch` with its node, one write)."""
        attempt = Attempt.from_dict(record)
        if attempt.state != "launching":
            self.attempts.append(attempt.to_dict())
            if attempt.state == "failed":  # a launched node's state is saved by _launch, with its node
                self._save_state()
            announce("attempt", provider=attempt.offer.split("/", 1)[0], outcome=attempt.state,
                     reason=attempt.reason, seconds=attempt.seconds)
        if attempt.state == "launching":
            self._progress(f"Launching on {attempt.offer}")
        elif attempt.state == "failed":
            self._progress(f"{attempt.offer}: {attempt.reason} ({attempt.error}); trying the next offer")
        else:
            self._progress(f"{attempt.offer}: node {attempt.node} launched", 40)

    async def start(self):
        self._events = []  # a new list: see progress()
        began, status = time.monotonic(), "failed"
        try:
            url = await self._start()
            status = "ready"
            return url
        except SpawnException as err:
            shown_plainly(err)
            status = "refused" if refused(err) else status
            if refused(err) and self._never_ran:
                forget_after_refusal(self)
            raise
        finally:  # the hub's metrics (events.py)
            announce("spawn", provider=self.offer.provider if self.offer else "none", status=status,
                     seconds=time.monotonic() - began)

    async def _start(self):
        requested, began = time.time(), time.monotonic()
        self.attempts = []
        self.serving = False
        self.timeline = None
        self.hibernated_snapshot = None
        every = await self.all_offers()  # the providers are asked once per spawn
        request = await self.parse_request(every)
        self.request = request
        self.restore_id = await self._pick_restore(request)
        offers = self.policy.filter_offers(every, self.user_groups())
        # whether this spawn goes through Ray is decided once, here
        ray = self.ray_launcher if request.ray is not None else None
        self.ray_cluster = None
        ranked = self.plan(request, offers)
        if self.rescue and self.rescue.get("avoid"):  # a spot rescue: not the preempted offer
            ranked = [o for o in ranked if o.key != self.rescue["avoid"]]
        if ray is not None:
            ranked = ray.filter_plan(request, ranked, offers)
        if not ranked:
            raise Refused("No offer matches the request", reason="no-offer", status_code=400)
        # the user's totals are checked, and this server's nodes recorded, under the
        # user's lock: two spawns started at once are checked one after the other
        async with user_lock(self.user):
            try:
                self.ledger.check_writable()  # a server whose spend cannot be counted never starts
                others = usage_of(self.user, exclude=self, replacing=self._replaced_source())
                prices = self.check_limits(request, ranked, offers, others)
            except PolicyError as err:
                raise Refused(str(err), reason="budget" if err.rule == "budget" else "policy",
                              status_code=err.status_code) from None
            except (LedgerError, LedgerUnavailable) as err:  # spend that cannot be counted is not spent
                self.log.error("%s: refused: %s", self._log_name, err)
                raise Refused("the hub cannot record spend now (its ledger cannot be written), so it starts no "
                              "new servers; the operator has been told in the hub's log",
                              reason="ledger", status_code=503) from None
            self._never_ran = False  # past every refusal: from here on it is a server that ran
            ranked = [o for o in ranked if o.key in prices]
            node, spawn_id, head = await self._launch(request, ranked, offers, ray, prices)
        if self.offer.provider != "local":  # a cloud launch: its phases, on the progress page
            self.timeline = Timeline(requested)
            launch_timeline.mark(self, "api_call")
        node = await self._wait_serving(node)
        if ray is not None:
            await ray.start_workers(request, self.offer, node, offers, spawn_id, head=head,
                                    tags=self.tags(WORKER_ROLE))
        url = f"http://{node.ip}:{node.port or self.port}"
        if self.restore_id:
            await self._wait_restored(url)
        self.serving = True
        self._progress(f"Node {node.id} is up at {node.ip}:{node.port}; waiting for Jupyter to answer", 80)
        launch_timeline.watch_first_answer(self, url + self.server.base_url if self.server else url,
                                           self.http_timeout)
        # The ledger follows the served nodes (Ray workers included). A cloud launch's state
        # (its timeline, serving) is also committed now, as JupyterHub would have as start
        # returned: the hub's view must not wait on the server below (a cloud address may
        # drop connects). A local server's row JupyterHub writes and commits once start
        # returns; never set it here uncommitted: the hub's database session is shared, and
        # a dirty row is rolled back by the next request to finish, expiring every row.
        if self.timeline is not None:
            self._save_state()  # the ledger too
        else:
            spend.record(self)
        # JupyterHub's own check backs off to seconds between tries: wait here, finely,
        # while start_timeout leaves JupyterHub its margin
        await wait_listening(node.ip, node.port or self.port, every=self.listen_poll_interval,
                             listen_timeout=self.http_timeout, node=node.id,
                             give_up_at=began + self.start_timeout - START_MARGIN)
        return url

    async def _launch(self, request: LaunchRequest, ranked: list[Offer], offers: list[Offer],
                      ray: RayLauncher | None, prices: dict) -> tuple[Node, str, NotebookSpec | None]:
        """Walk the failover list ``ranked`` until a notebook node launches and record it
        (``offer``, ``node``, ``nodes``, the state). Returns the node, the spawn's id and
        the launched notebook spec with its Ray head (None without Ray)."""
        self._progress(
            f"Plan: {len(ranked)} offer(s), first {ranked[0].key}"
            + (f" at ${ranked[0].price(request.spot):.2f}/h" if ranked[0].price(request.spot) is not None else ""),
            10,
        )
        # one id per spawn; each offer of the failover list launches under its own id
        # derived from it (see launch_id), so no two offers share an idempotency token
        spawn_id = uuid.uuid4().hex
        wrapped: dict[str, NotebookSpec] = {}  # offer key -> the notebook spec with its Ray head

        def make_spec(o: Offer) -> LaunchSpec:
            spec = self.launch_spec(o, request, launch_id(spawn_id, o, request.spot))
            if ray is None:
                return spec
            wrapped[o.key] = ray.wrap_notebook_spec(spec, request)
            return wrapped[o.key].spec

        offer, node, _attempts = await launch_first(ranked, make_spec, self.provider, self._record_attempt)
        self.offer, self.node, self._price_hour = offer, node, prices.get(offer.key)
        self.nodes = [NodeRef(provider=offer.provider, id=node.id, role=NOTEBOOK_ROLE, region=offer.region).to_dict()]
        self._save_state()
        return node, spawn_id, wrapped.get(offer.key)

    def _ray_changed(self) -> None:
        """The Ray workers changed (``save`` of :class:`.RayLauncher`): list them in
        ``nodes`` and write the state."""
        self.nodes = [n for n in self.nodes if n.get("role") != WORKER_ROLE] + self.ray_launcher.node_entries()
        self._save_state()

    async def resize_ray(self, workers) -> dict:
        """The hub's Ray API: give this server's cluster ``workers`` live workers, a count
        that launches workers checked against the owner's group policy like a spawn
        (:meth:`.RayLauncher.resize`). Raises :class:`OptionError` (400) for a bad count,
        :class:`PolicyError` (403) for a refusal."""
        async with user_lock(self.user):  # as a spawn: checked, then its workers recorded
            return await self.ray_launcher.resize(workers, request=self.request, offer=self.offer,
                                                  policy=self.policy, groups=self.user_groups(),
                                                  user=self.user.name, others=usage_of(self.user, exclude=self))

    @property
    def ledger(self) -> Ledger:
        """The spend ledger (:mod:`.ledger`) this server's nodes are recorded in."""
        return ledger_for(self.config)

    @property
    def spend_usd(self) -> float | None:
        """USD spent by the nodes this server runs now, since their launch (None: none run)."""
        return spend.server_spend(self)

    @property
    def budget_notice(self) -> dict | None:
        """The user's budget warning (80%) or why their servers stopped (100%), for the
        Home page; None when there is nothing to say (:func:`.spend.budget_notice`)."""
        return spend.budget_notice(self)

    def _save_state(self) -> None:
        """Write state to the hub's database now and commit it, so a hub killed mid-start
        still knows which nodes this server owns; its nodes' spend intervals follow
        (:mod:`.spend`). Always committed at once: the hub's session is shared, and a row
        left dirty is rolled back by the next request that finishes."""
        spend.record(self)
        orm = getattr(self, "orm_spawner", None)
        try:  # the session the hub loaded this server's row with (Spawner.db is deprecated)
            db = object_session(orm) if orm is not None else None
        except UnmappedInstanceError:  # not a database row (a test's stand-in)
            db = None
        if db is None:
            return
        try:
            orm.state = self.get_state()
            db.commit()
        except Exception as err:  # never fail a spawn over bookkeeping
            self.log.warning("Could not save state of %s early: %s", self._log_name, err)

    async def _wait_serving(self, node: Node) -> Node:
        provider = self.provider(node.provider)
        last = None
        while True:
            if node.state == RUNNING and node.ip:
                self.node = node
                launch_timeline.mark(self, "instance_running")
                return node
            if node.state in (FAILED, TERMINATED):
                raise SpawnException(
                    f"Node {node.id} on {node.provider} stopped while starting: {node.detail or node.state}",
                    reason="node-failed", status_code=500,
                )
            if node.detail and node.detail != last:
                self._progress(f"{node.id}: {node.detail}")
                last = node.detail
            await asyncio.sleep(self.node_poll_interval)
            node = await provider.status(node.id)

    async def poll(self):
        if not self.node:
            return 0
        node = await self.provider(self.node.provider).status(self.node.id)
        if node.state in (STOPPING, TERMINATED, FAILED):  # a VM going away is not a server
            spend.node_gone(self, node)  # the hub stops such a server without stop(): it no longer costs
            return 1
        if self.ray_cluster is not None:
            await self.ray_launcher.refresh(self._log_name)  # a dead worker is reported, the server stays
        spend.record(self)  # an interval a hub killed before its write missed opens now
        return None

    async def stop(self, now: bool = False):
        """Hibernate (snapshot the server, :meth:`_hibernate`), then terminate every node
        the server owns. When the snapshot fails, nothing is terminated: the nodes are
        kept (``kept`` in the state, with the reason) and the server reads stopped."""
        launch_timeline.stop_watching(self)
        if not await self._hibernate():
            return
        if self.ray_cluster is not None:
            await self.ray_launcher.stop()
        # workers first, the notebook node last: nothing is left reachable half-stopped
        for ref in sorted(map(NodeRef.from_dict, self.nodes), key=lambda n: n.role == NOTEBOOK_ROLE):
            try:
                await self.provider(ref.provider).terminate(ref.id)
            except Exception as err:
                self.log.error("Failed to terminate %s on %s: %s", ref.id, ref.provider, err)
                raise
        self.nodes = []
        self.node = None
        self.hibernated_snapshot = None
        spend.record(self)  # the terminated nodes' intervals close

    # -- hibernate and resume (:mod:`.durable`) ----------------------------------

    def _store_line(self) -> durable.StoreLine | None:
        """This server's line in the snapshot store, read with its own token; None when
        hibernation is off, or the hub runs no snapshot store."""
        url = (self.environment or {}).get(durable.STORE_URL_ENV)
        if not (self.hibernate and url and self.api_token):
            return None
        return durable.StoreLine(url.rstrip("/") + "/", self.user.name, self.api_token, self.name or "")

    async def _pick_restore(self, request: LaunchRequest) -> str | None:
        """The snapshot this spawn restores: the ``restore`` option's (404 when the
        server's line has no such snapshot), none for ``"none"``, else the newest of the
        server's line (None when it has none). A store that cannot say refuses the start
        (503), so no start silently comes up without the user's last session."""
        self._restore_size = None
        choice = request.restore
        if choice == durable.RESTORE_NONE:
            return None
        if choice and choice.startswith("class:"):  # a class snapshot: the user's own copy, in this line
            choice = await self._class_copy(choice[len("class:"):])
        line = self._store_line()
        if line is None:
            return choice  # no store to ask: the server reports a bad id itself
        try:
            snap = await (line.find(choice) if choice else line.newest())
        except durable.NoSuchSnapshot as err:
            raise Refused(str(err), reason="no-snapshot", status_code=404) from None
        except Exception as err:  # noqa: BLE001 - the store down, or out of reach
            self.log.error("%s: the snapshot store could not list this server's snapshots: %s", self._log_name, err)
            raise Refused("restore: the snapshot store did not answer, so your last session cannot be restored "
                          "now; try again, or start with \"restore\": \"none\" to start empty",
                          reason="store-unavailable", status_code=503) from None
        if snap is None:
            return None
        self._restore_size = snap.get("bytes") or 0
        return snap["id"]

    async def _class_copy(self, name: str) -> str:
        """The id of the user's own copy of class snapshot ``name``, made in this
        server's line (:mod:`cloudhop.hub.snapshot_classes`); 404 unless it is shared with
        one of the user's groups, 503 when the store does not answer."""
        from cloudhop.hub.snapshot_link import StoreUnavailable, class_copy

        try:
            return (await class_copy(self.config, self.user.name, self.name or "", name, self.user_groups()))["id"]
        except LookupError as err:
            raise Refused(str(err), reason="no-snapshot", status_code=404) from None
        except StoreUnavailable as err:
            raise Refused(f"restore: {err}; try again later", reason="store-unavailable", status_code=503) from None

    async def _wait_restored(self, url: str) -> None:
        """Wait until the server at ``url`` has restored :attr:`restore_id`, files and
        kernels, showing the bytes as they come; a failed restore fails the spawn with
        the server's reason (which names the file at fault)."""
        size = durable.size_text(self._restore_size or 0)
        where = "your last session" if not (self.request and self.request.restore) else f"snapshot {self.restore_id}"
        self._progress(f"Restoring {size} from {where}", 85)

        def progress(got: int, total: int) -> None:
            self._progress(f"Restoring {size} from {where}: {durable.size_text(got)} of "
                           f"{durable.size_text(total)}", 85)

        try:
            await durable.wait_restored(url + self.server.base_url, self.api_token, timeout=self.restore_timeout,
                                        interval=min(self.node_poll_interval, 0.5), progress=progress)
        except durable.RestoreError as err:
            raise SpawnException(f"Restoring {where} failed: {err}. The snapshot is kept; start again, or "
                                 f"with \"restore\": \"none\" to start empty.",
                                 reason="restore-failed", status_code=500) from None

    def _call_token(self) -> tuple[str, bool]:
        """A token for the hub's call to this server's own API, ``(token, minted)``: the
        server's token when this hub process knows it, else a short-lived one of the
        owner's for this server alone (:func:`.durable.call_token`; a hub restarted since
        the spawn), which the caller deletes after the call."""
        if self.api_token:
            return self.api_token, False
        return durable.call_token(self.user, self.name or ""), True

    def _replaced_source(self):
        """The spawner of the server this one is starting to replace, while this is the
        target of its live move (:meth:`.MoveBook.replaced_source`); None otherwise."""
        from cloudhop.hub.move_book import book_of

        book = book_of(getattr(self, "config", None))
        source = book.replaced_source(self.user.name, self.name or "") if book is not None else None
        if source is None or source == (self.name or ""):
            return None
        return (getattr(self.user, "spawners", None) or {}).get(source)

    def _unaccepted_move(self) -> dict | None:
        """The hub's record of the move whose new server this is, while the move has not
        handed it over (:meth:`.MoveBook.unaccepted_target`); None for every other server."""
        from cloudhop.hub.move_book import book_of

        book = book_of(getattr(self, "config", None))
        return book.unaccepted_target(self.user.name, self.name or "") if book is not None else None

    def _stop_reason(self) -> str:
        """The snapshot's reason for this stop: ``"cull"`` when the hub culls idle servers
        and this one's limit under the culling policy (:mod:`cloudhop.hub.culling`: its
        groups' ``idle_minutes`` for its GPU, ``max_hours``) has passed, as it has when
        jupyterhub-idle-culler stops it (a hub stop does not say who asked for it, so a
        stop by hand after that moment reads "cull" too); ``"stop"`` otherwise."""
        from cloudhop.hub.culling import CullSettings
        from cloudhop.hub.culling_api import server_gpu_of

        config = getattr(self, "config", None)
        started = getattr(getattr(self, "orm_spawner", None), "started", None)
        if config is None or started is None:
            return "stop"
        settings = CullSettings.from_config(config)  # the hub checked it at its start
        if not settings.enabled:
            return "stop"
        decision = settings.decide(groups=[g.name for g in getattr(self.user, "groups", None) or []],
                                   gpu=server_gpu_of(self), started=started,
                                   last_activity=self.orm_spawner.last_activity)
        return "cull" if decision.action == "cull" else "stop"

    async def _hibernate(self) -> bool:
        """Snapshot the running server before its nodes go; True when they may go. A
        server that never finished starting (or whose node is already snapshotted:
        :attr:`hibernated_snapshot`) is not snapshotted. When the snapshot fails, the
        nodes move to :attr:`kept` with the reason, and False: nothing is terminated."""
        node = self.node
        if self.hibernated_snapshot or not (self.serving and node and self.server and self.hibernate
                                            and (self.environment or {}).get(durable.STORE_URL_ENV)):
            return True
        if getattr(self, "_waiting_for_response", False):
            # the hub stops a server that never answered its first check (JupyterHub's
            # http_timeout): nobody can have worked on it, so there is nothing to keep
            self.log.info("%s: never answered; stopped without a snapshot", self._log_name)
            return True
        move = self._unaccepted_move()
        if move is not None:
            self.log.info("%s: the new server of move %s (%s), not handed over: stopped without a snapshot",
                          self._log_name, move["id"], move["phase"])
            return True
        reason = self._stop_reason()  # before the snapshot: its kernels' work counts as activity
        started = time.time()
        self.hibernating = started
        self._save_state()  # a hub killed from here on restarts with the node kept, never terminated
        url = f"http://{node.ip}:{node.port or self.port}{self.server.base_url}"
        self.log.info("%s: stopping%s: snapshotting the workspace%s first", self._log_name,
                      " (culled: its culling limit has passed)" if reason == "cull" else "",
                      " and kernels" if self.hibernate_kernels else "")
        token, minted = self._call_token()
        route = await self._reopen_route()
        try:
            reply = await durable.hibernate(url, token, kernels=self.hibernate_kernels,
                                            timeout=self.hibernate_timeout, reason=reason)
        except durable.HibernateError as err:
            if minted:
                durable.forget_token(self.user, token)
            refs = list(self.nodes) or [NodeRef(provider=node.provider, id=node.id, role=NOTEBOOK_ROLE,
                                                region=node.region).to_dict()]
            self.kept.append(durable.kept_entry(
                refs, f"snapshot failed: {err}", node=node.to_dict(), offer=self.offer.to_dict() if self.offer else None,
                request=self.request.to_dict() if self.request else None,
                token=durable.token_id(self.user, self.api_token) if hasattr(self.user, "db") else None))
            self.log.error("%s: stopped WITHOUT terminating node %s on %s: the snapshot failed: %s. "
                           "Nothing was deleted; retry the snapshot or discard the node: "
                           "cloudhop nodes terminate %s --discard",
                           self._log_name, node.id, node.provider, err, node.id)
            self.nodes, self.node, self.hibernating = [], None, None
            self.ray_cluster = None
            # the kept node's token stays valid (the hub deletes it on stop otherwise), so
            # a retry can still snapshot that node through its own server
            self.will_resume = True
            return False
        finally:
            await self._close_route(route)
        if minted:
            durable.forget_token(self.user, token)
        self.hibernated_snapshot, self.hibernating = reply["id"], None
        self.log.info("%s: hibernated into snapshot %s (%s in %s files, %s kernel(s), %.1f s); terminating",
                      self._log_name, reply["id"], durable.size_text(reply.get("bytes") or 0), reply.get("files"),
                      len(reply.get("kernels") or []), time.time() - started)
        self._save_state()
        return True

    async def _reopen_route(self) -> str | None:
        """Put this server's route back on the proxy for the time of its snapshot; the
        route spec, or None. JupyterHub takes the route off before it calls stop(), but
        the snapshot first has the server's JupyterLab pages save what they have not
        saved yet (extensions/unsaved.py), and their saves come through the proxy."""
        proxy = (getattr(self.user, "settings", None) or {}).get("proxy")
        if proxy is None or self.server is None:
            return None
        spec = self.proxy_spec
        try:
            await proxy.add_route(spec, self.server.host, {"user": self.user.name, "server_name": self.name})
        except Exception as err:  # the pages cannot save; the snapshot goes on without that
            self.log.warning("%s: the route for its pages to save before the snapshot: %s", self._log_name, err)
            return None
        return spec

    async def _close_route(self, spec: str | None) -> None:
        """Take the route :meth:`_reopen_route` put back off again (the server is going)."""
        if spec is None:
            return
        proxy = self.user.settings["proxy"]
        try:
            await proxy.delete_route(spec)
        except Exception as err:  # JupyterHub's route check removes it at the latest
            self.log.warning("%s: could not take its route off the proxy after the snapshot: %s",
                             self._log_name, err)

    # -- state ------------------------------------------------------------------

    def get_state(self):
        state = super().get_state()
        if self.kept:
            state.update({"version": STATE_VERSION, "kept": list(self.kept)})
        if self.node or self.nodes:
            # always written with a node: a state without it is from before hibernation
            # existed, whose server had finished starting (see load_state)
            state["serving"] = self.serving
        for key, value in (("hibernating", self.hibernating), ("hibernated", self.hibernated_snapshot)):
            if value and (self.node or self.nodes):  # written only when set
                state[key] = value
        if self.node or self.nodes:
            state.update({
                "version": STATE_VERSION,
                "request": self.request.to_dict() if self.request else None,
                "offer": self.offer.to_dict() if self.offer else None,
                "node": self.node.to_dict() if self.node else None,
                "nodes": list(self.nodes),
                "attempts": list(self.attempts),
            })
            if self.timeline is not None:
                state["timeline"] = self.timeline.to_state()
            if self.ray_cluster is not None:
                state["ray"] = self.ray_launcher.to_state()
        return state

    def load_state(self, state):
        super().load_state(state)
        try:
            if check_version(state) is None:
                return
        except StateVersionError:
            self.log.warning("State of %s is from a newer Cloudhop (v%s); reading what I know",
                             self._log_name, state.get("version"))
        if state.get("offer"):
            self.offer = Offer.from_dict(state["offer"])
        if state.get("node"):
            self.node = Node.from_dict(state["node"])
            self.ip, self.port = self.node.ip or self.ip, self.node.port or self.port
        self.nodes = list(state.get("nodes") or [])
        self.attempts = list(state.get("attempts") or [])
        self.timeline = Timeline.from_state(state.get("timeline"))
        self.kept = [k for k in state.get("kept") or [] if isinstance(k, dict)]
        # a state saved before hibernation existed has no "serving": its server ran
        self.serving = bool(self.node or self.nodes) and state.get("serving", True) is True
        self.hibernated_snapshot = state.get("hibernated") if isinstance(state.get("hibernated"), str) else None
        if state.get("hibernating") and self.nodes:
            # the hub stopped (or was killed) while a stop took its snapshot: the node was
            # not terminated; it keeps running, and the next stop snapshots it again
            self.log.warning("%s: a stop was cut off while its snapshot was taken; the node is kept running "
                             "(stop the server again to hibernate it)", self._log_name)
        self.ray_cluster = None
        if state.get("ray"):
            self.ray_launcher.load_state(state["ray"], tags=self.tags(WORKER_ROLE))
        if state.get("request"):
            try:
                self.request = LaunchRequest.from_dict(state["request"])
            except (TypeError, ValueError) as err:
                self.request = None
                self.log.warning("The saved launch request of %s is unreadable (%s); it is dropped",
                                 self._log_name, err)

    def clear_state(self):
        super().clear_state()
        self._events = []  # the hub clears state before a spawn and after a stop
        self.request = self.offer = self.node = self._price_hour = None
        self.hibernated_snapshot = self.hibernating = self.restore_id = None
        self.serving = False  # but ``kept`` stays: kept nodes outlive the stop that kept them
        self.nodes = []
        self.attempts = []
        self.timeline = None
        self.ray_cluster = None
