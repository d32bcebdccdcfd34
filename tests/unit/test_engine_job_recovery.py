"""Restart recovery: a job a previous controller left in each phase, finished forward or rolled
back from what the agents report (``engine_fakes`` describes the fakes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from engine_fakes import VM, MiB, World, done, q

from segue.api.qemu import QueryMigrate
from segue.domain.vm import VMState
from segue.engine.phases import Phase
from segue.engine.recovery import recover

P = Phase
ACTIVE = q("active", 100 * MiB, 150 * MiB)
FINISHED = [P.FINALIZE, P.COMPLETED]
RESTARTED = [P.ROLLING_BACK, P.FAILED]


@dataclass
class Left:
    """What a previous controller left: the job's phase, both sides, and what must happen."""

    name: str
    phase: Phase
    source_status: list[QueryMigrate]  # the source's QEMU from now on ([]: no migration)
    dest: VMState | None  # None: no QEMU for the VM on the destination
    phases: list[Phase]  # the phases recovery enters
    code: str | None = None
    called: list[str] = field(default_factory=list)  # on either agent
    not_called: list[str] = field(default_factory=list)
    source: VMState = VMState.RUNNING
    runs_on: list[str] = field(default_factory=lambda: ["host2"])
    notes: list[str] = field(default_factory=list)
    setup: Callable[[World], None] = lambda w: None


CASES = [
    Left("check: nothing started", P.CHECK, [], None, RESTARTED, "CONTROLLER_RESTARTED",
         not_called=["abort_incoming", "cancel_migration", "resume_vm"], runs_on=["host1"]),
    Left("prepare: destination torn down", P.PREPARE, [], VMState.INMIGRATE, RESTARTED,
         "CONTROLLER_RESTARTED", called=["abort_incoming"],
         not_called=["cancel_migration", "resume_vm"], runs_on=["host1"]),
    Left("start: copy cancelled, destination torn down", P.START, [ACTIVE], VMState.INMIGRATE,
         RESTARTED, "CONTROLLER_RESTARTED", called=["cancel_migration", "abort_incoming"],
         runs_on=["host1"]),
    Left("monitor: copy cancelled, destination torn down", P.MONITOR, [ACTIVE],
         VMState.INMIGRATE, RESTARTED, "CONTROLLER_RESTARTED",
         called=["cancel_migration", "abort_incoming"], runs_on=["host1"],
         notes=["rollback: cancel the source's migration: done",
                "rollback: tear the destination down: done",
                "rollback: make sure the source runs: done"]),
    Left("monitor: destination found running", P.MONITOR, [done()], VMState.RUNNING,
         [P.SWITCHOVER, P.FINALIZE, P.COMPLETED], called=["claim", "release"],
         not_called=["abort_incoming", "cancel_migration"], source=VMState.POSTMIGRATE),
    Left("monitor: QEMU had completed, destination resumes", P.MONITOR, [done()],
         VMState.INMIGRATE, [P.SWITCHOVER, P.FINALIZE, P.COMPLETED],
         called=["claim", "release"], not_called=["abort_incoming", "cancel_migration"],
         source=VMState.POSTMIGRATE,
         setup=lambda w: w.dst.on("get_vm", lambda: w.dst.on(
             "get_vm", lambda: w.dst.vms.__setitem__(VM, VMState.RUNNING)))),
    Left("monitor: QEMU had switched to post-copy", P.MONITOR,
         [q("postcopy-active", 200 * MiB), done()], VMState.RUNNING,
         [P.POSTCOPY, P.SWITCHOVER, P.FINALIZE, P.COMPLETED], called=["claim", "release"],
         not_called=["abort_incoming", "cancel_migration"], source=VMState.PAUSED),
    Left("start: QEMU in post-copy, destination not answering", P.START,
         [q("postcopy-active", 200 * MiB), done()], VMState.RUNNING,
         [P.MONITOR, P.POSTCOPY, P.SWITCHOVER, P.FINALIZE, P.COMPLETED],
         called=["claim"], not_called=["abort_incoming", "cancel_migration"],
         source=VMState.PAUSED, setup=lambda w: w.dst.fail("get_vm", times=1)),
    Left("switchover: destination running", P.SWITCHOVER, [done()], VMState.RUNNING, FINISHED,
         called=["claim", "release"], source=VMState.POSTMIGRATE),
    # it ran the guest (it holds the lease) then stopped: the source's copy is older, and
    # its agent refuses to run it
    Left("switchover: destination stopped", P.SWITCHOVER, [done()], VMState.STOPPED, [P.FAILED],
         "MIGRATION_DEST_NOT_RUNNING", not_called=["abort_incoming", "claim"],
         source=VMState.POSTMIGRATE, runs_on=[],
         setup=lambda w: setattr(w.wire, "lease_holder", "host2")),
    # it never took the VM over: the source runs it again
    Left("switchover: destination stopped, never took it over", P.SWITCHOVER, [done()],
         VMState.STOPPED, [P.FAILED], "MIGRATION_DEST_NOT_RUNNING",
         called=["resume_vm", "abort_incoming"], source=VMState.POSTMIGRATE,
         runs_on=["host1"]),
    Left("postcopy: watched to its end", P.POSTCOPY,
         [q("postcopy-active", 200 * MiB), done()], VMState.RUNNING,
         [P.SWITCHOVER, P.FINALIZE, P.COMPLETED], called=["claim"],
         not_called=["abort_incoming", "cancel_migration", "resume_vm"],
         source=VMState.PAUSED),
    Left("postcopy: destination lost", P.POSTCOPY, [q("postcopy-paused", 200 * MiB)],
         VMState.CRASHED, [P.FAILED], "MIGRATION_POSTCOPY_LOST",
         not_called=["abort_incoming", "cancel_migration", "resume_vm"],
         source=VMState.PAUSED, runs_on=[]),
    Left("finalize: finished", P.FINALIZE, [done()], VMState.RUNNING, [P.COMPLETED],
         called=["claim", "release"], source=VMState.POSTMIGRATE),
    Left("rolling back: every step again", P.ROLLING_BACK, [ACTIVE], VMState.INMIGRATE,
         [P.FAILED], "CONTROLLER_RESTARTED", called=["cancel_migration", "abort_incoming"],
         runs_on=["host1"], notes=["resuming the interrupted rollback"]),
    Left("rolling back: source paused, destination not confirmed gone", P.ROLLING_BACK,
         [q("failed")], VMState.INMIGRATE, [P.FAILED], "CONTROLLER_RESTARTED",
         called=["abort_incoming"], not_called=["resume_vm"], source=VMState.PAUSED,
         runs_on=[], setup=lambda w: w.dst.fail("abort_incoming"),
         notes=["rollback: make sure the source runs: FAILED (MIGRATION_SPLIT_UNSAFE"]),
    Left("rolling back: source paused, destination gone", P.ROLLING_BACK, [q("failed")], None,
         [P.FAILED], "CONTROLLER_RESTARTED", called=["abort_incoming", "resume_vm"],
         source=VMState.PAUSED, runs_on=["host1"]),
    Left("prepare: destination found running", P.PREPARE, [done()], VMState.RUNNING,
         [P.START, P.MONITOR, P.SWITCHOVER, P.FINALIZE, P.COMPLETED],
         called=["claim", "release"], not_called=["abort_incoming"],
         source=VMState.POSTMIGRATE,
         notes=["controller restarted; job found in prepare"]),
]


@pytest.mark.parametrize("left", CASES, ids=[c.name for c in CASES])
async def test_restart_recovery_from_each_phase(left: Left) -> None:
    w = World(left.source_status, phase=left.phase)
    w.src.migrating = bool(left.source_status)
    w.src.last_status = left.source_status[0].status if left.source_status else None
    w.src.vms[VM] = left.source
    if left.dest is not None:
        w.dst.vms[VM] = left.dest
    w.dst.script, w.dst.migrating = [q("postcopy-paused")], True
    w.wire.dest_after = left.dest or VMState.STOPPED  # the destination stays as it is
    w.src.after_resume = [done()]
    left.setup(w)
    job = w.job(phase=left.phase)
    await recover(job, left.phase)
    assert w.store.phases == left.phases, w.store.notes
    assert w.store.error_code == left.code, w.store.reason
    calls = {*w.src.calls, *w.dst.calls}
    assert set(left.called) <= calls, calls
    assert not set(left.not_called) & calls, calls
    assert w.running_on() == left.runs_on
    assert w.store.notes[0] == f"controller restarted; job found in {left.phase}"
    for note in left.notes:
        assert w.store.noted(note), w.store.notes
    moved = left.phases[-1] == P.COMPLETED
    assert w.store.location == ((VM, "host2") if moved else None)
