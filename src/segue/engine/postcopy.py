"""A post-copy in flight: wait for QEMU to complete it, recovering a broken stream.

Once QEMU switched to post-copy the destination runs the guest and holds its newest memory:
nothing here rolls back. A stream that breaks (``postcopy-paused``) is recovered once the
destination's migration address answers again and its own side noticed the break:
``migrate-recover`` there, ``migrate`` with ``resume`` on the source. A stream that moves
nothing for ``POSTCOPY_STALL_S`` (a hung TCP connection) is paused on purpose so that it can
be recovered.

Errors: ``MigrationFailed`` with ``MIGRATION_POSTCOPY_FAILED`` (QEMU ended the post-copy
otherwise than completed) or ``MIGRATION_POSTCOPY_LOST`` (the destination's QEMU is gone, or
the stream did not come back within ``POSTCOPY_RECOVER_TIMEOUT_S``); the agents' errors.
"""

from __future__ import annotations

from segue.api.qemu import MigrationStatus
from segue.domain.errors import NotFound, SegueError
from segue.domain.vm import VMState
from segue.engine.context import JobBase
from segue.engine.phases import MigrationFailed

POLL_S = 0.2
RECOVER_POLL_S = 0.5
POSTCOPY_STALL_S = 5.0  # a post-copy stream that moved nothing this long is paused to recover
POSTCOPY_RECOVER_TIMEOUT_S = 600.0
DEST_GONE = frozenset({VMState.STOPPED, VMState.SHUTDOWN, VMState.CRASHED})


async def wait_postcopy(job: JobBase) -> None:
    """Sample the source until QEMU completes the post-copy; recover a paused stream, pause
    a hung one. Raises as the module doc says."""
    best, best_at = -1, job.clock.now()
    while True:
        progress = await job.sample()
        if progress.status == MigrationStatus.COMPLETED:
            return
        if progress.status == MigrationStatus.POSTCOPY_PAUSED:
            await recover(job)
            best, best_at = -1, job.clock.now()
        elif not progress.status.active:
            raise MigrationFailed("MIGRATION_POSTCOPY_FAILED",
                                  f"post-copy ended {progress.status.value}: {progress.error}",
                                  f"the VM's newest memory was on {job.spec.dest}; "
                                  "see both agents' logs")
        elif progress.transferred > best:
            best, best_at = progress.transferred, job.clock.now()
        elif job.clock.now() - best_at > POSTCOPY_STALL_S:
            await pause_hung_stream(job)
            best, best_at = -1, job.clock.now()
        await job.clock.sleep(POLL_S)


async def pause_hung_stream(job: JobBase) -> None:
    """A post-copy stream that moves nothing: pause both sides so it can be recovered (each
    side attempted, a failure noted)."""
    await job.note(f"post-copy moved nothing for {POSTCOPY_STALL_S:.0f} s: "
                   "migrate-pause on both sides to recover it")
    for side, agent in (("source", job.src), ("destination", job.dst)):
        try:
            await agent.pause_migration(job.vm)
        except SegueError as err:
            await job.note(f"migrate-pause on the {side}: {err}")


async def recover(job: JobBase) -> None:
    """Wait for the destination's migration address, then migrate-recover there and resume
    the source into it (each step noted); up to POSTCOPY_RECOVER_TIMEOUT_S."""
    await job.note("post-copy paused (the migration stream broke): waiting "
                   f"for {job.spec.dest}'s migration address")
    deadline = job.clock.now() + POSTCOPY_RECOVER_TIMEOUT_S
    while job.clock.now() < deadline:
        await raise_if_dest_gone(job)
        if await _dest_reachable(job) and await _dest_paused(job):
            try:
                uri = (await job.dst.recover_incoming(job.vm)).uri
                await job.note(f"recover: destination listens on {uri}")
                await job.src.resume_migration(job.vm, uri)
                await job.note("recover: source resumed the post-copy")
                return
            except SegueError as err:
                await job.note(f"recover failed ({err}); retrying")
        await job.clock.sleep(RECOVER_POLL_S)
    raise MigrationFailed("MIGRATION_POSTCOPY_LOST",
                          f"the post-copy stream to {job.spec.dest} did not come back in "
                          f"{POSTCOPY_RECOVER_TIMEOUT_S:.0f} s",
                          "both QEMUs stay paused: restore the migration network, then "
                          "run migrate-recover/migrate resume by hand")


async def raise_if_dest_gone(job: JobBase) -> None:
    """Raise MigrationFailed (``MIGRATION_POSTCOPY_LOST``) if the destination's QEMU is
    gone: it held the newest memory, nothing can recover the post-copy."""
    try:
        state = (await job.dst.get_vm(job.vm)).state.value
    except NotFound:
        state = "gone"
    except SegueError:
        return  # its agent does not answer: it may come back
    if state == "gone" or VMState(state) in DEST_GONE:
        raise MigrationFailed("MIGRATION_POSTCOPY_LOST",
                              f"{job.vm}'s destination QEMU on {job.spec.dest} is {state} "
                              "during post-copy; it held the newest memory",
                              f"the source QEMU on {job.spec.source} stays paused with "
                              "older memory: restart the VM from its disks")


async def _dest_reachable(job: JobBase) -> bool:
    try:
        listener = await job.dst.open_probe_listener()
        probe = await job.src.probe_migration_path(listener.address, listener.port)
    except SegueError:
        return False
    return probe.ok


async def _dest_paused(job: JobBase) -> bool:
    """The destination's side of the stream noticed the break too (QEMU refuses
    migrate-recover before its own status is postcopy-paused)."""
    try:
        status = await job.dst.migration_status(job.vm)
    except SegueError:
        return False
    return status.migration.status == MigrationStatus.POSTCOPY_PAUSED
