"""A post-copy in flight: a broken stream recovered, a hung one paused then recovered, the
destination lost; never a rollback (``engine_fakes`` describes the fakes)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from engine_fakes import VM, MiB, World, copying, done, q

from segue.domain.errors import NotFound, Unavailable
from segue.domain.vm import VMState
from segue.engine.phases import Phase

P = Phase
POSTCOPY_DONE = [P.PREPARE, P.START, P.MONITOR, P.POSTCOPY, P.SWITCHOVER, P.FINALIZE,
                 P.COMPLETED]
POSTCOPY_LOST = [P.PREPARE, P.START, P.MONITOR, P.POSTCOPY, P.FAILED]


def postcopy_world(after_switch: list[object]) -> World:
    """A job that the user switches to post-copy at its first sample; QEMU then answers
    ``after_switch``; the destination's own side reports ``postcopy-paused``."""
    w = World([*copying(10, 20, 30)])
    w.src.after_postcopy = after_switch  # type: ignore[assignment]
    w.dst.script, w.dst.migrating = [q("postcopy-paused")], True
    return w


async def run_postcopy(w: World) -> None:
    job = w.job()
    w.src.on("start_migration", job.request_postcopy)
    await job.run()


def never_rolled_back(w: World) -> None:
    assert P.ROLLING_BACK not in w.store.phases
    assert not {"cancel_migration", "resume_vm"} & set(w.src.calls)
    assert "abort_incoming" not in w.dst.calls


async def test_a_broken_stream_is_recovered_and_the_move_completes() -> None:
    w = postcopy_world([q("postcopy-active", 100 * MiB), q("postcopy-paused", 120 * MiB)])
    w.src.after_resume = [q("postcopy-active", 200 * MiB), done()]
    await run_postcopy(w)
    assert w.store.phases == POSTCOPY_DONE, w.store.notes
    assert w.store.noted("post-copy paused (the migration stream broke): waiting for host2")
    assert w.store.noted("recover: destination listens on tcp:10.0.1.2:4445")
    assert "recover: source resumed the post-copy" in w.store.notes
    assert w.dst.count("recover_incoming") == 1 and w.src.count("resume_migration") == 1
    assert w.store.summary["postcopy"] is True and w.store.location == (VM, "host2")
    never_rolled_back(w)


async def test_recovery_waits_for_the_destination_and_retries_a_failed_recover() -> None:
    w = postcopy_world([q("postcopy-paused", 120 * MiB)])
    w.src.probe_ok = False  # the migration network is down for one more probe
    w.src.on("probe_migration_path", lambda: w.src.on(
        "probe_migration_path", lambda: setattr(w.src, "probe_ok", True)))
    w.dst.fail("recover_incoming", Unavailable("QEMU_ERROR", "not yet", ""), times=1)
    await run_postcopy(w)
    assert w.store.phases == POSTCOPY_DONE, w.store.notes
    assert w.src.count("probe_migration_path") == 3
    assert w.store.noted("recover failed (QEMU_ERROR: not yet); retrying")
    assert w.dst.count("recover_incoming") == 2
    never_rolled_back(w)


async def test_a_hung_stream_is_paused_on_both_sides_then_recovered() -> None:
    w = postcopy_world([q("postcopy-active", 100 * MiB)])
    w.src.on("pause_migration", lambda: setattr(
        w.src, "script", [q("postcopy-paused", 100 * MiB)]))
    await run_postcopy(w)
    assert w.store.noted("post-copy moved nothing for 5 s: migrate-pause on both sides")
    assert w.src.count("pause_migration") == 1 and w.dst.count("pause_migration") == 1
    assert "recover: source resumed the post-copy" in w.store.notes
    assert w.store.phases == POSTCOPY_DONE
    never_rolled_back(w)


def _dest_gone(w: World) -> None:
    w.dst.fail("get_vm", NotFound("VM_NOT_FOUND", "no VM", ""))


def _dest_crashed(w: World) -> None:
    w.src.on("probe_migration_path", lambda: w.dst.vms.__setitem__(VM, VMState.CRASHED))
    w.src.probe_ok = False


def _never_back(w: World) -> None:
    w.src.probe_ok = False


@pytest.mark.parametrize(("what", "setup", "message"), [
    ("destination gone", _dest_gone, "destination QEMU on host2 is gone"),
    ("destination crashed", _dest_crashed, "destination QEMU on host2 is crashed"),
    ("stream never back", _never_back, "did not come back in 600 s"),
])
async def test_a_lost_destination_fails_the_postcopy_without_rollback(
        what: str, setup: Callable[[World], None], message: str) -> None:
    w = postcopy_world([q("postcopy-paused", 120 * MiB)])
    setup(w)
    await run_postcopy(w)
    assert w.store.phases == POSTCOPY_LOST, w.store.notes
    assert w.store.error_code == "MIGRATION_POSTCOPY_LOST"
    assert message in (w.store.reason or "")
    assert w.store.location is None
    never_rolled_back(w)


async def test_qemu_ending_a_postcopy_otherwise_fails_it_without_rollback() -> None:
    w = postcopy_world([q("postcopy-active", 100 * MiB), q("failed", error_desc="EIO")])
    await run_postcopy(w)
    assert w.store.phases == POSTCOPY_LOST
    assert w.store.error_code == "MIGRATION_POSTCOPY_FAILED"
    assert "post-copy ended failed: EIO" in (w.store.reason or "")
    never_rolled_back(w)


@pytest.mark.parametrize(("samples_before", "phases"), [
    (0, [P.PREPARE, P.START, P.MONITOR, P.FAILED]),  # asked of QEMU, not seen switching
    (1, POSTCOPY_LOST),
])
async def test_an_agent_error_past_the_commit_point_fails_the_job_without_rollback(
        samples_before: int, phases: list[Phase]) -> None:
    w = postcopy_world([q("postcopy-active", 100 * MiB), q("postcopy-active", 150 * MiB)])

    def fail_after(answered: int) -> None:
        """``answered`` more samples answer, then every one fails (a hook runs as its own
        call starts, so the failure is set by the hook of the call that must fail)."""
        if answered == 0:
            w.src.fail("migration_status")
        else:
            w.src.on("migration_status", lambda: w.src.on(
                "migration_status", lambda: fail_after(answered - 1)))

    w.src.on("start_postcopy", lambda: fail_after(samples_before))
    await run_postcopy(w)
    assert w.store.phases == phases, w.store.notes
    assert w.store.error_code == "AGENT_UNREACHABLE"
    never_rolled_back(w)
