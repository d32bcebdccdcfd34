"""The lease guardian (``segue.agent.guardian``) with the agents that start and stop it: it
kills a VM whose agent is gone before the VM's lease expires, leaves a renewed one alone,
survives an agent restart (one per VM), follows the VM through a migration's handover, and
leaves no process behind. The first two run a real QEMU (TCG, no guest: SeaBIOS idles), the
others the fake one (``fake_qemu.py``)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import time
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from test_agent_migration import (
    FAST,
    HANDOVER,
    SLOW,
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
from test_agent_ownership import lease_of, until

from segue.agent.guardian import LOG, RECORD, fence_after
from segue.agent.guardians import GUARDIAN_FILE, RunningGuardian, find_guardian
from segue.agent.leases import LEASE_DIR, Leases
from segue.api.qemu import MigrationStatus
from segue.api.vm import VMSpecBody
from segue.domain.errors import Unavailable
from segue.domain.vm import VMSpec, VMState
from segue.qemu import process

if TYPE_CHECKING:
    from conftest import Lab

    from segue.agent.facts import QemuCapabilities

REAL_QEMU = shutil.which("qemu-system-x86_64")


def real_qemu_pids(marker: str) -> list[int]:
    """Pids of live real QEMUs whose command line mentions ``marker``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0") if proc.name.isdigit() else []
        except OSError:
            continue
        if args and args[0].endswith(b"qemu-system-x86_64") and marker.encode() in b" ".join(
                args) and process.pid_alive(int(proc.name)):
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def real_qemu(lab: Lab) -> Iterator[str]:
    """The installed QEMU binary; every real QEMU of the lab is killed afterwards."""
    if REAL_QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    yield REAL_QEMU
    for pid in real_qemu_pids(str(lab.root)):
        os.kill(pid, signal.SIGKILL)


def real_spec(lab: Lab) -> VMSpecBody:
    """A small real guest: no kernel, an empty disk (SeaBIOS finds nothing to boot and
    idles)."""
    (lab.datastore / "web1").mkdir(exist_ok=True)
    (lab.datastore / "web1" / "disk0.raw").write_bytes(b"\0" * (1 << 20))
    return spec_of(lab, "web1", kernel=None, initrd=None, cmdline="", memory_mib=32,
                   disks=[{"datastore": "shared", "path": "web1/disk0.raw", "format": "raw"}])


def runtime(lab: Lab, host: str = "host1", name: str = "web1") -> Path:
    return lab.root / host / "vms" / name


def guardian_of(lab: Lab, uuid: str, host: str = "host1") -> RunningGuardian | None:
    return find_guardian(runtime(lab, host), uuid)


async def until_pids(lab: Lab, pids: list[int], timeout: float = 5.0) -> None:
    """Until the lab's guardian processes are exactly ``pids``."""
    deadline = time.monotonic() + timeout
    while (found := lab.guardian_pids()) != pids:
        assert time.monotonic() < deadline, f"guardians {found}, not {pids}"
        await asyncio.sleep(0.02)


async def gone_at(pid: int, timeout: float) -> float:
    """Wait for ``pid`` to exit; the time (``time.time()``) it was first seen gone."""
    deadline = time.monotonic() + timeout
    while process.pid_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still runs after {timeout} s"
        await asyncio.sleep(0.01)
    return time.time()


async def guarded(lab: Lab, uuid: str, host: str = "host1", timeout: float = 5.0
                  ) -> RunningGuardian:
    """The VM's guardian, once one runs (the keeper starts some a renewal later)."""
    deadline = time.monotonic() + timeout
    while (found := guardian_of(lab, uuid, host)) is None:
        assert time.monotonic() < deadline, f"no guardian of {uuid} on {host}"
        await asyncio.sleep(0.02)
    return found


# ---- a real QEMU ----

async def test_a_vm_whose_agent_died_is_killed_before_its_lease_expires(
        lab: Lab, caps: QemuCapabilities, real_qemu: str) -> None:
    duration, renew = 6.0, 1.0  # the guardian kills 1 s before the expiry, the agent at 4 s
    config = {"qemu_binary": real_qemu, "lease_duration_s": duration, "lease_renew_s": renew}
    async with agent_on(lab, caps, "host1", **config) as agent:
        info = await agent.define_vm(real_spec(lab), start=True)
        assert info.state is VMState.RUNNING and info.pid is not None
        guardian = guardian_of(lab, info.uuid)
        assert guardian is not None and guardian.qemu_pid == info.pid
        assert guardian.generation == info.generation == 1
    # the agent is gone (its app shut down, as a crash would leave things): nothing renews
    # the lease any more; the QEMU and its guardian run on, each in its own session
    expires = float(lease_of(lab, info.uuid)["expires_at"])  # from its last renewal
    assert process.is_qemu_of(info.pid, info.uuid)
    killed = await gone_at(info.pid, timeout=duration + 5)
    assert killed < expires, f"killed {killed - expires:.2f} s after the lease expired"
    assert killed > expires - duration + fence_after(duration, renew), "before the agent would"
    record = json.loads((runtime(lab) / RECORD).read_text())
    assert record["at"] < expires and "not renewed" in record["reason"], record
    assert record["generation"] == 1 and record["qemu_pid"] == info.pid
    await until_pids(lab, [])  # it exits after its kill
    assert "killed QEMU pid" in (runtime(lab) / LOG).read_text()
    # the restarted agent says what happened, not a mystery crash
    async with agent_on(lab, caps, "host1", **config) as agent:
        back = await agent.get_vm("web1")
        assert back.state is VMState.STOPPED
        assert "fenced by its lease guardian" in (back.last_exit or ""), back.last_exit
        assert "not renewed" in (back.last_exit or "")
        restarted = await agent.start_vm("web1")  # its lease is this host's: it may run
        assert restarted.state is VMState.RUNNING and restarted.generation == 2
        assert (await agent.get_vm("web1")).last_exit is None
        await agent.destroy_vm("web1")
    assert lab.guardian_pids() == [] and real_qemu_pids(str(lab.root)) == []


async def test_a_vm_whose_lease_is_renewed_is_left_alone(
        lab: Lab, caps: QemuCapabilities, real_qemu: str) -> None:
    async with agent_on(lab, caps, "host1", qemu_binary=real_qemu) as agent:  # 3 s leases
        info = await agent.define_vm(real_spec(lab), start=True)
        assert info.pid is not None
        guardian = guardian_of(lab, info.uuid)
        assert guardian is not None
        for _ in range(3 * 3):  # three lease periods
            await asyncio.sleep(1.0)
            assert process.is_qemu_of(info.pid, info.uuid)
            assert guardian_of(lab, info.uuid) == guardian
        assert (await agent.get_vm("web1")).state is VMState.RUNNING
        assert not (runtime(lab) / RECORD).exists()
        assert "killed" not in (runtime(lab) / LOG).read_text()
        await agent.stop_vm("web1", force=True)  # SeaBIOS ignores ACPI
        assert lab.guardian_pids() == [] and real_qemu_pids(str(lab.root)) == []


# ---- the guardian alone (fake QEMU) ----

def guardian_argv(lab: Lab, rt: Path, spec: VMSpec, pid: int, generation: int) -> list[str]:
    return [sys.executable, "-I", str(GUARDIAN_FILE), "--name", spec.name, "--uuid", spec.uuid,
            "--host", "host1", "--generation", str(generation), "--qemu-pid", str(pid),
            "--lease-file", str(lab.datastore / LEASE_DIR / f"vm-{spec.uuid}.json"),
            "--runtime-dir", str(rt), "--duration", "3.0", "--renew", "0.2"]


async def launch(argv: list[str], log: Path) -> int:
    """Run a guardian's launcher as the agent does (output to the log); its exit status."""
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=out,
                                                    start_new_session=True)
        return await asyncio.wait_for(proc.wait(), 10)


@pytest.mark.parametrize("damage", ["torn", "missing"])
async def test_a_lease_file_that_cannot_be_read_counts_as_its_last_record(
        lab: Lab, damage: str) -> None:
    """No agent: the test renews the lease itself, then the file is torn (or gone): the
    guardian kills the QEMU at the expiry it last read, before it, not at once."""
    rt = lab.root / "rt"
    rt.mkdir()
    spec = VMSpec(name="web1", datastore="shared", uuid=str(uuidlib.uuid4()))
    leases = Leases("host1", {"shared": lab.datastore}, 3.0)
    generation = leases.acquire(spec)
    pid = await process.launch_daemon(
        [str(lab.qemu_binary), "-pidfile", str(rt / "qemu.pid"), "-uuid",
         spec.uuid, "-qmp", f"unix:{rt / 'qmp.sock'},server=on,wait=off"],
        rt / "qemu.log", rt / "qemu.pid", rt / "qmp.sock")
    argv = guardian_argv(lab, rt, spec, pid, generation)
    assert await launch(argv, rt / LOG) == 0  # guarding once it returns
    assert await launch(argv, rt / LOG) == 1  # one per VM
    assert "guarded already" in (rt / LOG).read_text()
    elsewhere = lab.root / "rt2"  # nor a pid that is not the VM's QEMU
    elsewhere.mkdir()
    not_qemu = guardian_argv(lab, elsewhere, spec, os.getpid(), generation)
    assert await launch(not_qemu, elsewhere / LOG) == 1
    assert f"pid {os.getpid()} is not a running QEMU" in (elsewhere / LOG).read_text()
    for _ in range(5):  # renewed: left alone
        leases.renew(spec, generation)
        await asyncio.sleep(0.2)
    assert process.pid_alive(pid)
    leases.renew(spec, generation)
    expires = time.time() + 3.0
    lease_file = lab.datastore / LEASE_DIR / f"vm-{spec.uuid}.json"
    if damage == "torn":
        lease_file.write_text('{"host": "host1", "generation": ')
    else:
        lease_file.unlink()
    killed = await gone_at(pid, timeout=5)
    assert expires - 1.0 < killed < expires
    await until_pids(lab, [])
    assert "unreadable" in (rt / LOG).read_text()


# ---- the agent's side (fake QEMU) ----

async def test_stop_and_destroy_leave_no_guardian(lab: Lab, caps: QemuCapabilities) -> None:
    async with agent_on(lab, caps, "host1") as agent:
        info = await running_vm(agent, lab)
        first = guardian_of(lab, info.uuid)
        assert first is not None and lab.guardian_pids() == [first.pid]
        stopped = await agent.stop_vm("web1")  # ACPI: the fake guest shuts down
        assert stopped.state is VMState.STOPPED
        assert lab.guardian_pids() == [] and lab.qemu_pids() == []
        assert "fenced" not in (stopped.last_exit or "")
        again = await agent.start_vm("web1")
        second = guardian_of(lab, info.uuid)
        assert second is not None and second.qemu_pid == again.pid
        assert second.generation == again.generation == 2
        await agent.destroy_vm("web1")
        assert lab.guardian_pids() == [] and lab.qemu_pids() == []
        assert not runtime(lab).exists()


async def test_a_restarted_agent_keeps_the_guardian_it_finds(
        lab: Lab, caps: QemuCapabilities) -> None:
    async with agent_on(lab, caps, "host1") as agent:
        info = await running_vm(agent, lab)
        before = guardian_of(lab, info.uuid)
    async with agent_on(lab, caps, "host1") as agent:
        adopted = await agent.get_vm("web1")
        assert adopted.adopted and adopted.state is VMState.RUNNING
        await asyncio.sleep(1.0)  # keeper rounds: nothing replaced, nothing added
        assert guardian_of(lab, info.uuid) == before
        assert before is not None and lab.guardian_pids() == [before.pid]
        assert process.pid_alive(info.pid or 0)
        # a guardian that dies is replaced by the keeper
        os.kill(before.pid, signal.SIGKILL)
        await gone_at(before.pid, timeout=5)  # not yet reaped, it still counts for a moment
        replaced = await guarded(lab, info.uuid)
        assert replaced.pid != before.pid and replaced.qemu_pid == info.pid
        await until_pids(lab, [replaced.pid])  # its launcher exits once it guards


async def test_a_vm_whose_lease_another_host_claimed_is_killed_by_its_guardian(
        lab: Lab, caps: QemuCapabilities) -> None:
    async with agent_on(lab, caps, "host1") as agent:
        info = await running_vm(agent, lab)
        later = Leases("host9", {"shared": lab.datastore}, 3.0, lambda: time.time() + 100)
        assert later.acquire(info.spec.to_domain()) == 2
        await gone_at(info.pid or 0, timeout=3)
        stopped = await until(agent, "web1", lambda i: i.state is VMState.STOPPED)
        assert "fenced by its lease guardian" in (stopped.last_exit or "")
        assert "host9's at generation 2" in (stopped.last_exit or ""), stopped.last_exit
        assert lease_of(lab, info.uuid)["host"] == "host9"
        assert lab.guardian_pids() == []


# ---- a migration's handover ----

async def test_the_guardian_follows_the_vm_through_a_migration(
        lab: Lab, caps: QemuCapabilities) -> None:
    async with two_agents(lab, caps) as (src, dst):
        info = await running_vm(src, lab)
        assert guardian_of(lab, info.uuid) is not None
        # cancelled: the source's guardian stops at the handover and is back after it
        incoming = await prepare(dst, info.spec)
        await src.start_migration("web1", incoming.uri, {}, SLOW, **HANDOVER)
        assert guardian_of(lab, info.uuid) is None
        assert guardian_of(lab, info.uuid, "host2") is None  # not taken over
        await asyncio.sleep(0.5)  # keeper rounds leave a migrating source alone
        assert guardian_of(lab, info.uuid) is None
        await src.cancel_migration("web1")
        back = guardian_of(lab, info.uuid)
        assert back is not None and back.generation == 1 and back.qemu_pid == info.pid
        await no_content(dst, "/vms/web1/incoming/abort")
        # completed: the destination's guardian starts as the guest runs there
        done = await migrate_to_completion(src, dst, info)
        assert done.state is VMState.POSTMIGRATE and guardian_of(lab, info.uuid) is None
        arrived = await wait_for(dst, "web1", state_is(VMState.RUNNING))
        theirs = await guarded(lab, info.uuid, "host2")  # right after the guest resumed
        assert theirs.generation == 2
        assert theirs.qemu_pid == (await dst.get_vm("web1")).pid and arrived.role == "incoming"
        await asyncio.sleep(0.5)  # the postmigrate source is no keeper's business
        assert guardian_of(lab, info.uuid) is None
        await dst.claim("web1")
        await no_content(src, "/vms/web1/release")
        assert guardian_of(lab, info.uuid, "host2") == theirs
        assert lab.guardian_pids() == [theirs.pid]


async def test_a_migration_that_fails_on_its_own_gets_its_guardian_back(
        lab: Lab, caps: QemuCapabilities) -> None:
    """No cancel, no resume: the source's QEMU fails the migration (nobody listens there)
    and runs on; the keeper guards it again."""
    async with agent_on(lab, caps, "host1") as src:
        info = await running_vm(src, lab)
        before = guardian_of(lab, info.uuid)
        await src.start_migration("web1", "tcp:127.0.0.1:1", {}, FAST, **HANDOVER)
        failed = await wait_for(src, "web1", status_is(MigrationStatus.FAILED))
        assert failed.state is VMState.RUNNING and failed.role == "owner"
        back = await guarded(lab, info.uuid)  # the keeper's next round
        assert before is not None and back.pid != before.pid
        assert back.generation == 1 and back.qemu_pid == info.pid
        await until_pids(lab, [back.pid])


async def test_a_migration_that_does_not_start_keeps_the_guardian(
        lab: Lab, caps: QemuCapabilities) -> None:
    async with agent_on(lab, caps, "host1") as src:
        info = await running_vm(src, lab)
        before = guardian_of(lab, info.uuid)
        await refused(src.start_migration("web1", "tcp:127.0.0.1:1", {"no-such-thing": True},
                                          FAST, **HANDOVER), Unavailable, "QMP_COMMAND_FAILED")
        after = guardian_of(lab, info.uuid)
        assert before is not None and after is not None and after.generation == 1
        assert after.pid != before.pid  # stopped at the handover, back when QEMU refused
        await src.destroy_vm("web1")
    assert lab.guardian_pids() == []
