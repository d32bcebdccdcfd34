"""The agent side of a live migration: two agents (host1, host2) on one shared datastore,
their fake QEMUs migrating over a real TCP stream on the loopback interface."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from segue.agent.config import AgentConfig
from segue.qemu import process

if TYPE_CHECKING:  # fixtures come from conftest.py; only their types are imported
    from conftest import AgentFactory, Lab

SLOW = {"max-bandwidth": 1 << 20}  # 64 MiB of guest RAM at 1 MiB/s: a minute, unless cancelled
FAST = {"max-bandwidth": 128 << 20}  # QEMU's default: 0.5 s


def host_config(lab: Lab, host: str, **changes: object) -> AgentConfig:
    fields: dict[str, object] = {"host": host, "state_dir": lab.root / host,
                                 "migration_interface": "lo"}
    fields.update(changes)
    return lab.config(**fields)


@asynccontextmanager
async def two_agents(lab: Lab, agent: AgentFactory
                     ) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    async with agent(host_config(lab, "host1")) as src, agent(host_config(lab, "host2")) as dst:
        yield src, dst


def error_code(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"]["message"] and body["error"]["hint"], body
    return str(body["error"]["code"])


async def ok(resp: Any, status: int = 200) -> Any:
    answer: httpx.Response = await resp
    assert answer.status_code == status, answer.text
    return answer.json() if answer.content else None


async def running_vm(http: httpx.AsyncClient, lab: Lab, name: str = "web1") -> dict[str, Any]:
    """Define and start a VM; its info."""
    return dict(await ok(http.post("/vms", json=lab.spec(name), params={"start": True}), 201))


async def prepare(dst: httpx.AsyncClient, spec: dict[str, Any], **body: Any) -> dict[str, Any]:
    payload = {"spec": spec, "migration_id": "m-1", "capabilities": {}, "parameters": {},
               **body}
    return dict(await ok(dst.post("/migrations/incoming", json=payload), 201))


async def wait_for(http: httpx.AsyncClient, name: str, predicate: Any,
                   timeout: float = 10.0) -> dict[str, Any]:
    """Poll ``GET /vms/{name}/migration`` until ``predicate(status)``; the status."""
    deadline = time.monotonic() + timeout
    while True:
        status = dict(await ok(http.get(f"/vms/{name}/migration")))
        if predicate(status):
            return status
        assert time.monotonic() < deadline, f"not reached in time: {status}"
        await asyncio.sleep(0.05)


def shared_owner(lab: Lab, name: str = "web1") -> str:
    return str(json.loads((lab.datastore / name / "vm.json").read_text())["host"])


async def migrate_to_completion(src: httpx.AsyncClient, dst: httpx.AsyncClient,
                                info: dict[str, Any]) -> dict[str, Any]:
    """Prepare host2, migrate from host1 until QEMU says completed; host1's status.

    Parameters stay set in a QEMU across migrations (as in QEMU): bandwidth is given."""
    incoming = await prepare(dst, info["spec"])
    await ok(src.post("/vms/web1/migrate", json={"uri": incoming["uri"], "parameters": FAST}))
    return await wait_for(src, "web1", lambda s: s["migration"].get("status") == "completed")


# ---- the whole move ----

async def test_live_migration_moves_the_vm(lab: Lab, agent: AgentFactory) -> None:
    async with two_agents(lab, agent) as (src, dst):
        info = await running_vm(src, lab)
        assert info["role"] == "owner"
        incoming = await prepare(dst, info["spec"], capabilities={"xbzrle": False},
                                 parameters={"downtime-limit": 300})
        assert incoming["uri"].startswith("tcp:127.0.0.1:")
        assert int(incoming["uri"].rsplit(":", 1)[1]) > 0  # the real port, read back
        assert incoming["state"] == "inmigrate" and incoming["migration_id"] == "m-1"
        assert incoming["announce"]["announce-initial"] == 1
        assert shared_owner(lab) == "host1", "prepare must not touch the datastore's vm.json"
        listed = {v["name"]: v for v in await ok(dst.get("/vms"))}
        assert listed["web1"]["role"] == "incoming" and listed["web1"]["state"] == "inmigrate"
        assert listed["web1"]["uuid"] == info["uuid"]
        cmdline = Path(f"/proc/{incoming['pid']}/cmdline").read_bytes().split(b"\0")
        assert b"-incoming" in cmdline and b"defer" in cmdline

        started = await ok(src.post("/vms/web1/migrate",
                                    json={"uri": incoming["uri"], "capabilities": {}}))
        assert started["status"] in ("setup", "active")
        during = await ok(src.get("/vms/web1/migration"))
        assert during["role"] == "source" and during["name"] == "web1"
        done = await wait_for(src, "web1", lambda s: s["migration"].get("status") == "completed")
        assert done["state"] == "postmigrate" and done["role"] == "source"
        assert done["migration"]["downtime"] >= 1
        arrived = await wait_for(dst, "web1", lambda s: s["state"] == "running")
        assert arrived["role"] == "incoming"  # until claimed
        src_events = [e["event"] for e in await ok(src.get("/vms/web1/events"))]
        assert "STOP" in src_events and "MIGRATION" in src_events
        assert "RESUME" in [e["event"] for e in await ok(dst.get("/vms/web1/events"))]

        claimed = await ok(dst.post("/vms/web1/incoming/claim"))
        assert claimed["role"] == "owner" and claimed["state"] == "running"
        assert shared_owner(lab) == "host2"
        assert not (lab.root / "host2" / "vms" / "web1" / "role.json").exists()

        assert await ok(src.post("/vms/web1/release"), 204) is None
        assert not process.pid_alive(info["pid"])
        assert (await src.get("/vms/web1")).status_code == 404
        assert not (lab.root / "host1" / "vms" / "web1").exists()
        assert shared_owner(lab) == "host2", "release must leave the destination's vm.json"
        assert [v["name"] for v in await ok(dst.get("/vms"))] == ["web1"]
        assert lab.qemu_pids() == [incoming["pid"]]


async def test_cancel_keeps_the_source_running(lab: Lab, agent: AgentFactory) -> None:
    async with two_agents(lab, agent) as (src, dst):
        info = await running_vm(src, lab)
        incoming = await prepare(dst, info["spec"])
        await ok(src.post("/vms/web1/migrate", json={"uri": incoming["uri"], "parameters": SLOW}))
        await wait_for(src, "web1", lambda s: s["migration"].get("status") == "active")
        cancelled = await ok(src.post("/vms/web1/migration/cancel"))
        assert cancelled["migration"]["status"] == "cancelled", cancelled
        assert cancelled["state"] == "running" and cancelled["role"] == "owner"
        # the destination QEMU exits when its stream breaks off, as QEMU does
        assert await process.wait_exit(incoming["pid"], 5)
        gone = await wait_for(dst, "web1", lambda s: s["state"] == "stopped")
        assert gone["role"] == "incoming"
        assert await ok(dst.post("/vms/web1/incoming/abort"), 204) is None
        assert (await dst.get("/vms/web1")).status_code == 404
        assert not (lab.root / "host2" / "vms" / "web1").exists()
        assert shared_owner(lab) == "host1"
        assert lab.qemu_pids() == [info["pid"]]
        # and it can migrate again
        again = await migrate_to_completion(src, dst, info)
        assert again["state"] == "postmigrate"


async def test_abort_while_listening_kills_only_the_incoming_qemu(
        lab: Lab, agent: AgentFactory) -> None:
    async with two_agents(lab, agent) as (src, dst):
        info = await running_vm(src, lab)
        incoming = await prepare(dst, info["spec"])
        assert await ok(dst.post("/vms/web1/incoming/abort"), 204) is None
        assert not process.pid_alive(incoming["pid"])
        assert process.pid_alive(info["pid"])
        assert shared_owner(lab) == "host1"
        assert error_code(await dst.post("/vms/web1/incoming/abort"), 404) == "VM_NOT_FOUND"


async def test_resume_after_a_completed_migration_is_the_rollback(
        lab: Lab, agent: AgentFactory) -> None:
    async with two_agents(lab, agent) as (src, dst):
        info = await running_vm(src, lab)
        await migrate_to_completion(src, dst, info)
        await wait_for(dst, "web1", lambda s: s["state"] == "running")
        await ok(dst.post("/vms/web1/incoming/abort"), 204)  # the destination failed
        resumed = await ok(src.post("/vms/web1/resume"))
        assert resumed["state"] == "running" and resumed["role"] == "owner"
        assert shared_owner(lab) == "host1"
        assert error_code(await src.post("/vms/web1/resume"), 409) == "VM_NOT_PAUSED"


# ---- refusals ----

async def test_refusals_change_nothing(lab: Lab, agent: AgentFactory) -> None:
    async with two_agents(lab, agent) as (src, dst):
        info = await running_vm(src, lab)
        code = error_code(await src.post("/vms/web1/incoming/abort"), 409)
        assert code == "VM_NOT_INCOMING"
        assert process.pid_alive(info["pid"]), "abort must never kill an owned VM"
        assert error_code(await src.post("/vms/web1/release"), 409) == "VM_NOT_MIGRATED"
        assert error_code(await src.post("/vms/web1/incoming/claim"), 409) == "VM_NOT_INCOMING"
        payload = {"spec": info["spec"], "migration_id": "m-x"}
        assert error_code(await src.post("/migrations/incoming", json=payload), 409) \
            == "VM_EXISTS"
        bad_uri = {"uri": "exec:touch /tmp/pwned"}
        assert error_code(await src.post("/vms/web1/migrate", json=bad_uri), 400) \
            == "MIGRATION_URI_INVALID"

        incoming = await prepare(dst, info["spec"])
        assert error_code(await dst.post("/vms/web1/incoming/claim"), 409) == "VM_NOT_RUNNING"
        assert error_code(await dst.post("/vms/web1/start"), 409) == "VM_INCOMING"
        assert error_code(await dst.post("/vms/web1/migrate", json={"uri": incoming["uri"]}),
                          409) == "VM_INCOMING"
        assert error_code(await dst.post("/migrations/incoming", json=payload), 409) \
            == "VM_EXISTS"
        await ok(src.post("/vms/web1/migrate", json={"uri": incoming["uri"],
                                                     "parameters": SLOW}))
        again = await src.post("/vms/web1/migrate", json={"uri": incoming["uri"]})
        assert error_code(again, 409) == "MIGRATION_IN_PROGRESS"
        assert error_code(await src.post("/vms/web1/release"), 409) == "VM_NOT_MIGRATED"
        assert error_code(await src.post("/vms/web1/resume"), 409) == "VM_NOT_PAUSED"
        await ok(src.post("/vms/web1/migration/cancel"))
        assert await process.wait_exit(incoming["pid"], 5)
        assert lab.qemu_pids() == [info["pid"]]


async def test_stopped_vm_cannot_migrate_and_unknown_names_are_404(
        lab: Lab, agent: AgentFactory) -> None:
    async with two_agents(lab, agent) as (src, _):
        await ok(src.post("/vms", json=lab.spec("idle")), 201)
        body = {"uri": "tcp:127.0.0.1:1"}
        assert error_code(await src.post("/vms/idle/migrate", json=body), 409) \
            == "VM_NOT_RUNNING"
        status = await ok(src.get("/vms/idle/migration"))
        assert status == {"name": "idle", "role": "owner", "state": "stopped",
                          "migration_id": None, "migration": {}}
        for method, path, payload in [
                ("POST", "/vms/nope/migrate", body), ("GET", "/vms/nope/migration", None),
                ("POST", "/vms/nope/migration/cancel", None),
                ("POST", "/vms/nope/incoming/abort", None),
                ("POST", "/vms/nope/incoming/claim", None), ("POST", "/vms/nope/release", None),
                ("POST", "/vms/nope/resume", None)]:
            resp = await src.request(method, path, json=payload)
            assert error_code(resp, 404) == "VM_NOT_FOUND", (method, path)


async def test_failed_prepare_leaves_nothing(lab: Lab, agent: AgentFactory,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    async with agent(host_config(lab, "host1")) as src:
        spec = (await running_vm(src, lab))["spec"]
    async with agent(host_config(lab, "host2", migration_interface="sgnomig0")) as dst:
        resp = await dst.post("/migrations/incoming", json={"spec": spec, "migration_id": "m"})
        assert error_code(resp, 503) == "MIGRATION_NIC_UNAVAILABLE"
    async with agent(host_config(lab, "host2")) as dst:
        monkeypatch.setenv("FAKE_QEMU_FAIL_START", "1")
        resp = await dst.post("/migrations/incoming", json={"spec": spec, "migration_id": "m"})
        assert error_code(resp, 503) == "QEMU_LAUNCH_FAILED"
        assert (await dst.get("/vms/web1")).status_code == 404
        no_uuid = {**spec, "uuid": ""}
        resp = await dst.post("/migrations/incoming", json={"spec": no_uuid, "migration_id": "m"})
        assert error_code(resp, 400) == "VM_SPEC_INVALID"
    assert not (lab.root / "host2" / "vms" / "web1").exists()
    assert len(lab.qemu_pids()) == 1 and shared_owner(lab) == "host1"


async def test_destroying_an_incoming_vm_keeps_the_owners_vm_json(
        lab: Lab, agent: AgentFactory) -> None:
    async with two_agents(lab, agent) as (src, dst):
        info = await running_vm(src, lab)
        incoming = await prepare(dst, info["spec"])
        assert await ok(dst.delete("/vms/web1"), 204) is None
        assert not process.pid_alive(incoming["pid"])
        assert shared_owner(lab) == "host1"
        assert (await src.get("/vms/web1")).json()["state"] == "running"


# ---- agent restarts ----

async def test_restarted_agent_adopts_an_incoming_vm(lab: Lab, agent: AgentFactory) -> None:
    async with agent(host_config(lab, "host1")) as src:
        info = await running_vm(src, lab)
        async with agent(host_config(lab, "host2")) as dst:
            incoming = await prepare(dst, info["spec"], migration_id="m-42")
        assert process.pid_alive(incoming["pid"]), "an agent shutdown must not kill QEMU"
        async with agent(host_config(lab, "host2")) as dst:
            shown = await ok(dst.get("/vms/web1"))
            assert shown["role"] == "incoming" and shown["migration_id"] == "m-42"
            assert shown["adopted"] is True and shown["state"] == "inmigrate"
            assert shown["pid"] == incoming["pid"]
            await ok(src.post("/vms/web1/migrate", json={"uri": incoming["uri"]}))
            await wait_for(dst, "web1", lambda s: s["state"] == "running")
            assert (await ok(dst.post("/vms/web1/incoming/claim")))["role"] == "owner"
        async with agent(host_config(lab, "host2")) as dst:
            assert (await ok(dst.get("/vms/web1")))["role"] == "owner"


async def test_restarted_agent_forgets_a_dead_incoming_vm(lab: Lab, agent: AgentFactory
                                                          ) -> None:
    async with agent(host_config(lab, "host1")) as src:
        info = await running_vm(src, lab)
    async with agent(host_config(lab, "host2")) as dst:
        incoming = await prepare(dst, info["spec"])
    os.kill(incoming["pid"], signal.SIGKILL)
    assert await process.wait_exit(incoming["pid"], 5)
    async with agent(host_config(lab, "host2")) as dst:
        assert (await dst.get("/vms/web1")).status_code == 404
    assert not (lab.root / "host2" / "vms" / "web1").exists()
    assert shared_owner(lab) == "host1"
