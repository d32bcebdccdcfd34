"""Restart recovery: finish or undo a job that a previous controller left running.

What the agents report decides, never a guess:
- ``finalize`` or ``postcopy``: past the commit point: finished forward (a post-copy is
  watched to its end, recovering a paused stream).
- the source's QEMU in post-copy (any phase from ``check`` to ``switchover``): the commit
  point was crossed after the last stored phase: the post-copy is watched to its end.
- a destination that already runs the VM (its agent resumed it when QEMU completed the copy)
  in any phase from ``check`` to ``switchover``: the move is finished (undoing it would rewind
  the guest); the phases between are walked through with that reason.
- ``switchover``, or the source's QEMU reporting ``completed``: past the commit point: the
  job settles the switchover as a running one does (``MigrationJob.settle``: the destination
  runs the VM, or the source runs it again if the destination never took its lease over),
  then finalizes, or fails.
- anything else is rolled back, since no copy in flight survived the old controller's monitor
  loop: the compensating steps the phase implies are pushed again (all of them for a rollback
  the restart interrupted: every step is idempotent) and the job ends ``failed``
  (``CONTROLLER_RESTARTED``).
"""

from __future__ import annotations

import asyncio
import logging

from segue.api.qemu import MigrationStatus
from segue.domain.errors import SegueError
from segue.domain.vm import VMState
from segue.engine import postcopy
from segue.engine.job import MigrationJob
from segue.engine.phases import Phase

log = logging.getLogger(__name__)
FORWARD = [Phase.CHECK, Phase.PREPARE, Phase.START, Phase.MONITOR, Phase.SWITCHOVER,
           Phase.FINALIZE]
COPYING = (Phase.START, Phase.MONITOR)  # the source's migration may run


async def recover(job: MigrationJob, phase: Phase) -> None:
    """Finish or undo ``job``, found in ``phase`` (the job object must have been made in
    that phase); never raises but CancelledError (the outcome is in the job's record)."""
    await job.note(f"controller restarted; job found in {phase}")
    try:
        await _recover(job, phase)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("migration %s: recovery from %s failed", job.id[:8], phase)


async def _recover(job: MigrationJob, phase: Phase) -> None:
    if phase == Phase.FINALIZE:
        job.rollback.commit("found finalizing")
        await asyncio.shield(job.finalize(enter=False))
        return
    if phase == Phase.POSTCOPY:
        job.rollback.commit("found in post-copy")
        await _forward(job, from_postcopy=True)
        return
    # The source first: a destination runs during a post-copy too, and finalizing then
    # would shut down the source that still holds pages the guest needs.
    status = await _source_status(job) if phase in FORWARD else None
    if status is not None and status.postcopy:
        job.rollback.commit("QEMU had switched to post-copy")
        await _walk(job, Phase.MONITOR, "QEMU had switched to post-copy")
        await job.enter(Phase.POSTCOPY, "found QEMU in post-copy")
        await _forward(job, from_postcopy=True)
        return
    if phase in FORWARD and await _dest_state(job) == VMState.RUNNING:
        job.rollback.commit("found the destination running")
        await _walk(job, Phase.FINALIZE, "found the destination running")
        await asyncio.shield(job.finalize(enter=False))
        return
    if phase == Phase.SWITCHOVER or status == MigrationStatus.COMPLETED:
        job.rollback.commit("QEMU had completed the copy")
        await _walk(job, Phase.SWITCHOVER, "QEMU had completed the copy")
        await _forward(job, from_postcopy=False)
        return
    await _roll_back(job, phase)


async def _forward(job: MigrationJob, from_postcopy: bool) -> None:
    """Past the commit point: see the post-copy through (if any), wait for the destination
    to run, finalize; a failure ends the job ``failed`` with no rollback."""
    try:
        if from_postcopy:
            await postcopy.wait_postcopy(job)
            await job.enter(Phase.SWITCHOVER, "post-copy completed; the destination has every page")
        await job.settle()
    except asyncio.CancelledError:
        raise
    except Exception as err:
        await asyncio.shield(job.fail(err))
        return
    await asyncio.shield(job.finalize())


async def _roll_back(job: MigrationJob, phase: Phase) -> None:
    """Push the steps ``phase`` implies (all for an interrupted rollback) and unwind."""
    if phase != Phase.CHECK:
        job.push_teardown()
    if phase in COPYING or phase == Phase.ROLLING_BACK:
        job.push_cancel_source()
    if phase == Phase.ROLLING_BACK:
        await job.note("resuming the interrupted rollback")
    await asyncio.shield(job.roll_back(Phase.FAILED, "controller restarted mid-migration",
                                       "CONTROLLER_RESTARTED",
                                       enter=phase != Phase.ROLLING_BACK))


async def _walk(job: MigrationJob, target: Phase, why: str) -> None:
    """Enter every forward phase after the job's own, up to ``target``, with ``why``."""
    if job.phase not in FORWARD:
        return
    for step in FORWARD[FORWARD.index(job.phase) + 1:FORWARD.index(target) + 1]:
        await job.enter(step, why)


async def _dest_state(job: MigrationJob) -> VMState | None:
    try:
        return (await job.dst.get_vm(job.vm)).state
    except SegueError:
        return None


async def _source_status(job: MigrationJob) -> MigrationStatus | None:
    try:
        return (await job.src.migration_status(job.vm)).migration.status
    except SegueError:
        return None
