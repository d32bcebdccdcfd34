"""The migration job against in-memory agents, store and a virtual clock: its happy path, every
phase against an agent's error, the commit point, finalize's failures, cancel and the user's
post-copy request (``engine_fakes`` describes the fakes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from engine_fakes import VM, MiB, World, copying, done, q

from segue.api.agent import MigrationView
from segue.api.migration import MigrationOptionsBody
from segue.domain.errors import Conflict, SegueError, Unavailable
from segue.domain.vm import VMState
from segue.engine.control import cancel_queued
from segue.engine.phases import Phase

P = Phase
FORWARD = [P.PREPARE, P.START, P.MONITOR, P.SWITCHOVER, P.FINALIZE, P.COMPLETED]
SUMMARY_KEYS = {
    "link_measured_mibs", "link_estimate_mibs", "downtime_target_ms", "downtime_reason",
    "xbzrle_cache_mib", "xbzrle_reason", "sampled_dirty_rate_mibs", "predicted_converges",
    "predicted_total_s", "predicted_hybrid_s", "predicted_iterations", "prediction",
    "postcopy_at_once", "postcopy", "downtime_limit_ms", "qemu_downtime_ms", "qemu_total_ms",
    "setup_ms", "bytes_sent", "ram_total", "iterations", "switchover_ms", "source_stop_at",
    "dest_resume_at", "total_s", "actual_total_s", "downtime_bound_ms", "downtime_bound_reason",
    "encrypted",
    "sampled_dirty_range_mibs", "predicted_downtime_ms", "predicted_total_error",
    "predicted_downtime_error", "predicted_downtime_error_ms", "corrected_total_error",
    "corrected_downtime_error", "throttle_max_pct", "throttled_s", "postcopy_blocktime_ms"}
BOOM = Unavailable("FAKE_BOOM", "the fake failed on purpose", "")


async def test_a_migration_runs_every_phase_and_moves_the_vm() -> None:
    w = World()
    await w.job().run()
    assert w.store.phases == FORWARD
    assert w.store.location == (VM, "host2") and w.running_on() == ["host2"]
    assert VM not in w.src.vms  # released
    assert set(w.store.summary) == SUMMARY_KEYS
    s = w.store.summary
    assert (s["postcopy"], s["qemu_total_ms"], s["actual_total_s"]) == (False, 2100, 2.1)
    assert s["switchover_ms"] == 50.0 and s["bytes_sent"] == 260 * MiB
    assert s["link_measured_mibs"] == 100.0 and s["sampled_dirty_rate_mibs"] == 1.0
    assert s["total_s"] == pytest.approx(w.clock.t - 1000.0, abs=1e-3)
    assert w.store.noted("destination QEMU (pid 99) listens on tcp:10.0.1.2:4444")
    assert w.store.noted("bandwidth not capped") and w.store.noted("prediction:")
    assert [p.status for _, p in w.store.samples][:2] == ["active", "active"]
    assert "abort_incoming" not in w.dst.calls and "resume_vm" not in w.src.calls
    assert w.src.handover == ("host2", "job-1")  # the lease goes to the destination


async def test_the_job_names_its_generation_and_records_the_destinations() -> None:
    w = World()
    w.src.held, w.dst.held = 4, 5  # the destination took the VM over one above
    await w.job(generation=4).run()
    assert w.store.phases == FORWARD
    assert w.src.tokens == [("start_migration", 4)]
    assert w.store.location == (VM, "host2") and w.store.location_generation == 5


async def test_a_stale_generation_fails_the_migration_before_anything_is_copied() -> None:
    """The job read generation 4, but the source holds the VM at 5 now (claimed again
    since): its agent refuses the migrate, nothing is copied, the destination is torn down
    and the VM runs on its source as before."""
    w = World()
    w.src.held = 5
    await w.job(generation=4).run()
    assert w.store.phases == [P.PREPARE, P.START, P.ROLLING_BACK, P.FAILED], w.store.notes
    assert w.store.error_code == "VM_NOT_OWNED" and "generation 4" in (w.store.reason or "")
    assert w.src.tokens == [("start_migration", 4)]  # no cancel, no resume followed
    assert not w.src.migrating and w.store.samples == [] and w.src.handover is None
    assert "abort_incoming" in w.dst.calls and VM not in w.dst.vms
    assert w.running_on() == ["host1"] and w.store.location is None


@dataclass
class Case:
    """An agent error (or QEMU's answer) in one phase, and what the job must do about it."""

    name: str
    setup: Callable[[World], None]
    code: str
    phases: list[Phase]  # from prepare on
    called: dict[str, list[str]] = field(default_factory=dict)  # host -> calls made
    not_called: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    runs_on: list[str] = field(default_factory=lambda: ["host1"])
    options: MigrationOptionsBody = field(default_factory=MigrationOptionsBody)


def _script(*answers: object) -> Callable[[World], None]:
    def setup(w: World) -> None:
        w.src.script = list(answers)  # type: ignore[arg-type]
    return setup


def _paused_on_failure(w: World) -> None:
    """QEMU fails the copy and leaves the source paused; the destination cannot be killed."""
    w.src.script = [*copying(10), q("failed", error_desc="broken pipe")]
    w.src.vms[VM] = VMState.PAUSED
    w.dst.fail("abort_incoming", BOOM)


def _paused_source(w: World) -> None:
    w.src.script = [*copying(10), q("failed", error_desc="broken pipe")]
    w.src.vms[VM] = VMState.PAUSED


def _escalating(w: World) -> None:
    """Remaining never shrinks across passes: the policy raises the downtime target."""
    w.src.script = [q("active", n * MiB, 100 * MiB, iteration=n) for n in range(1, 8)]
    w.src.fail("set_migration_parameters", BOOM)


ROLLED_BACK = [P.PREPARE, P.START, P.MONITOR, P.ROLLING_BACK, P.FAILED]
def _never_ran(state: VMState, events_fail: bool = False,
               abort_fails: bool = False) -> Callable[[World], None]:
    """After the copy the destination is in ``state`` with no RESUME among its events."""

    def setup(w: World) -> None:
        w.wire.dest_after = state
        w.dst.events_ = []
        if events_fail:
            w.dst.fail("events", BOOM)
        if abort_fails:
            w.dst.fail("abort_incoming", BOOM)

    return setup


FAILURES = [
    Case("source agent down at prepare", lambda w: w.src.fail("get_vm", times=1),
         "AGENT_UNREACHABLE", [P.PREPARE, P.ROLLING_BACK, P.FAILED],
         not_called={"host2": ["prepare_incoming", "abort_incoming"]},
         notes=["rollback: make sure the source runs: done"]),
    Case("a host left the inventory", lambda w: w.facts.missing.add("host2"),
         "HOST_NOT_FOUND", [P.PREPARE, P.ROLLING_BACK, P.FAILED],
         not_called={"host2": ["prepare_incoming", "abort_incoming"]}),
    Case("prepare fails", lambda w: w.dst.fail("prepare_incoming", BOOM),
         "FAKE_BOOM", [P.PREPARE, P.ROLLING_BACK, P.FAILED],
         called={"host2": ["abort_incoming"]},
         not_called={"host1": ["start_migration", "resume_vm"]},
         notes=["host2 has no incoming web1: nothing to tear down",
                "rollback: tear the destination down: done"]),
    Case("start fails", lambda w: w.src.fail("start_migration", BOOM),
         "FAKE_BOOM", [P.PREPARE, P.START, P.ROLLING_BACK, P.FAILED],
         called={"host1": ["migration_status"], "host2": ["abort_incoming"]},
         not_called={"host1": ["cancel_migration", "resume_vm"]},
         notes=["rollback: cancel the source's migration: done",
                "rollback: tear the destination down: done"]),
    Case("status fails in monitor", lambda w: w.src.fail("migration_status", BOOM),
         "FAKE_BOOM", ROLLED_BACK, called={"host2": ["abort_incoming"]},
         notes=["rollback: cancel the source's migration: FAILED (FAKE_BOOM",
                "rollback: tear the destination down: done",
                "rollback: make sure the source runs: done"]),
    Case("QEMU fails the copy", _script(*copying(10), q("failed", error_desc="broken pipe")),
         "MIGRATION_QEMU_FAILED", ROLLED_BACK, called={"host2": ["abort_incoming"]},
         not_called={"host1": ["cancel_migration"]}, notes=["rollback: tear the destination"]),
    Case("QEMU cancelled the copy", _script(*copying(10), q("cancelled")),
         "MIGRATION_QEMU_FAILED", ROLLED_BACK, called={"host2": ["abort_incoming"]}),
    Case("no data moves", _script(*copying(10, 10)), "MIGRATION_STALLED", ROLLED_BACK,
         called={"host1": ["cancel_migration"], "host2": ["abort_incoming"]},
         options=MigrationOptionsBody(stall_timeout_s=3.0)),
    Case("past the deadline", _script(*copying(*range(1, 200))), "MIGRATION_DEADLINE",
         ROLLED_BACK, called={"host1": ["cancel_migration"], "host2": ["abort_incoming"]},
         options=MigrationOptionsBody(deadline_s=5.0)),
    Case("a policy action fails", _escalating, "FAKE_BOOM", ROLLED_BACK,
         called={"host1": ["set_migration_parameters", "cancel_migration"]},
         notes=["policy: set_parameters {'downtime-limit'"],
         # above the default bound and without post-copy, so that the stall raises it (a
         # remaining that never shrinks goes to post-copy at once where it is allowed)
         options=MigrationOptionsBody(downtime_limit_ms=300, max_downtime_ms=2000,
                                      allow_postcopy=False)),
    Case("source paused, destination not confirmed gone", _paused_on_failure,
         "MIGRATION_QEMU_FAILED", ROLLED_BACK, called={"host2": ["abort_incoming"]},
         not_called={"host1": ["resume_vm"]}, runs_on=[],
         notes=["rollback: tear the destination down: FAILED (FAKE_BOOM",
                "rollback: make sure the source runs: FAILED (MIGRATION_SPLIT_UNSAFE"]),
    Case("source paused, destination gone", _paused_source, "MIGRATION_QEMU_FAILED",
         ROLLED_BACK, called={"host1": ["resume_vm"], "host2": ["abort_incoming"]},
         notes=["rollback: make sure the source runs: done"]),
    # past the commit point the VM's lease decides: a destination that ran the guest took
    # it over, and the source's agent refuses to run its older copy (the fake's resume
    # says VM_NOT_OWNED); the source stays paused and the job waits for the destination
    Case("destination stopped after the copy", lambda w: setattr(
             w.wire, "dest_after", VMState.STOPPED), "MIGRATION_DEST_NOT_RUNNING",
         [P.PREPARE, P.START, P.MONITOR, P.SWITCHOVER, P.FAILED],
         not_called={"host1": ["cancel_migration", "release"],
                     "host2": ["abort_incoming", "claim"]}, runs_on=[],
         notes=["host1 does not run it again (VM_NOT_OWNED"]),
    Case("destination never resumes", lambda w: setattr(
             w.wire, "dest_after", VMState.INMIGRATE), "MIGRATION_DEST_NOT_RUNNING",
         [P.PREPARE, P.START, P.MONITOR, P.SWITCHOVER, P.FAILED],
         not_called={"host2": ["abort_incoming"]}, runs_on=[],
         notes=["host1 does not run it again (VM_NOT_OWNED"]),
    # ... and one that never ran it never took it over: the source runs it again
    Case("destination stopped after the copy, never having run", _never_ran(VMState.STOPPED),
         "MIGRATION_DEST_NOT_RUNNING", [P.PREPARE, P.START, P.MONITOR, P.SWITCHOVER, P.FAILED],
         called={"host1": ["resume_vm"], "host2": ["abort_incoming"]}, runs_on=["host1"],
         notes=["web1 runs on host1 again"]),
    Case("destination still incoming, never having run", _never_ran(VMState.INMIGRATE),
         "MIGRATION_DEST_NOT_RUNNING", [P.PREPARE, P.START, P.MONITOR, P.SWITCHOVER, P.FAILED],
         called={"host1": ["resume_vm"], "host2": ["abort_incoming"]}, runs_on=["host1"]),
    # the lease, not the destination's events, decides (no need to reach the destination)
    Case("destination's events unknown", _never_ran(VMState.STOPPED, events_fail=True),
         "MIGRATION_DEST_NOT_RUNNING", [P.PREPARE, P.START, P.MONITOR, P.SWITCHOVER, P.FAILED],
         called={"host1": ["resume_vm"]}, runs_on=["host1"]),
    Case("destination refuses the teardown", _never_ran(VMState.STOPPED, abort_fails=True),
         "MIGRATION_DEST_NOT_RUNNING", [P.PREPARE, P.START, P.MONITOR, P.SWITCHOVER, P.FAILED],
         called={"host1": ["resume_vm"], "host2": ["abort_incoming"]}, runs_on=["host1"],
         notes=["incoming QEMU not torn down (FAKE_BOOM); reconciliation removes it"]),
]


@pytest.mark.parametrize("generation", [None, 7], ids=["no generation", "generation"])
@pytest.mark.parametrize("case", FAILURES, ids=[c.name for c in FAILURES])
async def test_every_phase_against_an_agent_error(case: Case, generation: int | None) -> None:
    """... the same with or without a generation on record, which each state-changing call
    to the source then names (the source holds the VM at it)."""
    w = World()
    w.src.held = generation
    case.setup(w)
    await w.job(case.options, generation=generation).run()
    assert {token for _, token in w.src.tokens} <= {generation}, w.src.tokens
    assert w.store.phases == case.phases, w.store.notes
    assert w.store.error_code == case.code, w.store.reason
    agents = {"host1": w.src, "host2": w.dst}
    for host, calls in case.called.items():
        assert set(calls) <= set(agents[host].calls), (host, agents[host].calls)
    for host, calls in case.not_called.items():
        assert not set(calls) & set(agents[host].calls), (host, agents[host].calls)
    for note in case.notes:
        assert w.store.noted(note), w.store.notes
    assert w.running_on() == case.runs_on
    assert w.store.location is None


async def test_past_the_commit_point_a_failure_rolls_nothing_back() -> None:
    """A failed ``migrate-start-postcopy``: QEMU may have switched; the job ends failed
    without cancelling the source or killing the destination."""
    w = World([*copying(*range(10, 200, 10))])
    w.src.fail("start_postcopy", BOOM)
    job = w.job()
    w.src.on("start_migration", job.request_postcopy)  # asked as soon as it copies
    await job.run()
    assert w.store.phases == [P.PREPARE, P.START, P.MONITOR, P.FAILED]
    assert w.store.error_code == "FAKE_BOOM"
    assert not {"cancel_migration", "resume_vm"} & set(w.src.calls)
    assert "abort_incoming" not in w.dst.calls


@pytest.mark.parametrize(("what", "setup", "note"), [
    ("claim fails once", lambda w: w.dst.fail("claim", BOOM, times=1),
     "claim on host2 failed: FAKE_BOOM"),
    ("claim fails twice", lambda w: w.dst.fail("claim", BOOM), "retry failed: FAKE_BOOM"),
    ("release fails", lambda w: w.src.fail("release", BOOM), "release on host1 failed"),
    ("no events", lambda w: w.src.fail("events", BOOM), "no final numbers from QEMU"),
])
async def test_finalize_notes_a_failed_step_and_completes(
        what: str, setup: Callable[[World], None], note: str) -> None:
    w = World()
    setup(w)
    await w.job().run()
    assert w.store.phases == FORWARD and w.store.location == (VM, "host2")
    assert w.store.noted(note), w.store.notes
    assert "total_s" in w.store.summary


async def test_a_source_that_never_reaches_postmigrate_is_left_and_noted() -> None:
    w = World()
    job = w.job()
    w.dst.on("claim", lambda: w.src.vms.__setitem__(VM, VMState.PAUSED))
    await job.run()
    assert w.store.phases == FORWARD
    assert w.store.noted("release on host1 failed: MIGRATION_SOURCE_NOT_POSTMIGRATE")
    assert "release" not in w.src.calls


@pytest.mark.parametrize(("setup", "note", "measured"), [
    (lambda w: w.src.fail("dirty_rate", BOOM), "no dirty-rate sample (FAKE_BOOM)", 100.0),
    (lambda w: setattr(w.src, "link_bps", None), "link not measured: connection refused",
     None),
    (lambda w: w.dst.fail("open_probe_listener", BOOM), "link not measured (FAKE_BOOM)",
     None),
])
async def test_a_measurement_that_fails_is_noted_and_the_move_goes_on(
        setup: Callable[[World], None], note: str, measured: float | None) -> None:
    w = World()
    setup(w)
    await w.job().run()
    assert w.store.phases == FORWARD
    assert w.store.noted(note), w.store.notes
    assert w.store.summary["link_measured_mibs"] == measured


# ---- cancel ----

@pytest.mark.parametrize(("phase", "arm", "undone"), [
    (P.CHECK, "checks", []),
    (P.PREPARE, "prepare_incoming", ["abort_incoming"]),
    (P.START, "start_migration", ["abort_incoming", "cancel_migration"]),
    (P.MONITOR, "migration_status", ["abort_incoming", "cancel_migration"]),
])
async def test_cancel_in_each_cancellable_phase(phase: Phase, arm: str,
                                                undone: list[str]) -> None:
    w = World([*copying(*range(10, 250, 10)), done()])
    job = w.job()
    seen: list[Phase] = []

    async def cancel() -> None:
        seen.append(job.phase)
        await job.cancel()

    if arm == "checks":
        async def checks() -> None:
            await cancel()
        await job.run(checks)
    else:
        agent = w.dst if arm == "prepare_incoming" else w.src
        agent.on(arm, cancel)
        await job.run()
    assert seen == [phase]
    assert w.store.phases[-2:] == [P.ROLLING_BACK, P.CANCELLED], w.store.notes
    assert w.store.error_code == "MIGRATION_CANCELLED"
    assert "cancel requested by the user" in w.store.notes
    calls = [*w.src.calls, *w.dst.calls]
    for call in undone:
        assert call in calls
    if "abort_incoming" not in undone:
        assert "prepare_incoming" not in calls and "abort_incoming" not in calls
    assert w.running_on() == ["host1"] and w.store.location is None


async def test_cancel_is_refused_past_the_commit_point() -> None:
    w = World()
    job = w.job()
    refusals: list[SegueError] = []

    async def cancel() -> None:
        try:
            await job.cancel()
        except Conflict as err:
            refusals.append(err)

    w.src.on("start_postcopy", cancel)  # post-copy was asked of QEMU: too late
    w.src.script = [*copying(10, 20)]
    w.src.on("start_migration", job.request_postcopy)
    await job.run()
    assert [e.code for e in refusals] == ["MIGRATION_NOT_CANCELLABLE"]
    assert "past its commit point" in refusals[0].message
    assert w.store.phases[-1] == P.COMPLETED


async def test_a_queued_job_leaves_the_queue_or_is_cancelled_through_the_engine() -> None:
    w = World(phase=P.QUEUED)
    await w.job(phase=P.QUEUED).leave_queue()
    assert w.store.transitions == [(P.QUEUED, P.CHECK, "migration slots free on both hosts; "
                                                       "checking again before starting")]
    other = World(phase=P.QUEUED)
    await cancel_queued(other.store, "job-1")
    assert other.store.phases == [P.CANCELLED]
    assert other.store.error_code == "MIGRATION_CANCELLED"
    assert other.store.reason == "cancelled by the user while queued"


# ---- post-copy on the user's request ----

async def test_the_user_switches_a_copy_to_postcopy() -> None:
    w = World([*copying(*range(10, 250, 10))])
    job = w.job()
    w.src.on("migration_status", job.request_postcopy)
    await job.run()
    assert w.store.phases == [P.PREPARE, P.START, P.MONITOR, P.POSTCOPY, P.SWITCHOVER,
                              P.FINALIZE, P.COMPLETED]
    assert "post-copy requested by the user" in w.store.notes
    assert w.store.noted("policy: start_postcopy -- asked by the user: post-copy")
    assert w.src.count("start_postcopy") == 1 and w.store.summary["postcopy"] is True


@pytest.mark.parametrize(("when", "options", "message"), [
    ("checks", MigrationOptionsBody(), "is check, not copying memory"),
    ("migration_status", MigrationOptionsBody(allow_postcopy=False),
     "started with post-copy not allowed"),
])
async def test_a_postcopy_request_is_refused_unless_the_job_copies_with_it_allowed(
        when: str, options: MigrationOptionsBody, message: str) -> None:
    w = World()
    job = w.job(options)
    refusals: list[SegueError] = []

    async def ask() -> None:
        try:
            await job.request_postcopy()
        except Conflict as err:
            refusals.append(err)

    if when == "checks":
        async def checks() -> None:
            await ask()
        await job.run(checks)
    else:
        w.src.on(when, ask)
        await job.run()
    assert [e.code for e in refusals] == ["MIGRATION_POSTCOPY_NOT_POSSIBLE"]
    assert message in refusals[0].message
    assert "start_postcopy" not in w.src.calls and w.store.phases[-1] == P.COMPLETED


async def test_the_policy_starts_postcopy_when_the_guest_outpaces_the_link() -> None:
    w = World([q("active", n * 100 * MiB, 200 * MiB, iteration=n, dirty_pages=50_000,
                 mbps=800) for n in range(1, 5)])
    w.src.dirty_mibs = 300.0  # predicted not to converge: post-copy after the first pass
    await w.job().run()
    assert P.POSTCOPY in w.store.phases and w.store.phases[-1] == P.COMPLETED
    assert w.store.summary["predicted_converges"] is False
    assert w.store.noted("policy: start_postcopy")


async def test_the_job_reads_time_only_from_its_clock() -> None:
    w = World([*copying(*range(1, 40)), done()])
    await w.job().run()
    assert w.store.summary["total_s"] == pytest.approx(w.clock.t - 1000.0, abs=1e-3)
    times = [t for t, _ in w.store.samples]
    assert times == sorted(times) and times[1] - times[0] == pytest.approx(0.2)


async def test_an_unknown_vm_on_the_destination_counts_as_torn_down() -> None:
    w = World([*copying(10), q("failed")])
    w.src.on("start_migration", lambda: w.dst.vms.pop(VM))  # its QEMU died already
    w.src.vms[VM] = VMState.PAUSED
    await w.job().run()
    assert w.store.noted("host2 has no incoming web1: nothing to tear down")
    assert "resume_vm" in w.src.calls and w.running_on() == ["host1"]



async def test_the_summary_says_how_long_and_how_much_the_guest_was_throttled() -> None:
    """Samples that find auto-converge throttling the guest (QEMU's
    ``cpu-throttle-percentage``): the most and the time between throttled samples."""
    w = World()
    w.src.script = [q("active", 10 * MiB, 200 * MiB),
                    q("active", 20 * MiB, 150 * MiB, **{"cpu-throttle-percentage": 40}),
                    q("active", 30 * MiB, 100 * MiB, **{"cpu-throttle-percentage": 60}),
                    q("active", 40 * MiB, 50 * MiB, **{"cpu-throttle-percentage": 60}),
                    q("active", 50 * MiB, 10 * MiB), done()]
    await w.job().run()
    s = w.store.summary
    assert s["throttle_max_pct"] == 60
    assert s["throttled_s"] == pytest.approx(2 * 0.2, abs=0.01)  # two polls apart throttled


# ---- past the commit point: roll forward ----
async def test_a_cancel_that_reaches_qemu_after_it_completed_finishes_the_move() -> None:
    """The user cancels while QEMU copies; QEMU completes before the cancel reaches it:
    the rollback stops at once (nothing torn down, the source not resumed) and the move
    is finished, since the destination may already run the guest."""
    w = World([*copying(10, 20, 30, 40, 50)])
    job = w.job()
    w.src.on("start_migration", job.cancel)

    def completed_first() -> None:  # the cancel lands on a finished migration
        w.src.script = [done()]
        w.src.vms[VM] = VMState.POSTMIGRATE
        w.dst.vms[VM] = VMState.RUNNING

    async def late_cancel(name: str, generation: int | None = None) -> MigrationView:
        w.src.calls.append("cancel_migration")
        completed_first()
        return w.src._view(name)

    w.src.cancel_migration = late_cancel  # type: ignore[method-assign]
    await job.run()
    assert w.store.phases == [P.PREPARE, P.START, P.MONITOR, P.ROLLING_BACK, P.SWITCHOVER,
                              P.FINALIZE, P.COMPLETED], w.store.notes
    assert w.store.noted("the move is finished instead")
    assert "abort_incoming" not in w.dst.calls and "resume_vm" not in w.src.calls
    assert w.store.location == (VM, "host2") and w.running_on() == ["host2"]


async def test_a_cancel_refused_because_the_destination_took_the_vm_over_finishes_the_move(
        ) -> None:
    """As above, but the destination took the VM's lease over before the cancel reached the
    source, whose agent then refuses it at the job's generation (``VM_NOT_OWNED``): the
    rollback finds QEMU completed and finishes the move, at the destination's generation."""
    w = World([*copying(10, 20, 30, 40, 50)])
    w.src.held = 4
    job = w.job(generation=4)
    w.src.on("start_migration", job.cancel)

    def taken_over() -> None:
        w.src.script = [done()]
        w.src.vms[VM] = VMState.POSTMIGRATE
        w.dst.vms[VM] = VMState.RUNNING
        w.src.held, w.dst.held = None, 5

    w.src.on("cancel_migration", taken_over)
    await job.run()
    assert w.store.phases == [P.PREPARE, P.START, P.MONITOR, P.ROLLING_BACK, P.SWITCHOVER,
                              P.FINALIZE, P.COMPLETED], w.store.notes
    assert ("cancel_migration", 4) in w.src.tokens and w.store.noted("the cancel was refused")
    assert "abort_incoming" not in w.dst.calls and "resume_vm" not in w.src.calls
    assert w.store.location == (VM, "host2") and w.store.location_generation == 5


async def test_a_source_agent_gone_as_qemu_completes_lets_the_destination_finish() -> None:
    """The source's agent dies during the copy and QEMU completes on its own: the job
    cannot see it and rolls back, but the destination's agent refuses the teardown (it took
    the VM over and runs it): the commit point was crossed, so the move is finished."""
    w = World([*copying(10, 20, 30)])

    def agent_dies_as_qemu_completes() -> None:
        w.src.vms[VM] = VMState.POSTMIGRATE
        w.dst.vms[VM] = VMState.RUNNING
        w.wire.lease_holder = "host2"
        for method in ("migration_status", "cancel_migration", "get_vm", "events",
                       "release", "resume_vm"):
            w.src.fail(method)

    w.src.on("migration_status", agent_dies_as_qemu_completes)
    await w.job().run()
    assert w.store.phases == [P.PREPARE, P.START, P.MONITOR, P.ROLLING_BACK, P.SWITCHOVER,
                              P.FINALIZE, P.COMPLETED], w.store.notes
    assert w.store.noted("host2 runs web1 already (VM_RUNNING): QEMU completed the copy")
    assert w.store.location == (VM, "host2") and w.running_on() == ["host2"]
    assert "resume_vm" not in w.src.calls


async def test_a_destination_agent_back_within_the_wait_finishes_the_move() -> None:
    """The destination's agent does not answer for 40 s after QEMU completed the copy
    (restarting): the job waits, noting it, and finishes when it answers again."""
    w = World()
    w.dst.fail("get_vm", BOOM, times=40)
    await w.job().run()
    assert w.store.phases == FORWARD, w.store.notes
    assert w.store.noted("waiting for host2 to run web1 (10 s, silent: FAKE_BOOM)")
    # at 10 s the source was asked to run it again: refused, host2 took the lease over
    assert w.store.noted("host1 does not run it again (VM_NOT_OWNED")
    assert w.store.noted("host2 runs web1 after 30 s: rolling forward")
    assert w.store.location == (VM, "host2") and w.running_on() == ["host2"]


async def test_a_destination_agent_gone_for_good_fails_without_undoing_anything() -> None:
    w = World()
    w.dst.fail("get_vm", BOOM)
    await w.job().run()
    assert w.store.phases == [P.PREPARE, P.START, P.MONITOR, P.SWITCHOVER, P.FAILED]
    assert w.store.error_code == "MIGRATION_DEST_UNREACHABLE"
    assert "did not answer for 120 s" in (w.store.reason or "")
    assert not {"cancel_migration", "release"} & set(w.src.calls)
    assert "abort_incoming" not in w.dst.calls
    # host2 took the VM over and runs it, its agent silent; the source's older copy: paused
    assert w.running_on() == ["host2"]


async def test_a_destination_agent_gone_before_it_took_the_vm_over_gives_it_back() -> None:
    """The destination's agent died before it took the lease over: after DEST_PATIENCE_S
    the source runs the VM again (the lease lets it), its QEMU never ran the guest."""
    w = World()
    w.dst.events_ = []  # no RESUME: it never took the VM over
    w.wire.dest_after = VMState.PAUSED  # its QEMU waits (-S) for an agent to resume it
    w.dst.fail("get_vm", BOOM)
    w.dst.fail("abort_incoming", BOOM)
    await w.job().run()
    assert w.store.phases == [P.PREPARE, P.START, P.MONITOR, P.SWITCHOVER, P.FAILED]
    assert w.store.error_code == "MIGRATION_DEST_UNREACHABLE"
    assert "runs on host1 again" in (w.store.reason or "")
    assert w.running_on() == ["host1"] and w.clock.t - 1000.0 < 30


async def test_a_crash_in_finalize_is_noted_and_the_job_stays_to_be_finished() -> None:
    w = World()

    async def broken(vm: str, host: str, generation: int | None) -> None:
        raise RuntimeError("database gone")

    w.store.commit_location = broken  # type: ignore[method-assign]
    await w.job().run()
    assert w.store.phases[-1] == P.FINALIZE
    assert w.store.noted("internal error in finalize: MIGRATION_ERROR: RuntimeError")


async def test_after_a_postcopy_the_summary_says_how_long_the_guest_waited_for_pages() -> None:
    """The destination's QEMU counts the vCPUs' wait for faulted pages (postcopy-blocktime);
    a pre-copy has none."""
    w = World([*copying(*range(10, 250, 10))])
    job = w.job()
    w.src.on("migration_status", job.request_postcopy)

    async def destination_status(name: str) -> MigrationView:
        w.dst.calls.append("migration_status")
        return MigrationView(name=name, role="incoming", state=VMState.RUNNING,
                             migration=q("completed", **{"postcopy-blocktime": 850}))

    w.dst.migration_status = destination_status  # type: ignore[method-assign]
    await job.run()
    assert w.store.summary["postcopy_blocktime_ms"] == 850
    plain = World()
    await plain.job().run()
    assert plain.store.summary["postcopy_blocktime_ms"] is None
