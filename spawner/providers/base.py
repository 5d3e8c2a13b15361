"""The provider contract: how Cloudhop turns an offer into a running node and back.

A *provider* is one place Cloudhop can run a user's server: this machine (``local``),
a cloud (``aws``, ``gcp``, ``oci``) or a Kubernetes cluster. The spawner talks to every
provider through this small interface and nothing else; a provider never imports the
spawner. Each provider module is the only module that imports its SDK.

Assumptions every implementation keeps (they are what the spawner relies on):

* **Asynchronous.** Every method that may block (an SDK call, a process start) is a
  coroutine and runs the blocking part off the event loop (``asyncio.to_thread``).
* **Idempotent launch.** ``launch(spec)`` first looks for a node tagged with
  ``spec.request_id``; if one exists it is returned instead of making a second one.
  So a launch retried after a hub crash never doubles a VM.
* **Idempotent terminate.** Terminating a node that is gone is not an error.
  ``terminate`` returns only once the node is seen stopping or gone, so the hub can
  forget it safely.
* **Tags are the source of truth.** Every node carries :data:`TAG_HUB`, :data:`TAG_USER`,
  :data:`TAG_SERVER` and :data:`TAG_REQUEST`; ``list_nodes`` finds nodes by them, which
  is how a restarted hub re-attaches and how the reaper finds leaks.
* **Status is cheap.** ``status`` may serve from a short-lived cache: the hub polls
  every server every 30 seconds.
* **Errors are translated once, at the boundary,** into the :class:`ProviderError`
  subclasses below, keeping the SDK error as ``__cause__``. Capacity and quota errors
  are raised fast (no retries) so failover moves to the next offer; throttling and
  server errors are retried inside the provider and surface as
  :class:`TransientError` only when retries are exhausted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from traitlets.config import LoggingConfigurable

if TYPE_CHECKING:  # pragma: no cover
    from ..offers import Offer
    from ..options import RayRequest

TAG_HUB = "cloudhop-hub"
TAG_USER = "cloudhop-user"
TAG_SERVER = "cloudhop-server"
TAG_REQUEST = "cloudhop-request"
TAG_ROLE = "cloudhop-role"  # "notebook" or "ray-worker"
# every node of one server's Ray cluster (the notebook node running the head, each worker);
# its value names the cluster. A VM provider opens Ray's ports between nodes sharing it.
TAG_RAY_CLUSTER = "cloudhop-ray-cluster"

# Node states, in the order a node goes through them.
PENDING = "pending"
RUNNING = "running"
STOPPING = "stopping"
TERMINATED = "terminated"
FAILED = "failed"
NODE_STATES = (PENDING, RUNNING, STOPPING, TERMINATED, FAILED)


class ProviderError(Exception):
    """A provider could not do what was asked. ``reason`` is a short machine word the
    spawn page and the server's state show; ``status_code`` is what the hub answers."""

    reason = "provider"
    status_code = 500
    #: failover moves to the next offer on these errors instead of giving up
    failover = False

    def __init__(self, message: str, *, offer: "Offer | None" = None):
        super().__init__(message)
        self.message = message
        self.offer = offer


class CapacityError(ProviderError):
    """The provider has no capacity for this offer now (no free GPU, pool exhausted)."""

    reason = "capacity"
    status_code = 503
    failover = True


class QuotaError(ProviderError):
    """The account's quota or limit forbids this offer."""

    reason = "quota"
    status_code = 403
    failover = True


class CredentialsError(ProviderError):
    """The hub has no usable credentials for this provider. Never carries the secret."""

    reason = "credentials"
    status_code = 503
    failover = True


class NodeNotFound(ProviderError):
    """No node with that id exists (anymore)."""

    reason = "not-found"
    status_code = 404


class TransientError(ProviderError):
    """Throttling or a server error that outlasted the provider's own retries."""

    reason = "transient"
    status_code = 503
    failover = True


@dataclass(frozen=True)
class Node:
    """What a provider knows about one node (a process, a VM, a pod)."""

    id: str
    provider: str
    region: str
    state: str
    #: where the single-user server listens once running (None until known)
    ip: str | None = None
    port: int | None = None
    tags: dict = field(default_factory=dict)
    #: provider-specific details safe to show a user (instance type, zone, pid, ...)
    info: dict = field(default_factory=dict)
    #: a short human sentence on what the node is waiting for, for the progress page
    detail: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Node":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a provider needs to start one node for one offer.

    ``cmd`` and ``env`` are what the node runs (``jupyterhub-singleuser`` with the
    JUPYTERHUB_* environment, or ``ray start`` for a worker). ``env`` holds the server's
    own API token and nothing secret beyond it: never a cloud credential.
    """

    request_id: str
    offer: "Offer"
    cmd: list
    env: dict
    tags: dict
    #: "notebook" or "ray-worker"
    role: str = "notebook"
    #: the port the process listens on inside the node (VMs/pods); local picks its own
    port: int = 8888
    #: the single-user image a VM or pod runs (None: the provider's default)
    image: str | None = None
    zone: str | None = None
    spot: bool = False
    #: the server's Ray request, read only by providers with ``handles_ray`` (they
    #: build the whole Ray cluster themselves); every other provider ignores it
    ray: "RayRequest | None" = None


class Provider(LoggingConfigurable):
    """Base class of every provider. Subclasses set :attr:`name` and implement the
    methods of :attr:`CONTRACT`, keeping the module docstring's assumptions; a class
    that misses one is refused when it is created (:meth:`__init_subclass__`)."""

    name: ClassVar[str] = ""
    #: what the form shows for this provider
    display_name: ClassVar[str] = ""
    #: True when ``launch`` builds the server's Ray cluster itself from ``spec.ray``
    #: (Kubernetes: a KubeRay ``RayCluster``, ``RAY_ADDRESS`` set in the notebook's
    #: env, removed by ``terminate``); the spawner then launches no worker nodes and
    #: starts no Ray head beside the notebook for that server.
    handles_ray: ClassVar[bool] = False
    #: the port the single-user server listens on inside a node (a VM, a pod): the
    #: spawner puts it in the notebook's spec. None: the provider runs nodes on this
    #: machine, so the spawner picks a free port for each (local).
    node_port: ClassVar[int | None] = 8888
    #: the methods every provider implements; the others have defaults
    CONTRACT: ClassVar[tuple[str, ...]] = ("offers", "launch", "status", "terminate", "list_nodes")

    def __init_subclass__(cls, partial: bool = False, **kw):
        """Refuse (:class:`TypeError`) a provider class that leaves a method of
        :attr:`CONTRACT` to this base class, naming the method, as JupyterHub's
        ``Spawner`` does for ``start``, ``stop`` and ``poll``: a provider that cannot
        list or terminate its nodes would leak them, so it fails at import, not at a
        user's spawn.

        ``class Name(Provider, partial=True)`` declares, for that class only, that it
        implements part of the contract on purpose: a base class that its subclasses
        complete, or a test double that answers only what its test asks. Subclasses
        of it are checked again."""
        super().__init_subclass__(**kw)
        if partial:
            return
        missing = [m for m in cls.CONTRACT if getattr(cls, m) is getattr(Provider, m)]
        if missing:
            raise TypeError(
                f"provider class {cls.__name__} does not implement {', '.join(missing)} of the "
                f"provider contract ({', '.join(cls.CONTRACT)}); implement "
                f"{'them' if len(missing) > 1 else 'it'}, or declare a base class that "
                f"subclasses complete with `class {cls.__name__}(..., partial=True)`")

    async def check_available(self) -> str | None:
        """``None`` when the provider can launch, else the reason it cannot (shown in
        the form, e.g. "no AWS credentials found"). Never raises, never names a secret."""
        return None

    def offers(self) -> list["Offer"]:
        """The offers this provider can launch, as far as it knows without a network
        call (the catalog's rows for a cloud; NVML's GPUs for local)."""
        raise NotImplementedError

    async def launch(self, spec: LaunchSpec) -> Node:
        """Start a node for ``spec`` (idempotent on ``spec.request_id``) and return it,
        usually still ``pending``. Raises :class:`CapacityError`, :class:`QuotaError`,
        :class:`CredentialsError` or :class:`TransientError`."""
        raise NotImplementedError

    async def status(self, node_id: str) -> Node:
        """The node's current state (possibly from a cache a few seconds old). A node
        that no longer exists is returned with state ``terminated``."""
        raise NotImplementedError

    async def terminate(self, node_id: str) -> None:
        """Stop the node and everything it runs; idempotent; returns once the node is
        seen stopping or gone."""
        raise NotImplementedError

    async def list_nodes(self, tags: dict) -> list[Node]:
        """Nodes (not yet terminated) carrying all of ``tags``."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release clients and background tasks; the hub calls it on shutdown."""
        return None

    async def check_catalog(self, offers: list["Offer"]) -> list[tuple]:
        """Which of ``offers`` (this provider's catalog rows) these credentials can
        launch, asked of the provider's own API (EC2 ``describe_instance_type_offerings``,
        Compute ``machineTypes``/``acceleratorTypes``, OCI ``list_shapes``).

        Returns ``(instance_type, region, zones)`` for each launchable offer, ``zones``
        in the catalog's spelling (AWS zone ids, GCP zones, OCI availability domains;
        an empty tuple keeps the catalog's zones). An offer missing from the answer, or
        in a region that cannot be queried (not enabled for the account), is taken as
        not launchable. Raises :class:`CredentialsError` when there are no usable
        credentials at all. ``cloudhop catalog check`` calls it and records the answer.
        """
        raise NotImplementedError(f"the {self.name or type(self).__name__} provider cannot check the catalog")
