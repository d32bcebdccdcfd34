"""Per-host migration limits on the controller: requests beyond them are queued in order,
started as jobs end, cancellable while queued, and kept across a controller restart.

Driven over HTTP against fake agents whose migrations complete when the test says so
(``Moves.finish``), so the order of starts is decided by the test, not by timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from asgi_scopes import local_transport
from test_controller_checks import (
    Controller,
    FakeAgent,
    FakePool,
    host_facts,
    running,
    vm_info,
    vm_spec,
)

from segue.api.agent import DirtyRateAnswer, IncomingAnswer, MigrationView, VMEvent
from segue.api.qemu import QueryMigrate
from segue.api.vm import VMInfo, VMSpecBody
from segue.controller import inventory
from segue.controller.app import create_app
from segue.controller.config import ControllerConfig
from segue.domain.errors import Conflict, Unavailable

VMS = ("web1", "web2", "web3")


@dataclass
class Moves:
    """Every migration the fakes run: the VM's agents, and whether the test let it finish."""

    agents: dict[str, MovingAgent] = field(default_factory=dict)
    done: dict[str, asyncio.Event] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)  # VMs, in the order their copy started

    def finish(self, vm: str) -> None:
        self.done[vm].set()


@dataclass
class MovingAgent(FakeAgent):
    """A FakeAgent whose QEMUs migrate: the copy stays ``active`` until ``Moves.finish``.
    A VM's ``generation`` (if set) is the lease generation the host holds it at: a migrate
    naming another is refused as the agent's guard does, and the destination holds it one
    above once the copy completed."""

    moves: Moves = field(default_factory=Moves)
    sent: int = 0

    async def prepare_incoming(self, spec: VMSpecBody, migration_id: str,
                               capabilities: Any = None, parameters: Any = None,
                               tls_peer: str | None = None) -> IncomingAnswer:
        self._answer(f"prepare_incoming {spec.name}")
        self.vms[spec.name] = {**running(spec.model_dump()), "state": "inmigrate"}
        self.moves.agents[spec.name] = self
        return IncomingAnswer(uri=f"tcp:10.0.1.{self.name[-1]}:4444", pid=99, state="inmigrate",
                              tls=tls_peer is not None)

    async def abort_incoming(self, name: str) -> None:
        self._answer(f"abort_incoming {name}")
        self.vms.pop(name, None)

    def _view(self, name: str) -> MigrationView:
        vm = self.vms.get(name, {})
        return MigrationView(name=name, role="source", state=vm.get("state", "stopped"),
                             migration=QueryMigrate.model_validate({
                                 "status": vm.get("migration", "none"),
                                 "ram": {"transferred": self.sent}}))

    async def start_migration(self, name: str, uri: str, capabilities: Any = None,
                              parameters: Any = None, *, migration_id: str = "",
                              destination: str = "", generation: int | None = None,
                              tls: bool = False) -> MigrationView:
        self._answer(f"start_migration {name}")
        held = self.vms[name].get("generation")
        if generation is not None and generation != held:
            raise Conflict("VM_NOT_OWNED", f"{name}: the caller expects generation "
                           f"{generation}, but {self.name} holds it at generation {held}",
                           "refresh the VM's record")
        self.moves.started.append(name)
        self.moves.done[name] = asyncio.Event()
        self.vms[name]["migration"] = "active"
        return self._view(name).model_copy(update={"tls": tls})

    async def migration_status(self, name: str) -> MigrationView:
        self._answer("migration_status")
        status = self.vms.get(name, {}).get("migration", "none")
        if status in ("active", "postcopy-active") and self.moves.done[name].is_set():
            status = self.vms[name]["migration"] = "completed"
            self.vms[name]["state"] = "postmigrate"
            self.moves.agents[name].vms[name]["state"] = "running"
            if self.vms[name].get("generation") is not None:  # taken over, one above
                self.moves.agents[name].vms[name]["generation"] = self.vms[name][
                    "generation"] + 1
        self.sent += 1 << 20
        return self._view(name)

    async def start_postcopy(self, name: str) -> MigrationView:
        self._answer(f"start_postcopy {name}")
        self.vms[name]["migration"] = "postcopy-active"
        self.moves.agents[name].vms[name]["state"] = "running"  # the destination runs it
        return self._view(name)

    async def cancel_migration(self, name: str, generation: int | None = None
                               ) -> MigrationView:
        self._answer(f"cancel_migration {name}")
        self.vms[name]["migration"] = "cancelled"
        return self._view(name)

    async def resume_vm(self, name: str, generation: int | None = None) -> VMInfo:
        self.vms[name]["state"] = "running"
        return vm_info(self.name, self.vms[name])

    async def events(self, name: str, since: int = 0) -> list[VMEvent]:
        return []

    async def dirty_rate(self, name: str, calc_time_ms: int = 300) -> DirtyRateAnswer:
        raise Unavailable("FAKE_NO_DIRTY_RATE", "this fake cannot measure", "")

    async def set_migration_parameters(self, name: str, parameters: Any) -> dict[str, Any]:
        return {}

    async def claim(self, name: str) -> VMInfo:
        return vm_info(self.name, self.vms[name])

    async def release(self, name: str) -> None:
        self.vms.pop(name)


def cluster(moves: Moves) -> list[MovingAgent]:
    """host1 runs web1..web3; host2 and host3 are healthy and empty."""
    specs = {vm: running(vm_spec(vm)) for vm in VMS}
    return [MovingAgent("host1", host_facts("host1"), specs, moves=moves),
            MovingAgent("host2", host_facts("host2"), moves=moves),
            MovingAgent("host3", host_facts("host3"), moves=moves)]


@asynccontextmanager
async def controller(tmp_path: Path, agents: list[MovingAgent], outgoing: int = 1,
                     incoming: int = 1) -> AsyncIterator[Controller]:
    by_name: dict[str, FakeAgent] = {a.name: a for a in agents}
    app = create_app(ControllerConfig(create_database=True, database_url=f"sqlite:///{tmp_path}/c.db",
                                      heartbeat_timeout=30.0, max_outgoing_per_host=outgoing,
                                      max_incoming_per_host=incoming), FakePool(by_name))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=local_transport(app), base_url="http://controller") as http:
        c = Controller(http, by_name, app)
        for name in by_name:
            assert (await c.beat(name)).status_code == 200
        yield c


async def migrate(c: Controller, vm: str, to: str) -> dict[str, Any]:
    resp = await c.http.post(f"/vms/{vm}/migrations", json={"to": to})
    assert resp.status_code == 202, resp.text
    job: dict[str, Any] = resp.json()
    return job


async def job_of(c: Controller, job: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = (await c.http.get(f"/migrations/{job['id']}")).json()
    return answer


async def wait_for(c: Controller, job: dict[str, Any], test: Callable[[dict[str, Any]], bool],
                   what: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while not test(now := await job_of(c, job)):
        assert time.monotonic() < deadline, f"{job['vm']} never {what}: {now['phase']}"
        await asyncio.sleep(0.02)
    return now


def copying(job: dict[str, Any]) -> bool:
    return job["phase"] == "monitor"


def ended(phase: str) -> Callable[[dict[str, Any]], bool]:
    return lambda job: job["phase"] == phase


async def test_requests_beyond_the_limits_queue_in_order_and_start_as_jobs_end(
        tmp_path: Path) -> None:
    moves = Moves()
    async with controller(tmp_path, cluster(moves)) as c:
        first, second, third = [await migrate(c, vm, "host3") for vm in VMS]
        assert (first["queue_position"], second["phase"], third["phase"]) == (
            None, "queued", "queued")
        assert "queued behind the per-host limits" in second["transitions"][0]["message"]
        listed = {j["vm"]: j for j in (await c.http.get("/migrations")).json()}
        assert [listed[vm]["queue_position"] for vm in VMS] == [None, 1, 2]
        await wait_for(c, first, copying, "started copying")
        assert (await job_of(c, second))["phase"] == "queued"  # no slot while web1 copies

        moves.finish("web1")
        await wait_for(c, first, ended("completed"), "completed")
        await wait_for(c, second, copying, "started copying")
        assert (await job_of(c, third))["queue_position"] == 1

        cancelled = (await c.http.post(f"/migrations/{third['id']}/cancel")).json()
        assert (cancelled["phase"], cancelled["queue_position"], cancelled["error_code"]) == (
            "cancelled", None, "MIGRATION_CANCELLED")
        moves.finish("web2")
        await wait_for(c, second, ended("completed"), "completed")
        assert moves.started == ["web1", "web2"]
        assert "prepare_incoming web3" not in c.agents["host3"].calls  # nothing started
        assert (await job_of(c, third))["phase"] == "cancelled"


async def test_order_holds_across_destinations_that_share_a_source(tmp_path: Path) -> None:
    moves = Moves()
    async with controller(tmp_path, cluster(moves), incoming=2) as c:
        jobs = [await migrate(c, "web1", "host2"), await migrate(c, "web2", "host3"),
                await migrate(c, "web3", "host2")]
        assert [j["queue_position"] for j in jobs] == [None, 1, 2]
        for vm, job in zip(VMS, jobs, strict=True):
            await wait_for(c, job, copying, "started copying")
            assert [(await job_of(c, j))["phase"] for j in jobs].count("queued") == (
                2 - VMS.index(vm))
            moves.finish(vm)
            await wait_for(c, job, ended("completed"), "completed")
        assert moves.started == list(VMS)


async def test_a_queued_vm_cannot_be_requested_again(tmp_path: Path) -> None:
    async with controller(tmp_path, cluster(Moves())) as c:
        await migrate(c, "web1", "host2")
        queued = await migrate(c, "web2", "host3")
        resp = await c.http.post("/vms/web2/migrations", json={"to": "host2"})
        assert resp.status_code == 409, resp.text
        error = resp.json()["error"]
        assert error["code"] == "MIGRATION_IN_PROGRESS" and queued["id"] in error["message"]


async def test_a_queued_job_whose_checks_now_fail_ends_failed(tmp_path: Path) -> None:
    moves = Moves()
    async with controller(tmp_path, cluster(moves)) as c:
        first = await migrate(c, "web1", "host3")
        queued = await migrate(c, "web2", "host2")
        await wait_for(c, first, copying, "started copying")
        c.agents["host1"].path_ok = False  # the migration path to host2 breaks meanwhile
        moves.finish("web1")
        failed = await wait_for(c, queued, ended("failed"), "failed")
        assert failed["error_code"] == "MIGRATION_CHECKS_FAILED"
        assert "check(s) failed" in failed["reason"]
        assert [t["to"] for t in failed["transitions"] if t["from"] != t["to"]] == [
            "queued", "check", "rolling_back", "failed"]
        assert "prepare_incoming web2" not in c.agents["host2"].calls


async def test_queued_jobs_survive_a_controller_restart(tmp_path: Path) -> None:
    moves = Moves()
    agents = cluster(moves)
    async with controller(tmp_path, agents) as c:
        first = await migrate(c, "web1", "host3")
        queued = await migrate(c, "web2", "host3")
        await wait_for(c, first, copying, "started copying")
    # leaving the lifespan rolled web1 back; web2 had nothing to undo and stays queued
    async with controller(tmp_path, agents) as c:
        assert (await job_of(c, first))["error_code"] == "CONTROLLER_STOPPED"
        job = await wait_for(c, queued, copying, "started copying")
        assert "controller restarted" not in str(job["transitions"])
        moves.finish("web2")
        await wait_for(c, queued, ended("completed"), "completed")
        assert moves.started == ["web1", "web2"]


async def test_the_user_switches_a_copying_migration_to_postcopy(tmp_path: Path) -> None:
    moves = Moves()
    async with controller(tmp_path, cluster(moves)) as c:
        first = await migrate(c, "web1", "host2")
        queued = await migrate(c, "web2", "host3")  # behind host1's limit of one
        resp = await c.http.post(f"/migrations/{queued['id']}/postcopy")
        assert resp.status_code == 409, resp.text
        assert resp.json()["error"]["code"] == "MIGRATION_POSTCOPY_NOT_POSSIBLE"

        await wait_for(c, first, copying, "started copying")
        resp = await c.http.post(f"/migrations/{first['id']}/postcopy")
        assert resp.status_code == 200, resp.text
        await wait_for(c, first, ended("postcopy"), "switched to post-copy")
        assert "start_postcopy web1" in c.agents["host1"].calls
        moves.finish("web1")
        done = await wait_for(c, first, ended("completed"), "completed")
        messages = [t["message"] for t in done["transitions"]]
        assert "post-copy requested by the user" in messages
        assert any("asked by the user" in m for m in messages), messages
        resp = await c.http.post(f"/migrations/{first['id']}/postcopy")
        assert resp.status_code == 409  # over: nothing to switch
        await c.http.post(f"/migrations/{queued['id']}/cancel")


def set_generation(c: Controller, vm: str, generation: int) -> None:
    """The inventory's record of ``vm``: at this lease generation."""
    with c.app.state.db.session() as session:
        inventory.get_vm(session, vm).generation = generation


def generation_of(c: Controller, vm: str) -> tuple[str, int | None]:
    with c.app.state.db.session() as session:
        record = inventory.get_vm(session, vm)
        return record.host, record.generation


async def test_a_stale_generation_on_record_fails_the_migration_before_any_copy(
        tmp_path: Path) -> None:
    """The inventory has web1 on host1 at lease generation 4, but host1 holds it at 5 (it
    was claimed again, and no heartbeat told the controller yet): the job names 4 and the
    source refuses the migrate (VM_NOT_OWNED); nothing is copied, the destination is torn
    down and web1 runs on host1 as before. With the record at 5 the move runs, and the
    inventory then keeps the generation the destination took the VM over at."""
    moves = Moves()
    agents = cluster(moves)
    agents[0].vms["web1"]["generation"] = 5
    async with controller(tmp_path, agents) as c:
        host1, host2 = c.agents["host1"], c.agents["host2"]
        set_generation(c, "web1", 4)
        job = await migrate(c, "web1", "host2")
        failed = await wait_for(c, job, ended("failed"), "failed")
        assert failed["error_code"] == "VM_NOT_OWNED", failed["reason"]
        assert "generation 4" in failed["reason"] and "generation 5" in failed["reason"]
        phases = [t["to"] for t in failed["transitions"] if t["from"] != t["to"]]
        assert "start" in phases and "monitor" not in phases, phases
        assert moves.started == []  # nothing copied
        assert host1.vms["web1"]["state"] == "running" and "migration" not in host1.vms["web1"]
        assert "abort_incoming web1" in host2.calls and "web1" not in host2.vms
        assert generation_of(c, "web1") == ("host1", 4)

        set_generation(c, "web1", 5)  # the record refreshed
        job = await migrate(c, "web1", "host2")
        await wait_for(c, job, copying, "started copying")
        moves.finish("web1")
        await wait_for(c, job, ended("completed"), "completed")
        assert generation_of(c, "web1") == ("host2", 6)


async def test_a_queued_job_whose_vm_was_claimed_again_ends_failed(tmp_path: Path) -> None:
    """web2 waits in the queue at generation 3 and is claimed again meanwhile (restarted:
    its record says 4): the job's token is stale, so it ends before it prepares anything."""
    moves = Moves()
    async with controller(tmp_path, cluster(moves)) as c:
        set_generation(c, "web2", 3)
        first = await migrate(c, "web1", "host3")
        queued = await migrate(c, "web2", "host2")
        await wait_for(c, first, copying, "started copying")
        set_generation(c, "web2", 4)
        moves.finish("web1")
        failed = await wait_for(c, queued, ended("failed"), "failed")
        assert failed["error_code"] == "MIGRATION_SOURCE_CHANGED", failed["reason"]
        assert "generation 3, now 4" in failed["reason"]
        assert "prepare_incoming web2" not in c.agents["host2"].calls
