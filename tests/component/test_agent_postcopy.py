"""The agent's policy and post-copy endpoints against the fake QEMU: dirty-rate sampling,
mid-flight parameters, post-copy, a paused post-copy recovered (migrate-recover on the
destination, migrate resume on the source)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from test_agent_migration import (
    HANDOVER,
    SLOW,
    prepare,
    refused,
    running_vm,
    state_is,
    status_is,
    two_agents,
    wait_for,
)

from segue.api.agent import DirtyRateAnswer
from segue.api.qemu import MigrationStatus
from segue.domain.errors import Conflict, Unavailable
from segue.domain.vm import VMState

if TYPE_CHECKING:
    from conftest import Lab

    from segue.agent.facts import QemuCapabilities

ACTIVE = MigrationStatus.ACTIVE
POSTCOPY_ACTIVE = MigrationStatus.POSTCOPY_ACTIVE
POSTCOPY_PAUSED = MigrationStatus.POSTCOPY_PAUSED
COMPLETED = MigrationStatus.COMPLETED


async def test_dirty_rate_sample(lab: Lab, caps: QemuCapabilities) -> None:
    async with two_agents(lab, caps) as (src, _):
        await running_vm(src, lab)
        answer = await src.dirty_rate("web1")
        assert answer == DirtyRateAnswer(dirty_rate_mibs=4.0, calc_time_ms=300)
        resp = await src.raw.post("/vms/web1/dirty-rate", params={"calc_time_ms": 10})
        assert resp.status_code == 400  # below QEMU's 50 ms
        assert resp.json()["error"]["field"] == "calc_time_ms"


async def test_dirty_rate_on_a_qemu_measuring_whole_seconds(
        lab: Lab, caps: QemuCapabilities, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_OLD_DIRTY_RATE", "1")  # no calc-time-unit (QEMU < 8.2)
    async with two_agents(lab, caps) as (src, _):
        await running_vm(src, lab)
        answer = await src.dirty_rate("web1")
        assert answer == DirtyRateAnswer(dirty_rate_mibs=4.0, calc_time_ms=1000)


async def test_parameters_change_mid_flight(lab: Lab, caps: QemuCapabilities) -> None:
    async with two_agents(lab, caps) as (src, dst):
        info = await running_vm(src, lab)
        incoming = await prepare(dst, info.spec)
        await src.start_migration("web1", incoming.uri, {}, SLOW, **HANDOVER)
        await wait_for(src, "web1", status_is(ACTIVE))
        params = await src.set_migration_parameters("web1", {"downtime-limit": 450})
        assert params["downtime-limit"] == 450
        await src.cancel_migration("web1")


async def test_postcopy_needs_the_capability(lab: Lab, caps: QemuCapabilities) -> None:
    async with two_agents(lab, caps) as (src, dst):
        info = await running_vm(src, lab)
        incoming = await prepare(dst, info.spec)
        await src.start_migration("web1", incoming.uri, {}, SLOW, **HANDOVER)
        await wait_for(src, "web1", status_is(ACTIVE))
        await refused(src.start_postcopy("web1"), Unavailable, "QMP_COMMAND_FAILED")
        await src.cancel_migration("web1")


@pytest.mark.parametrize("blocks", [False, True], ids=["answering", "main-thread-blocked"])
async def test_postcopy_paused_and_recovered(lab: Lab, caps: QemuCapabilities,
                                             monkeypatch: pytest.MonkeyPatch,
                                             blocks: bool) -> None:
    """``main-thread-blocked``: the destination QEMU answers no in-band command while its
    stream is down (its main thread waits for a page, as a real one does when a device
    touches guest memory not copied yet): recovery still works, with migrate-pause and
    migrate-recover sent out of band and the destination's state read from its events."""
    if blocks:
        monkeypatch.setenv("FAKE_QEMU_POSTCOPY_BLOCKS", "1")
    postcopy = {"postcopy-ram": True}
    slow = {"max-bandwidth": 16 << 20}  # 64 MiB: 4 s
    async with two_agents(lab, caps) as (src, dst):
        info = await running_vm(src, lab)
        incoming = await prepare(dst, info.spec, capabilities=postcopy)
        await src.start_migration("web1", incoming.uri, postcopy, slow, **HANDOVER)
        await wait_for(src, "web1", status_is(ACTIVE))
        await src.start_postcopy("web1")
        await wait_for(src, "web1", status_is(POSTCOPY_ACTIVE))
        arrived = await wait_for(dst, "web1", state_is(VMState.RUNNING))
        assert arrived.migration.status is POSTCOPY_ACTIVE

        await src.pause_migration("web1")
        await wait_for(src, "web1", status_is(POSTCOPY_PAUSED))
        paused = await wait_for(dst, "web1", status_is(POSTCOPY_PAUSED), timeout=30)
        assert paused.migration.from_event is blocks
        await refused(src.recover_incoming("web1"), Conflict, "VM_NOT_INCOMING")
        recovered = await dst.recover_incoming("web1")
        assert recovered.uri.startswith("tcp:127.0.0.1:")
        await src.resume_migration("web1", recovered.uri)
        done = await wait_for(src, "web1", status_is(COMPLETED), timeout=20)
        assert done.state is VMState.POSTMIGRATE
        assert (await wait_for(dst, "web1", status_is(COMPLETED))).state is VMState.RUNNING
