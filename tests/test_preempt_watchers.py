"""The spot watchers against loopback doubles of each cloud's metadata endpoint
(tests/fakes/metadata.py, real HTTP in the clouds' documented formats): quiet while the
cloud says nothing, a notice as soon as it does, the clouds' required headers sent."""

from __future__ import annotations

import asyncio

import pytest

from cloudhop.extensions.preempt.watchers import AWSWatcher, GCPWatcher, OCIWatcher, watcher_for
from tests.fakes.metadata import FakeMetadata


@pytest.fixture
def metadata(request):
    fake = FakeMetadata(request.param)
    fake.url = fake.start()
    yield fake
    fake.stop()


async def quiet_then(watcher, announce, seconds=0.6):
    """Start ``watcher.wait()``, check it waits while the cloud is quiet, then
    ``announce()`` and return the notice."""
    task = asyncio.ensure_future(watcher.wait())
    await asyncio.sleep(seconds)
    assert not task.done(), "a notice before the cloud gave one"
    announce()
    return await asyncio.wait_for(task, 10)


@pytest.mark.parametrize("metadata", ["aws"], indirect=True)
async def test_aws_interruption_notice_with_an_imdsv2_token(metadata):
    notice = await quiet_then(AWSWatcher(metadata.url, interval=0.05), lambda: metadata.notice("terminate"))
    assert (notice.cloud, notice.kind) == ("aws", "interruption")
    assert notice.detail.startswith("terminate at ") and notice.deadline.endswith("Z")
    # a token was asked for once and every read carried it (the fake answers 401 otherwise)
    assert [r for r in metadata.requests if r[0] == "PUT"] == [("PUT", "/latest/api/token")]
    assert ("GET", "/latest/meta-data/spot/instance-action") in metadata.requests


@pytest.mark.parametrize("metadata", ["aws"], indirect=True)
async def test_aws_rebalance_recommendation_is_a_notice(metadata):
    notice = await quiet_then(AWSWatcher(metadata.url, interval=0.05), metadata.rebalance)
    assert notice.kind == "rebalance" and "rebalance" in notice.detail


@pytest.mark.parametrize("metadata", ["aws"], indirect=True)
async def test_aws_token_refused_is_renewed(metadata):
    watcher = AWSWatcher(metadata.url, interval=0.05)
    assert await watcher.check() is None
    metadata.tokens.clear()  # the token expired on the instance's side
    assert await watcher._guarded(watcher.check) is None  # 401: dropped
    metadata.notice()
    assert (await asyncio.wait_for(watcher.wait(), 10)).kind == "interruption"
    assert len([r for r in metadata.requests if r[0] == "PUT"]) == 2


@pytest.mark.parametrize("metadata", ["gcp"], indirect=True)
async def test_gcp_preempted_seen_through_wait_for_change(metadata):
    # a poll interval far longer than the test: only a held-open request can see it in time
    notice = await quiet_then(GCPWatcher(metadata.url, interval=60), lambda: metadata.notice())
    assert (notice.cloud, notice.kind) == ("gcp", "preempted")
    assert notice.detail == "instance/preempted = TRUE"
    held = [p for m, p in metadata.requests if "wait_for_change=true" in p and "last_etag=" in p]
    assert any(p.startswith("/computeMetadata/v1/instance/preempted?") for p in held)


@pytest.mark.parametrize("metadata", ["gcp"], indirect=True)
async def test_gcp_terminating_maintenance_event_is_a_notice_a_migration_is_not(metadata):
    watcher = GCPWatcher(metadata.url, interval=60)
    task = asyncio.ensure_future(watcher.wait())
    await asyncio.sleep(0.3)
    metadata.maintenance("MIGRATE_ON_HOST_MAINTENANCE")  # live migration: the VM stays
    await asyncio.sleep(0.5)
    assert not task.done()
    metadata.maintenance("TERMINATE_ON_HOST_MAINTENANCE")
    notice = await asyncio.wait_for(task, 10)
    assert notice.kind == "maintenance" and notice.detail.endswith("TERMINATE_ON_HOST_MAINTENANCE")


@pytest.mark.parametrize("metadata", ["gcp"], indirect=True)
async def test_gcp_already_preempted_is_seen_at_once(metadata):
    metadata.notice()
    notice = await asyncio.wait_for(GCPWatcher(metadata.url, interval=60).wait(), 10)
    assert notice.kind == "preempted"


@pytest.mark.parametrize("metadata", ["oci"], indirect=True)
async def test_oci_lifecycle_state_leaving_running_is_a_notice(metadata):
    notice = await quiet_then(OCIWatcher(metadata.url, interval=0.05), metadata.notice)
    assert (notice.cloud, notice.kind, notice.detail) == ("oci", "lifecycle", "instance state Terminating")
    assert ("GET", "/opc/v2/instance/") in metadata.requests


@pytest.mark.parametrize("metadata", ["aws", "gcp", "oci"], indirect=True)
async def test_an_endpoint_that_does_not_answer_is_retried(metadata):
    watcher = watcher_for(metadata.cloud, metadata.url, interval=0.05)
    metadata.down = True
    task = asyncio.ensure_future(watcher.wait())
    await asyncio.sleep(0.4)
    assert not task.done()
    metadata.down = False
    metadata.notice()
    with metadata.changed:
        metadata.changed.notify_all()
    assert (await asyncio.wait_for(task, 10)).cloud == metadata.cloud


def test_no_watcher_for_a_provider_without_spot_notices():
    assert watcher_for("local") is None and watcher_for("kubernetes") is None
