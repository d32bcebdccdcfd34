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
    Agent,
    agent_on,
    migrate_to_completion,
    refused,
    running_vm,
    spec_of,
    state_is,
    two_agents,
    wait_for,
)

from segue.agent.guardians import Guardians
from segue.agent.leases import LEASE_DIR, Leases
from segue.api.vm import VMInfo
from segue.domain.errors import Conflict, Unavailable
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
