"""The agent's policy and post-copy endpoints against the fake QEMU: dirty-rate sampling,
mid-flight parameters, post-copy, a paused post-copy recovered (migrate-recover on the
destination, migrate resume on the source)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from test_agent_migration import SLOW, error_code, ok, prepare, running_vm, two_agents, wait_for

if TYPE_CHECKING:
    from conftest import AgentFactory, Lab


def status_is(*wanted: str) -> object:
    return lambda s: s["migration"].get("status") in wanted


async def test_dirty_rate_sample(lab: Lab, agent: AgentFactory) -> None:
    async with two_agents(lab, agent) as (src, _):
        await running_vm(src, lab)
        answer = await ok(src.post("/vms/web1/dirty-rate"))
        assert answer == {"dirty_rate_mibs": 4.0, "calc_time_ms": 300}
        resp = await src.post("/vms/web1/dirty-rate", params={"calc_time_ms": 10})
        assert resp.status_code == 400  # below QEMU's 50 ms
        assert resp.json()["error"]["field"] == "calc_time_ms"


async def test_dirty_rate_on_a_qemu_measuring_whole_seconds(
        lab: Lab, agent: AgentFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_OLD_DIRTY_RATE", "1")  # no calc-time-unit (QEMU < 8.2)
    async with two_agents(lab, agent) as (src, _):
        await running_vm(src, lab)
        answer = await ok(src.post("/vms/web1/dirty-rate"))
        assert answer == {"dirty_rate_mibs": 4.0, "calc_time_ms": 1000}


async def test_parameters_change_mid_flight(lab: Lab, agent: AgentFactory) -> None:
    async with two_agents(lab, agent) as (src, dst):
        info = await running_vm(src, lab)
        incoming = await prepare(dst, info["spec"])
        await ok(src.post("/vms/web1/migrate", json={"uri": incoming["uri"], "parameters": SLOW}))
        await wait_for(src, "web1", status_is("active"))
        params = await ok(src.post("/vms/web1/migration/parameters",
                                   json={"parameters": {"downtime-limit": 450}}))
        assert params["downtime-limit"] == 450
        await ok(src.post("/vms/web1/migration/cancel"))


async def test_postcopy_needs_the_capability(lab: Lab, agent: AgentFactory) -> None:
    async with two_agents(lab, agent) as (src, dst):
        info = await running_vm(src, lab)
        incoming = await prepare(dst, info["spec"])
        await ok(src.post("/vms/web1/migrate", json={"uri": incoming["uri"], "parameters": SLOW}))
        await wait_for(src, "web1", status_is("active"))
        resp = await src.post("/vms/web1/migration/postcopy")
        assert error_code(resp, 503) == "QMP_COMMAND_FAILED"
        await ok(src.post("/vms/web1/migration/cancel"))


@pytest.mark.parametrize("blocks", [False, True], ids=["answering", "main-thread-blocked"])
async def test_postcopy_paused_and_recovered(lab: Lab, agent: AgentFactory,
                                             monkeypatch: pytest.MonkeyPatch,
                                             blocks: bool) -> None:
    """``main-thread-blocked``: the destination QEMU answers no in-band command while its
    stream is down (its main thread waits for a page, as a real one does when a device
    touches guest memory not copied yet): recovery still works, with migrate-pause and
    migrate-recover sent out of band and the destination's state read from its events."""
    if blocks:
        monkeypatch.setenv("FAKE_QEMU_POSTCOPY_BLOCKS", "1")
    caps = {"postcopy-ram": True}
    slow = {"max-bandwidth": 16 << 20}  # 64 MiB: 4 s
    async with two_agents(lab, agent) as (src, dst):
        info = await running_vm(src, lab)
        incoming = await prepare(dst, info["spec"], capabilities=caps)
        await ok(src.post("/vms/web1/migrate", json={"uri": incoming["uri"],
                                                     "capabilities": caps, "parameters": slow}))
        await wait_for(src, "web1", status_is("active"))
        await ok(src.post("/vms/web1/migration/postcopy"))
        await wait_for(src, "web1", status_is("postcopy-active"))
        arrived = await wait_for(dst, "web1", lambda s: s["state"] == "running")
        assert arrived["migration"]["status"] == "postcopy-active"

        await ok(src.post("/vms/web1/migration/pause"))
        await wait_for(src, "web1", status_is("postcopy-paused"))
        paused = await wait_for(dst, "web1", status_is("postcopy-paused"), timeout=30)
        assert paused["migration"].get("from_event", False) is blocks
        resp = await src.post("/migrations/incoming/web1/recover")
        assert error_code(resp, 409) == "VM_NOT_INCOMING"
        recovered = await ok(dst.post("/migrations/incoming/web1/recover"))
        assert recovered["uri"].startswith("tcp:127.0.0.1:")
        await ok(src.post("/vms/web1/migration/resume", json={"uri": recovered["uri"]}))
        done = await wait_for(src, "web1", status_is("completed"), timeout=20)
        assert done["state"] == "postmigrate"
        assert (await wait_for(dst, "web1", status_is("completed")))["state"] == "running"
