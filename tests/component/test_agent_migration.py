"""The agent side of a live migration: two agents (host1, host2) on one shared datastore,
their fake QEMUs migrating over a real TCP stream on the loopback interface, each driven
through the typed agent client the controller uses (``segue.clients.agent.AgentClient``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from segue.agent.app import create_app
from segue.agent.config import AgentConfig
from segue.agent.facts import QemuCapabilities
from segue.api.agent import IncomingAnswer, MigrationView
from segue.api.qemu import MigrationStatus, QueryMigrate
from segue.api.vm import VMInfo, VMSpecBody
from segue.clients.agent import AgentClient
from segue.domain.errors import Conflict, InvalidRequest, NotFound, SegueError, Unavailable
from segue.domain.vm import VMState
from segue.qemu import process

if TYPE_CHECKING:  # fixtures come from conftest.py; only their types are imported
    from conftest import Lab

SLOW = {"max-bandwidth": 1 << 20}  # 64 MiB of guest RAM at 1 MiB/s: a minute, unless cancelled
FAST = {"max-bandwidth": 128 << 20}  # QEMU's default: 0.5 s
HANDOVER = {"migration_id": "m-1", "destination": "host2"}  # prepare()'s migration, to host2


def host_config(lab: Lab, host: str, **changes: object) -> AgentConfig:
    fields: dict[str, object] = {"host": host, "state_dir": lab.root / host,
                                 "migration_interface": "lo"}
    fields.update(changes)
    return lab.config(**fields)


class Agent(AgentClient):
    """The typed client of one agent app; ``raw`` for what the typed client cannot send."""

    raw: httpx.AsyncClient


@asynccontextmanager
async def agent_on(lab: Lab, caps: QemuCapabilities, host: str, **changes: object
                   ) -> AsyncIterator[Agent]:
    """One agent app (its lifespan) for ``host``; leaving is an agent shutdown (QEMU
    processes keep running, as in production)."""
    app = create_app(host_config(lab, host, **changes), caps)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with Agent("http://agent", transport=transport, timeout=60) as client, \
                httpx.AsyncClient(transport=transport, base_url="http://agent") as raw:
            client.raw = raw
            yield client


@asynccontextmanager
async def two_agents(lab: Lab, caps: QemuCapabilities) -> AsyncIterator[tuple[Agent, Agent]]:
    async with agent_on(lab, caps, "host1") as src, agent_on(lab, caps, "host2") as dst:
        yield src, dst


async def refused(call: Awaitable[object], kind: type[SegueError], code: str) -> SegueError:
    """The call fails with the agent's own error of exactly this kind and code, with a
    message and a hint (the kind is the HTTP status: invalid 400, not_found 404, conflict
    409, unavailable 503)."""
    with pytest.raises(SegueError) as exc:
        await call
    err = exc.value
    assert type(err) is kind and err.code == code, err
    assert err.message and err.hint, err
    return err


async def no_content(agent: Agent, path: str) -> None:
    """POST ``path``: it succeeds with 204 and no body."""
    resp = await agent.request("POST", path)
    assert resp.status_code == 204 and resp.content == b"", resp.text


def spec_of(lab: Lab, name: str = "web1", **changes: object) -> VMSpecBody:
    return VMSpecBody.model_validate(lab.spec(name, **changes))


async def running_vm(agent: Agent, lab: Lab, name: str = "web1") -> VMInfo:
    """Define and start a VM; its info."""
    return await agent.define_vm(spec_of(lab, name), start=True)


async def prepare(dst: Agent, spec: VMSpecBody, migration_id: str = "m-1",
                  capabilities: dict[str, bool] | None = None,
                  parameters: dict[str, int | bool | str] | None = None) -> IncomingAnswer:
    return await dst.prepare_incoming(spec, migration_id, capabilities or {}, parameters or {})


async def wait_for(agent: Agent, name: str, predicate: Callable[[MigrationView], bool],
                   timeout: float = 10.0) -> MigrationView:
    """Poll the VM's migration status until ``predicate(status)``; the status."""
    deadline = time.monotonic() + timeout
    while True:
        status = await agent.migration_status(name)
        if predicate(status):
            return status
        assert time.monotonic() < deadline, f"not reached in time: {status}"
        await asyncio.sleep(0.05)


def status_is(*wanted: MigrationStatus) -> Callable[[MigrationView], bool]:
    return lambda s: s.migration.status in wanted


def state_is(wanted: VMState) -> Callable[[MigrationView], bool]:
    return lambda s: s.state is wanted


def shared_owner(lab: Lab, name: str = "web1") -> str:
    return str(json.loads((lab.datastore / name / "vm.json").read_text())["host"])


async def migrate_to_completion(src: Agent, dst: Agent, info: VMInfo) -> MigrationView:
    """Prepare host2, migrate from host1 until QEMU says completed; host1's status.

    Parameters stay set in a QEMU across migrations (as in QEMU): bandwidth is given."""
    incoming = await prepare(dst, info.spec)
    await src.start_migration("web1", incoming.uri, {}, FAST, **HANDOVER)
    return await wait_for(src, "web1", status_is(MigrationStatus.COMPLETED))


# ---- the whole move ----

async def test_live_migration_moves_the_vm(lab: Lab, caps: QemuCapabilities) -> None:
    async with two_agents(lab, caps) as (src, dst):
        info = await running_vm(src, lab)
        assert info.role == "owner"
        incoming = await prepare(dst, info.spec, capabilities={"xbzrle": False},
                                 parameters={"downtime-limit": 300})
        assert incoming.uri.startswith("tcp:127.0.0.1:")
        assert int(incoming.uri.rsplit(":", 1)[1]) > 0  # the real port, read back
        assert incoming.state is VMState.INMIGRATE and incoming.migration_id == "m-1"
        assert incoming.announce["announce-initial"] == 1
        assert shared_owner(lab) == "host1", "prepare must not touch the datastore's vm.json"
        listed = {v.name: v for v in await dst.list_vms()}
        assert listed["web1"].role == "incoming" and listed["web1"].state is VMState.INMIGRATE
        assert listed["web1"].uuid == info.uuid
        cmdline = Path(f"/proc/{incoming.pid}/cmdline").read_bytes().split(b"\0")
        assert b"-incoming" in cmdline and b"defer" in cmdline

        started = await src.start_migration("web1", incoming.uri, {}, {}, **HANDOVER)
        assert started.migration.status in (MigrationStatus.SETUP, MigrationStatus.ACTIVE)
        during = await src.migration_status("web1")
        assert during.role == "source" and during.name == "web1"
        done = await wait_for(src, "web1", status_is(MigrationStatus.COMPLETED))
        assert done.state is VMState.POSTMIGRATE and done.role == "source"
        assert done.migration.downtime is not None and done.migration.downtime >= 1
        arrived = await wait_for(dst, "web1", state_is(VMState.RUNNING))
        assert arrived.role == "incoming"  # until claimed
        src_events = [e.event for e in await src.events("web1")]
        assert "STOP" in src_events and "MIGRATION" in src_events
        assert "RESUME" in [e.event for e in await dst.events("web1")]

        claimed = await dst.claim("web1")
        assert claimed.role == "owner" and claimed.state is VMState.RUNNING
        assert shared_owner(lab) == "host2"
        assert not (lab.root / "host2" / "vms" / "web1" / "role.json").exists()

        await no_content(src, "/vms/web1/release")
        assert info.pid is not None and not process.pid_alive(info.pid)
        await refused(src.get_vm("web1"), NotFound, "VM_NOT_FOUND")
        assert not (lab.root / "host1" / "vms" / "web1").exists()
        assert shared_owner(lab) == "host2", "release must leave the destination's vm.json"
        assert [v.name for v in await dst.list_vms()] == ["web1"]
        assert lab.qemu_pids() == [incoming.pid]


async def test_cancel_keeps_the_source_running(lab: Lab, caps: QemuCapabilities) -> None:
    async with two_agents(lab, caps) as (src, dst):
        info = await running_vm(src, lab)
        incoming = await prepare(dst, info.spec)
        assert incoming.pid is not None
        await src.start_migration("web1", incoming.uri, {}, SLOW, **HANDOVER)
        await wait_for(src, "web1", status_is(MigrationStatus.ACTIVE))
        cancelled = await src.cancel_migration("web1")
        assert cancelled.migration.status is MigrationStatus.CANCELLED, cancelled
        assert cancelled.state is VMState.RUNNING and cancelled.role == "owner"
        # the destination QEMU exits when its stream breaks off, as QEMU does
        assert await process.wait_exit(incoming.pid, 5)
        gone = await wait_for(dst, "web1", state_is(VMState.STOPPED))
        assert gone.role == "incoming"
        await no_content(dst, "/vms/web1/incoming/abort")
        await refused(dst.get_vm("web1"), NotFound, "VM_NOT_FOUND")
        assert not (lab.root / "host2" / "vms" / "web1").exists()
        assert shared_owner(lab) == "host1"
        assert lab.qemu_pids() == [info.pid]
        # and it can migrate again
        again = await migrate_to_completion(src, dst, info)
        assert again.state is VMState.POSTMIGRATE


async def test_abort_while_listening_kills_only_the_incoming_qemu(
        lab: Lab, caps: QemuCapabilities) -> None:
    async with two_agents(lab, caps) as (src, dst):
        info = await running_vm(src, lab)
        incoming = await prepare(dst, info.spec)
        await no_content(dst, "/vms/web1/incoming/abort")
        assert incoming.pid is not None and not process.pid_alive(incoming.pid)
        assert info.pid is not None and process.pid_alive(info.pid)
        assert shared_owner(lab) == "host1"
        await refused(dst.abort_incoming("web1"), NotFound, "VM_NOT_FOUND")


async def test_a_source_never_rewinds_a_vm_its_destination_ran(
        lab: Lab, caps: QemuCapabilities) -> None:
    """The destination took the lease over and ran the guest, then its QEMU died: the
    source's paused copy is older than what ran there, and its resume is refused (the VM
    is started from its disk instead)."""
    async with two_agents(lab, caps) as (src, dst):
        info = await running_vm(src, lab)
        await migrate_to_completion(src, dst, info)
        await wait_for(dst, "web1", state_is(VMState.RUNNING))
        assert (await dst.get_vm("web1")).generation == 2  # taken over: 1 + 1
        for _ in range(50):  # the source's next renewal sees the lease taken over
            if (await src.get_vm("web1")).generation is None:
                break
            await asyncio.sleep(0.1)
        assert (await src.get_vm("web1")).generation is None
        # a destination that runs guest code is never torn down
        await refused(dst.abort_incoming("web1"), Conflict, "VM_RUNNING")
        arrived = await dst.get_vm("web1")
        assert arrived.pid is not None and process.pid_alive(arrived.pid)
        os.kill(arrived.pid, signal.SIGKILL)  # the destination failed
        await wait_for(dst, "web1", state_is(VMState.STOPPED))
        await no_content(dst, "/vms/web1/incoming/abort")
        await refused(src.resume_vm("web1"), Conflict, "VM_NOT_OWNED")
        assert (await src.get_vm("web1")).state is VMState.POSTMIGRATE  # still paused


# ---- refusals ----

async def test_refusals_change_nothing(lab: Lab, caps: QemuCapabilities) -> None:
    async with two_agents(lab, caps) as (src, dst):
        info = await running_vm(src, lab)
        assert info.pid is not None
        await refused(src.abort_incoming("web1"), Conflict, "VM_NOT_INCOMING")
        assert process.pid_alive(info.pid), "abort must never kill an owned VM"
        await refused(src.release("web1"), Conflict, "VM_NOT_MIGRATED")
        await refused(src.claim("web1"), Conflict, "VM_NOT_INCOMING")
        await refused(prepare(src, info.spec, migration_id="m-x"), Conflict, "VM_EXISTS")
        await refused(src.start_migration("web1", "exec:touch /tmp/pwned", {}, {}, **HANDOVER),
                      InvalidRequest, "MIGRATION_URI_INVALID")

        incoming = await prepare(dst, info.spec)
        assert incoming.pid is not None
        await refused(dst.claim("web1"), Conflict, "VM_NOT_RUNNING")
        await refused(dst.start_vm("web1"), Conflict, "VM_INCOMING")
        await refused(dst.start_migration("web1", incoming.uri, {}, {}, **HANDOVER), Conflict,
                      "VM_INCOMING")
        await refused(prepare(dst, info.spec, migration_id="m-x"), Conflict, "VM_EXISTS")
        await src.start_migration("web1", incoming.uri, {}, SLOW, **HANDOVER)
        await refused(src.start_migration("web1", incoming.uri, {}, {}, **HANDOVER), Conflict,
                      "MIGRATION_IN_PROGRESS")
        await refused(src.release("web1"), Conflict, "VM_NOT_MIGRATED")
        await refused(src.resume_vm("web1"), Conflict, "VM_NOT_PAUSED")
        await src.cancel_migration("web1")
        assert await process.wait_exit(incoming.pid, 5)
        assert lab.qemu_pids() == [info.pid]


async def test_stopped_vm_cannot_migrate_and_unknown_names_are_404(
        lab: Lab, caps: QemuCapabilities) -> None:
    async with two_agents(lab, caps) as (src, _):
        await src.define_vm(spec_of(lab, "idle"))
        uri = "tcp:127.0.0.1:1"
        await refused(src.start_migration("idle", uri, {}, {}, **HANDOVER), Conflict,
                      "VM_NOT_RUNNING")
        status = await src.migration_status("idle")
        assert status == MigrationView(name="idle", role="owner", state=VMState.STOPPED,
                                       migration_id=None, migration=QueryMigrate())
        assert status.migration.status is MigrationStatus.NONE
        calls: list[Awaitable[object]] = [
            src.start_migration("nope", uri, {}, {}, **HANDOVER), src.migration_status("nope"),
            src.cancel_migration("nope"), src.abort_incoming("nope"), src.claim("nope"),
            src.release("nope"), src.resume_vm("nope")]
        for call in calls:
            await refused(call, NotFound, "VM_NOT_FOUND")


async def test_failed_prepare_leaves_nothing(lab: Lab, caps: QemuCapabilities,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    async with agent_on(lab, caps, "host1") as src:
        spec = (await running_vm(src, lab)).spec
    async with agent_on(lab, caps, "host2", migration_interface="sgnomig0") as dst:
        await refused(prepare(dst, spec, migration_id="m"), Unavailable,
                      "MIGRATION_NIC_UNAVAILABLE")
    async with agent_on(lab, caps, "host2") as dst:
        monkeypatch.setenv("FAKE_QEMU_FAIL_START", "1")
        await refused(prepare(dst, spec, migration_id="m"), Unavailable, "QEMU_LAUNCH_FAILED")
        await refused(dst.get_vm("web1"), NotFound, "VM_NOT_FOUND")
        no_uuid = spec.model_copy(update={"uuid": ""})
        await refused(prepare(dst, no_uuid, migration_id="m"), InvalidRequest,
                      "VM_SPEC_INVALID")
    assert not (lab.root / "host2" / "vms" / "web1").exists()
    assert len(lab.qemu_pids()) == 1 and shared_owner(lab) == "host1"


async def test_destroying_an_incoming_vm_keeps_the_owners_vm_json(
        lab: Lab, caps: QemuCapabilities) -> None:
    async with two_agents(lab, caps) as (src, dst):
        info = await running_vm(src, lab)
        incoming = await prepare(dst, info.spec)
        resp = await dst.request("DELETE", "/vms/web1")
        assert resp.status_code == 204 and resp.content == b""
        assert incoming.pid is not None and not process.pid_alive(incoming.pid)
        assert shared_owner(lab) == "host1"
        assert (await src.get_vm("web1")).state is VMState.RUNNING


# ---- agent restarts ----

async def test_restarted_agent_adopts_an_incoming_vm(lab: Lab, caps: QemuCapabilities) -> None:
    async with agent_on(lab, caps, "host1") as src:
        info = await running_vm(src, lab)
        async with agent_on(lab, caps, "host2") as dst:
            incoming = await prepare(dst, info.spec, migration_id="m-42")
        assert incoming.pid is not None
        assert process.pid_alive(incoming.pid), "an agent shutdown must not kill QEMU"
        async with agent_on(lab, caps, "host2") as dst:
            shown = await dst.get_vm("web1")
            assert shown.role == "incoming" and shown.migration_id == "m-42"
            assert shown.adopted is True and shown.state is VMState.INMIGRATE
            assert shown.pid == incoming.pid
            await src.start_migration("web1", incoming.uri, {}, {}, migration_id="m-42",
                                      destination="host2")
            await wait_for(dst, "web1", state_is(VMState.RUNNING))
            assert (await dst.claim("web1")).role == "owner"
        async with agent_on(lab, caps, "host2") as dst:
            assert (await dst.get_vm("web1")).role == "owner"


async def test_restarted_agent_resumes_a_vm_that_arrived_meanwhile(
        lab: Lab, caps: QemuCapabilities) -> None:
    async with agent_on(lab, caps, "host1") as src:
        info = await running_vm(src, lab)
        async with agent_on(lab, caps, "host2") as dst:
            incoming = await prepare(dst, info.spec)
        await src.start_migration("web1", incoming.uri, {}, FAST, **HANDOVER)
        await wait_for(src, "web1", status_is(MigrationStatus.COMPLETED))
        # no agent ran on host2 to resume it: its QEMU (-S) waits paused
        async with agent_on(lab, caps, "host2") as dst:
            shown = await dst.migration_status("web1")
            assert shown.state is VMState.RUNNING and shown.role == "incoming"
            assert shown.migration.status is MigrationStatus.COMPLETED
            assert (await dst.get_vm("web1")).adopted is True
            assert (await dst.claim("web1")).role == "owner"


async def test_restarted_agent_forgets_a_dead_incoming_vm(lab: Lab, caps: QemuCapabilities
                                                          ) -> None:
    async with agent_on(lab, caps, "host1") as src:
        info = await running_vm(src, lab)
    async with agent_on(lab, caps, "host2") as dst:
        incoming = await prepare(dst, info.spec)
    assert incoming.pid is not None
    os.kill(incoming.pid, signal.SIGKILL)
    assert await process.wait_exit(incoming.pid, 5)
    async with agent_on(lab, caps, "host2") as dst:
        await refused(dst.get_vm("web1"), NotFound, "VM_NOT_FOUND")
    assert not (lab.root / "host2" / "vms" / "web1").exists()
    assert shared_owner(lab) == "host1"
