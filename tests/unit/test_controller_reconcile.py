"""Reconciliation (``segue.controller.reconcile``): who owns a VM, from every host's report
of its instance (run state, lease generation, fencing); then through the inventory's
heartbeats, on a real (in-memory) database."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from segue.api.inventory import VMReport
from segue.api.vm import VMSpecBody
from segue.checks.context import host_facts_from_dict
from segue.controller import inventory
from segue.controller.db import Database
from segue.controller.models import utcnow
from segue.controller.reconcile import Decision, Seen, decide

R, PM, P = "running", "postmigrate", "paused"


def s(host: str, state: str, generation: int | None, fenced: str | None = None,
      role: str = "owner") -> Seen:
    return Seen(host, state, role, generation, fenced)


CASES: list[tuple[str, str, int | None, list[Seen], set[str], bool, Decision]] = [
    ("the owner runs it: nothing to do", "host1", 3, [s("host1", R, 3)], {"host1"}, False,
     Decision()),
    # the destination took the VM over and runs it; the controller still names the source
    ("a newer generation elsewhere moves the owner, the old source is released", "host1", 3,
     [s("host1", PM, None, role="source"), s("host2", R, 4, role="incoming")], {"host2"},
     False, Decision(owner=("host2", 4), events=[("owner-changed", {
         "from": "host1", "to": "host2", "generation": 4,
         "evidence": "host2 runs it at lease generation 4"})], release=["host1"])),
    ("... but not while a job of the VM runs (it releases the source itself)", "host1", 3,
     [s("host1", PM, None, role="source"), s("host2", R, 4, role="incoming")], set(), True,
     Decision(owner=("host2", 4), events=[("owner-changed", {
         "from": "host1", "to": "host2", "generation": 4,
         "evidence": "host2 runs it at lease generation 4"})])),
    ("an older generation elsewhere does not move it, and is stale", "host2", 4,
     [s("host1", R, 3), s("host2", R, 4)], {"host1"}, False,
     Decision(events=[("split-brain", {"running": {"host1": 3, "host2": 4}, "kept": "host2"}),
                      ("stale", {"host": "host1", "generation": 3, "owner_generation": 4})])),
    ("a fenced instance is recorded, not counted as running", "host2", 4,
     [s("host1", P, None, fenced="its lease is host2's"), s("host2", R, 4)], {"host1"}, False,
     Decision(events=[("fenced", {"host": "host1", "why": "its lease is host2's"})])),
    ("no events for hosts whose instance did not change", "host2", 4,
     [s("host1", P, None, fenced="x"), s("host2", R, 4)], set(), False, Decision()),
    ("an incoming QEMU that never took the VM over is torn down once no job runs", "host1",
     3, [s("host1", R, 3), s("host2", P, None, role="incoming")], set(), False,
     Decision(abort=["host2"])),
    ("... but never while its job runs", "host1", 3,
     [s("host1", R, 3), s("host2", P, None, role="incoming")], set(), True, Decision()),
    ("a source left postmigrate is not released while the owner does not run it", "host2", 4,
     [s("host1", PM, None, role="source"), s("host2", "stopped", None)], set(), False,
     Decision()),
]


@pytest.mark.parametrize(("case", "owner", "generation", "seen", "changed", "job", "want"),
                         CASES, ids=[c[0] for c in CASES])
def test_decide(case: str, owner: str, generation: int | None, seen: list[Seen],
                changed: set[str], job: bool, want: Decision) -> None:
    assert decide(owner, generation, seen, changed, job) == want


# ---- through the heartbeats ----
SPEC: dict[str, Any] = {"name": "web1", "datastore": "shared", "uuid": "u-1",
                        "kernel": "/boot/vmlinuz"}


def report(state: str, generation: int | None, role: str = "owner") -> VMReport:
    return VMReport(name="web1", uuid="u-1", state=state, role=role, generation=generation,
                    spec=VMSpecBody.model_validate(SPEC))


def beat(db: Database, host: str, *vms: VMReport) -> None:
    with db.session() as session:
        inventory.record_heartbeat(session, host, f"http://{host}:7600",
                                   host_facts_from_dict(host, {}), list(vms), utcnow())


def test_heartbeats_move_the_owner_to_where_the_lease_went() -> None:
    db = Database("sqlite://")
    db.upgrade()
    beat(db, "host2")
    beat(db, "host1", report("running", 1))
    with db.session() as session:
        vm = inventory.get_vm(session, "web1")
        assert (vm.host, vm.generation) == ("host1", 1)
    # the migration's job died after the copy; the destination took the lease over
    beat(db, "host1", report("postmigrate", None, role="source"))
    beat(db, "host2", report("running", 2, role="incoming"))
    with db.session() as session:
        vm = inventory.get_vm(session, "web1")
        assert (vm.host, vm.generation, vm.state) == ("host2", 2, "running")
        kinds = [e.kind for e in inventory.vm_events(session, "web1")]
        assert kinds.count("owner-changed") == 1
    beat(db, "host2", report("running", 2, role="incoming"))  # again: no new event
    with db.session() as session:
        kinds = [e.kind for e in inventory.vm_events(session, "web1")]
        assert kinds.count("owner-changed") == 1
    db.dispose()


async def test_the_left_behind_source_is_released_once_no_job_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from segue.controller import reconcile
    from segue.controller.inventory_service import InventoryService

    db = Database("sqlite://")
    db.upgrade()
    beat(db, "host1", report("running", 1))
    beat(db, "host1", report("postmigrate", None, role="source"))
    beat(db, "host2", report("running", 2, role="incoming"))
    released: list[tuple[str, str]] = []
    done = asyncio.Event()

    class Agent:
        def __init__(self, url: str, host: str) -> None:
            self.url = url
            assert url == f"http://{host}:7600"  # the client of that host's agent

        async def release(self, name: str) -> None:
            released.append((name, self.url))
            done.set()

        async def abort_incoming(self, name: str) -> None:
            raise AssertionError("nothing to abort here")

    service = InventoryService(db, Agent, heartbeat_timeout=30.0)  # type: ignore[arg-type]
    assert await service.pending_releases() == [("release", "web1", "host1", "http://host1:7600")]
    monkeypatch.setattr(reconcile, "RECONCILE_INTERVAL_S", 0.0)
    task = asyncio.create_task(reconcile.run_releases(service))
    await asyncio.wait_for(done.wait(), 5)
    assert released[0] == ("web1", "http://host1:7600")

    def kinds() -> list[str]:
        with db.session() as session:
            return [e.kind for e in inventory.vm_events(session, "web1")]

    for _ in range(100):  # the event is written after the release answered
        if "released-source" in kinds():
            break
        await asyncio.sleep(0.05)
    task.cancel()
    assert "released-source" in kinds()
    db.dispose()


async def test_two_requests_racing_past_the_checks_meet_the_database() -> None:
    """Both saw no active job (``decide`` lets both through): the unique partial index
    refuses the second with MIGRATION_IN_PROGRESS, not an internal error."""
    from segue.api.migration import MigrationOptionsBody
    from segue.controller.migration_store import SqlJobStore
    from segue.domain.errors import Conflict
    from segue.engine.context import JobSpec
    from segue.engine.phases import Phase

    db = Database("sqlite://")
    db.upgrade()
    store = SqlJobStore(db)
    options = MigrationOptionsBody()

    async def create(job_id: str) -> Phase:
        return await store.create(JobSpec(job_id, "web1", "host1", "host2", options),
                                  lambda *_: Phase.CHECK, lambda _: "requested")

    assert await create("a" * 36) == Phase.CHECK
    with pytest.raises(Conflict) as err:
        await create("b" * 36)
    assert err.value.code == "MIGRATION_IN_PROGRESS"
    db.dispose()


async def test_a_created_vm_shows_the_agents_answer_over_an_earlier_heartbeat() -> None:
    """A heartbeat taken while the VM was defined but not yet started can add it first
    (stopped); the create's answer, from the agent after the start, wins."""
    from segue.api.inventory import CreateVMBody
    from segue.api.vm import VMInfo
    from segue.controller.inventory_service import InventoryService

    spec = {**SPEC, "uuid": "0b8f2a52-4c33-4d5e-9a61-1f0e7d2c3b4a"}
    stopped = VMReport(name="web1", uuid=spec["uuid"], state="stopped", role="owner",
                       generation=1, spec=VMSpecBody.model_validate(spec))
    db = Database("sqlite://")
    db.upgrade()
    beat(db, "host1")

    class Agent:
        def __init__(self, url: str, host: str) -> None:
            pass

        async def define_vm(self, given: VMSpecBody, start: bool) -> VMInfo:
            beat(db, "host1", stopped)  # the heartbeat wins the race to the DB
            return VMInfo.model_validate({"name": "web1", "uuid": given.uuid, "host": "host1",
                                          "state": "running", "role": "owner", "pid": 4321,
                                          "generation": 1, "spec": given.model_dump()})

    service = InventoryService(db, Agent, heartbeat_timeout=30.0)  # type: ignore[arg-type]
    body = CreateVMBody.model_validate({"host": "host1", "spec": spec})
    created = await service.create_vm(body)
    assert (created.state, created.pid) == ("running", 4321)
    with db.session() as session:
        assert inventory.get_vm(session, "web1").state == "running"
