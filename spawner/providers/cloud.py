"""What the three cloud providers (AWS, GCP, OCI) share: config common to VMs, the
status cache, the launch retry loop, node tags and the life of a Ray cluster's firewall
rule around its nodes. Each cloud's module subclasses :class:`CloudProvider` and
supplies the blocking SDK calls and a :class:`~.ray_firewall.RuleStore`; this module
imports no SDK.

Node ids are ``"<region or zone>/<cloud id>"`` so that ``status(node_id)`` knows where
to look without a table, and the reaper can compare them with the server state.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Callable, ClassVar

from traitlets import Bool, Enum, Float, Integer, List, TraitError, Unicode, validate

from cloudhop import __version__ as VERSION  # the default image tag follows the package

from ..bootstrap import render_user_data
from .ray_firewall import RayRule, RayRules, RuleStore, cluster_of
from ..validate import check_number, check_url
from .base import (
    PENDING,
    RUNNING,
    STOPPING,
    TAG_HUB,
    TAG_REQUEST,
    TAG_ROLE,
    TERMINATED,
    CapacityError,
    CredentialsError,
    LaunchSpec,
    Node,
    Provider,
    ProviderError,
    QuotaError,
    TransientError,
)

#: extra tag every cloud node carries: the port its server listens on
TAG_PORT = "cloudhop-port"
#: what the progress page says of a running VM until its server answers
VM_UP = "the VM is up; the server starts from cloud-init"


#: trait name -> check_number rule, for CloudProvider's numeric settings and those its
#: subclasses share (``api_attempts`` of AWS and OCI, ``operation_timeout`` of GCP and
#: Yandex, ``poll_seconds`` of Azure and Yandex)
NUMBER_RULES = {
    "status_cache_seconds": {"minimum": 0},
    "launch_attempts": {"minimum": 1, "integer": True, "unit": "attempts"},
    "retry_base_delay": {"minimum": 0},
    "terminate_timeout": {"minimum": 0, "strict": True},
    "fresh_node_seconds": {"minimum": 0},
    "available_cache_seconds": {"minimum": 0},
    "api_attempts": {"minimum": 1, "integer": True, "unit": "attempts"},
    "operation_timeout": {"minimum": 0, "strict": True},
    "poll_seconds": {"minimum": 0},
}



class Retry(Exception):
    """Raised by a cloud's error classifier: the failure is throttling or a server
    error worth another attempt. ``cause`` is the SDK error."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


def epoch_of(text) -> float | None:
    """An ISO 8601 time as a cloud API writes it (``2026-11-22T21:00:00Z``) as epoch
    seconds; None when absent or unreadable."""
    import datetime

    try:
        return datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp() if text else None
    except ValueError:
        return None


def split_id(node_id: str) -> tuple[str, str]:
    """``"us-east-1/i-0abc"`` -> ``("us-east-1", "i-0abc")``."""
    where, sep, native = node_id.partition("/")
    if not sep or not where or not native:
        raise ValueError(f"not a cloud node id: {node_id!r} (expected 'region/id')")
    return where, native


class CloudProvider(Provider):
    """Base of the VM providers. Subclasses implement the ``_blocking_*`` methods
    (called through :func:`asyncio.to_thread`), :meth:`_classify` and
    :meth:`_rule_store`."""

    #: one list call sees the nodes of every region (an Azure resource group, a Lambda or
    #: DigitalOcean account): launch's look-up, the status cache and ``list_nodes`` then
    #: use the one place ``"*"``, and ``_blocking_find``/``_blocking_describe`` get it
    lists_everywhere: ClassVar[bool] = False

    hub_connect_url = Unicode(
        "",
        help="""The hub's URL as the cloud nodes reach it, e.g. ``https://hub.example.org``
        (its API is at ``<url>/hub/api``). Empty: the hub's own JUPYTERHUB_API_URL, which
        only works when the nodes can reach that address.""",
    ).tag(config=True)

    singleuser_image = Unicode(
        f"cloudhop/singleuser:{VERSION}",
        help="Container image a VM runs the single-user server from (built from "
        "images/singleuser); a request's ``image`` option overrides it.",
    ).tag(config=True)

    connect_ip = Enum(
        ["private", "public"],
        default_value="private",
        help="""Which address of a node the hub connects to: ``private`` (the hub runs
        in the same network, the default) or ``public`` (the hub is elsewhere; the node's
        firewall must then admit the hub on the server port).""",
    ).tag(config=True)

    public_ip = Bool(
        True,
        help="""Give nodes a public IP address: needed when the hub connects by public IP
        (``connect_ip = "public"``), or when the nodes' network has no NAT to pull the
        image through (AWS: a subnet without a NAT gateway, GCP: no Cloud NAT; on OCI the
        subnet must then be a public one). Was ``c.AWSProvider.associate_public_ip``,
        ``c.GCPProvider.external_ip`` and ``c.OCIProvider.assign_public_ip``.""",
    ).tag(config=True)

    regions = List(
        Unicode(),
        help="""Regions (or, for OCI, regions of the tenancy) the reaper and re-attach
        look for nodes in. Empty: every region of this provider's catalog offers.""",
    ).tag(config=True)

    api_endpoint = Unicode(
        "",
        help="""Base URL of the cloud's API in place of its public one (a private or
        sovereign-cloud endpoint, or a local test server such as ``http://127.0.0.1:8080``).
        Empty: the public endpoint. Each cloud redeclares it with what it points at; the
        one check below serves them all.""",
    ).tag(config=True)

    status_cache_seconds = Float(
        5.0,
        help="Seconds a region's node list is reused: every server's status poll in "
        "that window shares one describe call.",
    ).tag(config=True)

    launch_attempts = Integer(
        5,
        help="Attempts a launch makes on throttling or a server error (capacity and "
        "quota errors are never retried: failover moves on).",
    ).tag(config=True)

    retry_base_delay = Float(
        1.0,
        help="Seconds before the first launch retry; doubles each attempt, with jitter.",
    ).tag(config=True)

    terminate_timeout = Float(
        120.0,
        help="Seconds terminate waits to see the node stopping before it gives up.",
    ).tag(config=True)

    fresh_node_seconds = Float(
        120.0,
        help="A node launched this recently that a describe call does not show yet is "
        "reported pending, not terminated (cloud APIs are eventually consistent).",
    ).tag(config=True)

    available_cache_seconds = Float(
        60.0,
        help="Seconds a failed credentials check is remembered (the form asks on every "
        "render; finding no credentials can take seconds of metadata-server probing).",
    ).tag(config=True)

    @validate(*NUMBER_RULES)
    def _valid_number(self, proposal):
        return check_number(proposal, **NUMBER_RULES[proposal["trait"].name])

    @validate("api_endpoint")
    def _valid_endpoint(self, proposal):
        """An endpoint is an http(s) URL, refused by its setting's name otherwise (also
        under a subclass's old name for it: :class:`~.aliases.Renamed` runs this)."""
        return check_url(proposal)

    @validate("hub_connect_url")
    def _valid_connect_url(self, proposal):
        url = proposal["value"].strip()
        if url and not (url.startswith(("http://", "https://")) and len(url.split("/")[2]) > 0):
            raise TraitError(
                f"hub_connect_url {url!r} is not a URL: give the hub's address as nodes "
                "reach it, e.g. 'https://hub.example.org'"
            )
        return url.rstrip("/")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._available: tuple[float, str | None] | None = None
        self._cache: dict[str, tuple[float, dict[str, Node]]] = {}
        self._cache_locks: dict[str, asyncio.Lock] = {}
        self._launched: dict[str, float] = {}
        #: the Ray clusters' firewall rules (:mod:`.ray_firewall`): this cloud's
        #: :class:`~.ray_firewall.RuleStore` with the per-cluster locks and retries
        self.ray_rules = RayRules(self._rule_store(), log=self.log, name=self.name)

    # -- to be supplied by each cloud ---------------------------------------------------
    def _rule_store(self) -> RuleStore:
        """This cloud's Ray firewall rules (made once, in ``__init__``)."""
        raise NotImplementedError

    def _classify(self, err: BaseException) -> BaseException:
        """Map an SDK error to a :class:`ProviderError` (to raise), a :class:`Retry`
        (to try again) or the error itself (unknown: raised as is)."""
        raise NotImplementedError

    def _blocking_create_node(self, spec: LaunchSpec, tags: dict, user_data: str,
                              rule: str | None) -> Node:
        """Create the node; ``rule``: the id of its Ray cluster's rule to put it under
        (None: not part of a cluster)."""
        raise NotImplementedError

    def _blocking_find(self, where: str, tags: dict) -> list[Node]:
        """Live nodes in region/zone ``where`` (all places when ``where`` is None)
        carrying all ``tags``."""
        raise NotImplementedError

    def _blocking_describe(self, where: str) -> dict[str, Node]:
        """Every Cloudhop node in ``where`` (terminated ones too, while the cloud still
        lists them), by node id: the one call the status cache makes."""
        raise NotImplementedError

    def _blocking_terminate(self, node_id: str) -> Node | None:
        """Ask the cloud to delete the node; return what it says the node is now, or
        None when it is already gone."""
        raise NotImplementedError

    def _blocking_check_catalog(self, offers: list) -> list[tuple]:
        """:meth:`~.base.Provider.check_catalog` for this cloud, blocking (run by
        :meth:`check_catalog` off the loop)."""
        raise NotImplementedError(f"the {self.name} provider cannot check the catalog")

    def _where(self, spec: LaunchSpec) -> str:
        """The region/zone a spec launches in (the first part of its node id)."""
        return spec.offer.region

    def _find_where(self, spec: LaunchSpec) -> str:
        """Where launch looks for a node this request already made."""
        return "*" if self.lists_everywhere else self._where(spec)

    def _cache_key(self, where: str) -> str:
        """The status cache entry (and describe call) a node's place belongs to."""
        return "*" if self.lists_everywhere else where

    def _places(self) -> list[str]:
        """The places ``list_nodes`` looks in."""
        if self.lists_everywhere:
            return ["*"]
        if self.regions:
            return list(self.regions)
        return sorted({o.region for o in self.offers()})

    # -- shared behaviour ------------------------------------------------------------------
    async def check_catalog(self, offers):
        return await self._call(self._blocking_check_catalog, list(offers))

    def vm_node(self, *, where: str, native_id: str, state: str, tags: dict, private: str | None,
                public: str | None, info: dict, creating: str, status: str, running: str = VM_UP,
                region: str | None = None, default_port=None) -> Node:
        """A VM as a :class:`~.base.Node`, as every cloud describes one: id
        ``"<where>/<native_id>"`` (``where`` its region or zone; ``region`` when that
        differs), the address the hub connects to (``connect_ip``) once it runs, the server
        port from its :data:`TAG_PORT` tag (else ``default_port``), both addresses in
        ``info``, and for the progress page ``creating`` while pending, ``running`` while
        up, else the cloud's own ``status`` word."""
        ip = public if self.connect_ip == "public" else private
        port = str(tags.get(TAG_PORT, "" if default_port is None else default_port))
        return Node(
            id=f"{where}/{native_id}",
            provider=self.name,
            region=region or where,
            state=state,
            ip=(ip or None) if state == RUNNING else None,
            port=int(port) if port.isdigit() else None,
            tags=tags,
            info={**info, "private_ip": private or None, "public_ip": public or None},
            detail={PENDING: creating, RUNNING: running}.get(state, status),
        )

    def offers(self):
        """Catalog rows for this cloud (no network call)."""
        from cloudhop.spawner.catalog import catalog_offers

        return catalog_offers(self.name, self.config)

    def node_tags(self, spec: LaunchSpec) -> dict:
        """Tags a node is created with: the hub, user and server from the spec, the
        request id (idempotency), the role and the server port."""
        tags = {k: str(v) for k, v in (spec.tags or {}).items()}
        tags[TAG_REQUEST] = spec.request_id
        tags[TAG_ROLE] = spec.role
        tags[TAG_PORT] = str(int(spec.port))
        return tags

    def connect_url(self) -> str | None:
        """The hub's URL as nodes reach it: ``hub_connect_url``, else the hub's
        ``c.JupyterHub.public_url``, else None (the hub's own API URL is kept)."""
        if self.hub_connect_url:
            return self.hub_connect_url
        public = self.config.JupyterHub.get("public_url") if "JupyterHub" in self.config else None
        return str(public).rstrip("/") if public else None

    def user_data(self, spec: LaunchSpec) -> str:
        connect = self.connect_url()
        api = (spec.env or {}).get("JUPYTERHUB_API_URL", "")
        if connect is None and any(h in api for h in ("//127.", "//localhost", "//[::1]")):
            self.log.warning(
                "%s: nodes are told to reach the hub at %s, a loopback address they cannot "
                "reach; set c.CloudProvider.hub_connect_url (docs/clouds.md)", self.name, api,
            )
        return render_user_data(spec, image=spec.image or self.singleuser_image, hub_connect_url=connect)

    def _blocking_create(self, spec: LaunchSpec, tags: dict, user_data: str) -> Node:
        """Create the node; a Ray cluster's node after its cluster's rule is ensured. A
        create that made no node (a capacity or quota error) leaves no rule behind when
        its cluster has no other node; the next offer makes it again if needed."""
        cluster = cluster_of(tags)
        if not cluster:
            return self._blocking_create_node(spec, tags, user_data, None)
        where = self._where(spec)
        rule = self.ray_rules.ensure(where, tags)
        try:
            return self._blocking_create_node(spec, tags, user_data, rule)
        except Exception as err:
            hub = tags.get(TAG_HUB)
            # anything else may have made the node (a timeout): the terminate that ends it sweeps
            if hub and isinstance(self._classify(err), (CapacityError, QuotaError)):
                try:
                    self._blocking_release_rules(where, hub, cluster)
                except Exception as cleanup:  # noqa: BLE001 - the launch error is what matters
                    self.log.warning("%s: could not remove the Ray firewall rule of %s: %s",
                                     self.name, cluster, cleanup)
            raise

    async def _call(self, fn: Callable, *args, **kwargs):
        """Run a blocking SDK call off the event loop, translating its errors once."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except ProviderError:
            raise
        except Exception as err:  # noqa: BLE001 - classified right here
            mapped = self._classify(err)
            if isinstance(mapped, Retry):
                raise TransientError(f"{self.display_name}: {mapped}") from err
            if mapped is err:
                raise
            raise mapped from err

    async def launch(self, spec: LaunchSpec) -> Node:
        tags = self.node_tags(spec)
        found = await self._call(self._blocking_find, self._find_where(spec), {TAG_REQUEST: spec.request_id})
        if found:
            self.log.info("%s: request %s already has node %s", self.name, spec.request_id, found[0].id)
            return found[0]
        user_data = self.user_data(spec)
        delay = self.retry_base_delay
        for attempt in range(1, self.launch_attempts + 1):
            try:
                node = await asyncio.to_thread(self._blocking_create, spec, tags, user_data)
            except ProviderError:
                raise
            except Exception as err:  # noqa: BLE001 - classified right here
                mapped = self._classify(err)
                if not isinstance(mapped, Retry):
                    if isinstance(mapped, ProviderError) and mapped.offer is None:
                        mapped.offer = spec.offer
                    raise mapped from err
                if attempt == self.launch_attempts:
                    raise TransientError(
                        f"{self.display_name} kept failing after {attempt} attempts: {mapped}",
                        offer=spec.offer,
                    ) from err
                self.log.warning(
                    "%s: launch attempt %d for %s failed (%s); retrying in %.1fs",
                    self.name, attempt, spec.offer.key, mapped, delay,
                )
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
                delay *= 2
                continue
            self._launched[node.id] = time.monotonic()
            self._forget(node.id)
            return node
        raise AssertionError("unreachable")  # pragma: no cover

    def _forget(self, node_id: str) -> None:
        self._cache.pop(self._cache_key(node_id.partition("/")[0]), None)

    async def _region_nodes(self, where: str) -> dict[str, Node]:
        """The cached node list of one region/zone: one describe call per
        ``status_cache_seconds`` however many servers poll."""
        where = self._cache_key(where)
        lock = self._cache_locks.setdefault(where, asyncio.Lock())
        async with lock:
            hit = self._cache.get(where)
            if hit and time.monotonic() - hit[0] < self.status_cache_seconds:
                return hit[1]
            nodes = await self._call(self._blocking_describe, where)
            self._cache[where] = (time.monotonic(), nodes)
            return nodes

    async def status(self, node_id: str) -> Node:
        where, _ = split_id(node_id)
        nodes = await self._region_nodes(where)
        node = nodes.get(node_id)
        if node is not None:
            return node
        started = self._launched.get(node_id)
        if started is not None and time.monotonic() - started < self.fresh_node_seconds:
            return Node(node_id, self.name, self._region_of(where), PENDING, detail="the cloud is creating the VM")
        return Node(node_id, self.name, self._region_of(where), TERMINATED, detail="the VM is gone")

    def _region_of(self, where: str) -> str:
        return where

    async def terminate(self, node_id: str) -> None:
        """See :meth:`Provider.terminate`; then the node's Ray firewall rule goes if it was
        its cluster's last node (and this hub's forgotten rules in the region with it).
        A rule never fails a terminate."""
        where = node_id.partition("/")[0]
        try:
            known = (await self._region_nodes(where)).get(node_id)
        except Exception:  # noqa: BLE001 - the terminate below reports the real problem
            known = None
        await self._terminate_node(node_id)
        if known is not None:
            await self._release_rules(where, known.tags, exclude=(node_id,))

    async def _release_rules(self, where: str, tags: dict, exclude=()) -> None:
        """Sweep the Ray rules of the hub a node's ``tags`` name in ``where`` (the node's
        cluster's first); a rule still in use is retried in the background. Logs, never
        raises: a hub without Ray servers may lack the firewall permissions, so a refusal
        after a plain server's terminate is logged quietly."""
        hub, cluster = (tags or {}).get(TAG_HUB), cluster_of(tags)
        if not hub:
            return
        try:
            refused = await self._call(self._blocking_release_rules, where, hub, cluster, tuple(exclude))
        except Exception as err:  # noqa: BLE001 - a rule left behind never fails a terminate
            quiet = cluster is None and isinstance(err, CredentialsError)
            (self.log.debug if quiet else self.log.warning)(
                "%s: could not remove Ray firewall rules in %s: %s", self.name, where, err)
            return
        for rule in refused:
            self.ray_rules.retry_later(where, rule, self._call)

    def _blocking_release_rules(self, where: str, hub: str, cluster: str | None = None,
                                exclude=()) -> list[RayRule]:
        """Delete the ``hub``'s rules in ``where`` whose cluster has no pending or running
        node left (see :meth:`.ray_firewall.RayRules.sweep`); returns those the cloud
        refused as still in use. Lists the nodes only when the hub has rules there."""
        rules = self.ray_rules.store.list(where, hub)
        if not rules:
            return []
        nodes = self._blocking_describe(where).values()
        return self.ray_rules.sweep(where, rules, nodes, cluster=cluster, exclude=exclude)

    async def close(self):
        self.ray_rules.close()
        await super().close()

    async def _terminate_node(self, node_id: str) -> None:
        split_id(node_id)
        node = await self._call(self._blocking_terminate, node_id)
        self._forget(node_id)
        deadline = time.monotonic() + self.terminate_timeout
        delay = 0.5
        while node is not None and node.state not in (STOPPING, TERMINATED):
            if time.monotonic() > deadline:
                raise TransientError(
                    f"{self.display_name} did not confirm that {node_id} is stopping "
                    f"within {self.terminate_timeout:.0f}s (state {node.state})"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)
            self._forget(node_id)
            node = (await self._region_nodes(node_id.partition("/")[0])).get(node_id)
        self._launched.pop(node_id, None)
        self.log.info("%s: terminated %s", self.name, node_id)

    async def list_nodes(self, tags: dict) -> list[Node]:
        """See :meth:`Provider.list_nodes`. A region that cannot be read (not enabled
        for the account, an outage) is logged and skipped; only when no region can be
        read does the error reach the caller."""
        out: list[Node] = []
        places = self._places()
        errors: list[ProviderError] = []
        for where in places:
            try:
                out += await self._call(self._blocking_find, where, dict(tags))
            except ProviderError as err:
                self.log.warning("%s: cannot list nodes in %s: %s", self.name, where, err)
                errors.append(err)
        if places and len(errors) == len(places):
            raise errors[0]
        return out

    async def check_available(self) -> str | None:
        """See :meth:`Provider.check_available`. Success is remembered; a reason for
        ``available_cache_seconds``."""
        hit = self._available
        if hit and (hit[1] is None or time.monotonic() - hit[0] < self.available_cache_seconds):
            return hit[1]
        try:
            reason = await asyncio.to_thread(self._blocking_check)
        except ProviderError as err:  # e.g. the SDK is not installed: the hint says what to do
            reason = err.message
        except Exception as err:  # noqa: BLE001 - a reason, never a crash
            reason = f"{self.display_name} is not usable: {type(err).__name__}"
        self._available = (time.monotonic(), reason)
        return reason

    def _blocking_check(self) -> str | None:
        return None

    def _reason(self, err: BaseException) -> str:
        """What a failed availability check says: the mapped error's message (it names
        the refused credential, never its value), else the error's type."""
        mapped = self._classify(err)
        return mapped.message if isinstance(mapped, ProviderError) else f"{self.display_name}: {type(err).__name__}"
