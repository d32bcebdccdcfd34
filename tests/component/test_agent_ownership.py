"""One owner per VM, at the agents (fake QEMU): leases on the shared datastore decide where a
VM may run, whoever calls the agent (``segue.agent.leases``)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from test_agent_migration import (
    FAST,
    HANDOVER,
    SLOW,
    Agent,
    agent_on,
    migrate_to_completion,
    no_content,
    prepare,
    refused,
    running_vm,
    spec_of,
    state_is,
    status_is,
    two_agents,
    wait_for,
)

from segue.agent.guardians import Guardians
from segue.agent.leases import LEASE_DIR, Leases
from segue.api.qemu import MigrationStatus
from segue.api.vm import VMInfo
from segue.domain.errors import Conflict, NotFound, Unavailable
from segue.domain.vm import VMState

if TYPE_CHECKING:
    from conftest import Lab

    from segue.agent.facts import QemuCapabilities


async def until(agent: Agent, name: str, predicate: Callable[[VMInfo], bool],
                timeout: float = 10.0) -> VMInfo:
    deadline = time.monotonic() + timeout
    while True:
        info = await agent.get_vm(name)
        if predicate(info):
            return info
        assert time.monotonic() < deadline, f"not reached in time: {info}"
        await asyncio.sleep(0.05)


def lease_of(lab: Lab, uuid: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(
        (lab.datastore / LEASE_DIR / f"vm-{uuid}.json").read_text())
    return data


def held_lease(lab: Lab, uuid: str) -> dict[str, object]:
    """The VM's lease without its expiry (which every renewal moves)."""
    lease = lease_of(lab, uuid)
    del lease["expires_at"]
    return lease


async def test_a_moved_vm_cannot_start_on_its_old_host(lab: Lab, caps: QemuCapabilities
                                                        ) -> None:
    async with two_agents(lab, caps) as (src, dst):
        info = await running_vm(src, lab)
        assert info.generation == 1
        await migrate_to_completion(src, dst, info)
        await wait_for(dst, "web1", state_is(VMState.RUNNING))
        await dst.claim("web1")
        # the old host keeps its definition (no release) and its QEMU dies
        await src.stop_vm("web1", force=True)
        err = await refused(src.start_vm("web1"), Conflict, "VM_LOCKED")
        assert "host2" in err.message
        assert (await dst.get_vm("web1")).state is VMState.RUNNING
        assert lease_of(lab, info.uuid)["host"] == "host2"
        # stopped on host2 too: a start with a stale generation is refused, a fresh one runs
        await dst.stop_vm("web1", force=True)
        await refused(src.start_vm("web1", generation=1), Conflict, "VM_NOT_OWNED")
        started = await src.start_vm("web1", generation=2)
        assert started.state is VMState.RUNNING and started.generation == 3


async def test_a_second_vm_on_the_same_disk_is_refused(lab: Lab, caps: QemuCapabilities
                                                        ) -> None:
    (lab.datastore / "web1").mkdir()
    (lab.datastore / "web1" / "disk0.raw").write_bytes(b"\0" * 4096)
    disk = [{"datastore": "shared", "path": "web1/disk0.raw", "format": "raw"}]
    async with two_agents(lab, caps) as (src, dst):
        await src.define_vm(spec_of(lab, "web1", disks=disk), start=True)
        err = await refused(dst.define_vm(spec_of(lab, "evil", disks=disk)), Conflict,
                            "DISK_IN_USE")
        assert "web1" in err.message
        with_ro = [{**disk[0], "readonly": True}]  # read-only: it may be shared
        assert (await dst.define_vm(spec_of(lab, "reader", disks=with_ro))).name == "reader"


async def test_without_a_guardian_a_vm_whose_lease_another_host_claimed_is_paused(
        lab: Lab, caps: QemuCapabilities, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's own fencing (its guardian, where one runs, kills the QEMU instead:
    ``test_agent_guardian``)."""

    async def unguarded(*_: object, **__: object) -> None:
        return None

    monkeypatch.setattr(Guardians, "guard", unguarded)
    monkeypatch.setattr(Guardians, "keep", unguarded)
    async with agent_on(lab, caps, "host1") as src:
        info = await running_vm(src, lab)
        # a host whose clock says the lease expired claims it (as after a long outage)
        later = Leases("host9", {"shared": lab.datastore}, 3.0, lambda: time.time() + 100)
        assert later.acquire(info.spec.to_domain()) == 2
        fenced = await until(src, "web1", lambda i: i.fenced is not None)
        assert fenced.state is VMState.PAUSED and fenced.generation is None
        assert "host9" in (fenced.fenced or "")
        await refused(src.resume_vm("web1"), Conflict, "VM_FENCED")
        await refused(src.start_migration("web1", "tcp:127.0.0.1:1", {}, {},
                                          migration_id="m-1", destination="host2"),
                      Conflict, "VM_NOT_RUNNING")
        assert lease_of(lab, info.uuid)["host"] == "host9"


async def test_a_vm_whose_lease_cannot_be_renewed_stops_before_it_expires(
        lab: Lab, caps: QemuCapabilities) -> None:
    async with agent_on(lab, caps, "host1") as src:
        info = await running_vm(src, lab)
        leases = lab.datastore / LEASE_DIR
        expires = float(lease_of(lab, info.uuid)["expires_at"])  # after the last renewal
        shutil.rmtree(leases)
        leases.write_text("the storage is gone")  # every renewal fails from now on
        stopped = await until(src, "web1", lambda i: i.state is VMState.STOPPED)
        # stopped before the lease it last renewed expired (another host may claim it then);
        # one renewal may have landed after ``expires`` was read: its 0.2 s
        assert time.time() < expires + 0.2, (time.time(), expires)
        # ... and not at the first failed renewal: the agent waited fence_after (2.4 s here)
        assert time.time() > expires - 3.0 + 2.0
        assert "fenced" in (stopped.last_exit or "") and info.pid is not None


async def test_a_start_that_fails_leaves_no_lease(lab: Lab, caps: QemuCapabilities,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU fails to launch (before it has a pid): the lease the start claimed is given
    back at once, so another host may start the VM without waiting for it to expire."""
    async with agent_on(lab, caps, "host1") as src:
        info = await src.define_vm(spec_of(lab, "web1"))
        monkeypatch.setenv("FAKE_QEMU_FAIL_START", "1")
        await refused(src.start_vm("web1"), Unavailable, "QEMU_LAUNCH_FAILED")
        assert lease_of(lab, info.uuid)["released"] is True
        other = Leases("host2", {"shared": lab.datastore}, 3.0)
        assert other.acquire(info.spec.to_domain()) == 2  # no VM_LOCKED: nothing runs


# ---- the fencing token: a state-changing call names the generation it expects ----

async def test_stop_and_destroy_need_the_generation_this_host_holds(
        lab: Lab, caps: QemuCapabilities) -> None:
    async with agent_on(lab, caps, "host1") as src:
        info = await running_vm(src, lab)
        other = await running_vm(src, lab, "web2")
        lease = held_lease(lab, info.uuid)
        assert info.generation == lease["generation"] == 1
        resp = await src.raw.post("/vms/web1/stop", params={"force": "true", "generation": 2})
        assert resp.status_code == 409, resp.text
        assert resp.json()["error"]["code"] == "VM_NOT_OWNED"
        err = await refused(src.stop_vm("web1", force=True, generation=0), Conflict,
                            "VM_NOT_OWNED")
        assert "generation 0" in err.message and "generation 1" in err.message
        assert err.details == {"expected": 0, "held": 1}
        await refused(src.destroy_vm("web1", generation=2), Conflict, "VM_NOT_OWNED")
        # nothing changed: the same QEMU runs, at the same lease
        now = await src.get_vm("web1")
        assert (now.state, now.pid, now.generation) == (VMState.RUNNING, info.pid, 1)
        assert held_lease(lab, info.uuid) == lease

        stopped = await src.stop_vm("web1", force=True, generation=1)
        assert stopped.state is VMState.STOPPED and lease_of(lab, info.uuid)["released"]
        # a stopped VM is held at no generation: a destroy naming one is refused
        err = await refused(src.destroy_vm("web1", generation=1), Conflict, "VM_NOT_OWNED")
        assert "no lease" in err.message
        assert (await src.get_vm("web1")).state is VMState.STOPPED
        await src.destroy_vm("web1")
        # a running VM is destroyed at the generation this host holds it at
        await src.destroy_vm("web2", generation=other.generation)
        await refused(src.get_vm("web2"), NotFound, "VM_NOT_FOUND")
        assert lab.qemu_pids() == []


async def test_migrate_and_cancel_need_the_generation_this_host_holds(
        lab: Lab, caps: QemuCapabilities) -> None:
    async with two_agents(lab, caps) as (src, dst):
        info = await running_vm(src, lab)
        incoming = await prepare(dst, info.spec)
        lease = held_lease(lab, info.uuid)
        assert lease["handover_to"] is None
        resp = await src.raw.post("/vms/web1/migrate", params={"generation": 2}, json={
            "uri": incoming.uri, "capabilities": {}, "parameters": SLOW, **HANDOVER})
        assert resp.status_code == 409, resp.text
        assert resp.json()["error"]["code"] == "VM_NOT_OWNED"
        await refused(src.start_migration("web1", incoming.uri, {}, SLOW, **HANDOVER,
                                          generation=0), Conflict, "VM_NOT_OWNED")
        # nothing sent, nothing handed over
        status = await src.migration_status("web1")
        assert status.migration.status is MigrationStatus.NONE
        assert status.state is VMState.RUNNING and status.role == "owner"
        assert held_lease(lab, info.uuid) == lease

        await src.start_migration("web1", incoming.uri, {}, SLOW, **HANDOVER, generation=1)
        await wait_for(src, "web1", status_is(MigrationStatus.ACTIVE))
        assert lease_of(lab, info.uuid)["handover_to"] == "host2"
        await refused(src.cancel_migration("web1", generation=2), Conflict, "VM_NOT_OWNED")
        still = await src.migration_status("web1")
        assert still.migration.status is MigrationStatus.ACTIVE, still
        assert lease_of(lab, info.uuid)["handover_to"] == "host2"

        cancelled = await src.cancel_migration("web1", generation=1)
        assert cancelled.migration.status is MigrationStatus.CANCELLED, cancelled
        assert cancelled.state is VMState.RUNNING
        assert held_lease(lab, info.uuid) == lease  # the handover withdrawn, generation kept


async def test_resume_needs_the_generation_this_host_holds(
        lab: Lab, caps: QemuCapabilities) -> None:
    """The copy completed but the destination could not take the VM over (it was prepared
    for another migration than the handover names): the source keeps the lease, paused,
    and only a resume at the generation it holds runs it again."""
    async with two_agents(lab, caps) as (src, dst):
        info = await running_vm(src, lab)
        incoming = await prepare(dst, info.spec, migration_id="m-other")
        await src.start_migration("web1", incoming.uri, {}, FAST, **HANDOVER, generation=1)
        await wait_for(src, "web1", status_is(MigrationStatus.COMPLETED))
        await wait_for(src, "web1", state_is(VMState.POSTMIGRATE))
        lease = held_lease(lab, info.uuid)
        assert (lease["host"], lease["generation"], lease["handover_migration"]) == (
            "host1", 1, "m-1")
        arrived = await dst.get_vm("web1")
        assert arrived.state is VMState.PAUSED and arrived.generation is None

        await refused(src.resume_vm("web1", generation=2), Conflict, "VM_NOT_OWNED")
        assert (await src.get_vm("web1")).state is VMState.POSTMIGRATE
        assert held_lease(lab, info.uuid) == lease

        await no_content(dst, "/vms/web1/incoming/abort")
        resumed = await src.resume_vm("web1", generation=1)
        assert resumed.state is VMState.RUNNING and resumed.generation == 1
        assert lease_of(lab, info.uuid)["handover_to"] is None
