"""The operator settings of the hub's own services: ``c.CloudhopStore.*`` (the snapshot
store of moves) and ``c.CloudhopReaper.*`` (the reaper of nodes nobody owns).

Each section is a traitlets :class:`~traitlets.config.Configurable`, made from the
hub's loaded config where the service is added to it (``CloudhopReaper(config=c)``),
so defaults and help live with the setting and a bad value stops the hub at start with
a message naming it (``c.CloudhopReaper.grace must be ...``). The checks are those of
:mod:`cloudhop.spawner.validate`. See docs/architecture.md (configuration).
"""

from __future__ import annotations

from traitlets import Bool, Dict, Integer, List, Unicode, validate
from traitlets.config import LoggingConfigurable

from cloudhop.spawner.validate import Number, SettingError, check_number, require_url, setting_name

#: the keys of ``c.CloudhopStore.s3`` (all but ``bucket`` optional)
S3_KEYS = ("bucket", "region", "prefix", "endpoint_url")


class CloudhopStore(LoggingConfigurable):
    """Where the snapshot store service listens and keeps snapshots (docs/migration.md)."""

    port = Integer(
        0, help="Port the store service listens on, on the hub's loopback address. "
        "0: one picked at the first start and kept in the data dir.",
    ).tag(config=True)
    s3 = Dict(
        help="Keep snapshots in an S3-compatible bucket instead of the data dir: "
        '{"bucket": ..., "region": ..., "prefix": ..., "endpoint_url": ...}, all but the '
        "bucket optional. Empty: the data dir.",
    ).tag(config=True)
    quota_gib = Number(
        100.0, rule=dict(minimum=0, unit="GiB"),
        help="GiB of snapshots each user may keep (chunks they share with their own earlier "
        "snapshots count once; each server's line keeps keep_snapshots, and chunks no kept "
        "snapshot uses are collected). An upload past it is "
        "refused with a 413 naming the quota and the usage. 0: no limit.",
    ).tag(config=True)

    keep_snapshots = Integer(
        5, help="Snapshots each server's line keeps (a user's server name: its hibernations, "
        "moves, rescues and class copies); storing one more deletes the oldest, and its chunks "
        "no kept snapshot uses go at the next garbage collection. At least 1.",
    ).tag(config=True)
    class_publishers = List(
        Unicode(), help="Groups whose members may publish class snapshots (admins always may). "
        "Empty: admins only.",
    ).tag(config=True)

    @validate("keep_snapshots")
    def _check_keep(self, proposal):
        return check_number(proposal, minimum=1, integer=True, unit="snapshots")

    @validate("port")
    def _check_port(self, proposal):
        return check_number(proposal, minimum=0, maximum=65535, integer=True,
                            must="a port number from 1 to 65535, or 0 to pick one")

    @validate("s3")
    def _check_s3(self, proposal):
        s3, name = proposal["value"], setting_name(self, proposal["trait"])
        if not s3:
            return s3
        unknown = sorted(set(s3) - set(S3_KEYS), key=str)
        if unknown:
            raise SettingError(f"{name} has no key {unknown[0]!r}; its keys are {', '.join(S3_KEYS)}")
        if not (isinstance(s3.get("bucket"), str) and s3["bucket"].strip()):
            raise SettingError(f"{name}['bucket'] must be a bucket name, not {s3.get('bucket')!r}")
        for key in S3_KEYS[1:]:
            if s3.get(key) is not None and not isinstance(s3[key], str):
                raise SettingError(f"{name}[{key!r}] must be a string, not {s3[key]!r}")
        if s3.get("endpoint_url"):
            require_url(s3["endpoint_url"], f"{name}['endpoint_url']")
        return s3


class CloudhopReaper(LoggingConfigurable):
    """How often the reaper sweeps, and how old a node nobody owns must be before it is
    terminated (docs/clouds.md)."""

    enabled = Bool(True, help="Run the reaper as a hub-managed service.").tag(config=True)
    interval = Number(300.0, rule=dict(minimum=0, strict=True),
                      help="Seconds between sweeps.").tag(config=True)
    grace = Number(900.0, rule=dict(minimum=0),
                   help="Seconds a node must have existed before it may be reaped, so a "
                   "launch whose server has not saved its state yet is left alone.").tag(config=True)
