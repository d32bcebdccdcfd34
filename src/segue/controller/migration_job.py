"""One migration job's run: prepare, start, monitor, switchover, finalize; or roll back.

The job talks to the two agents only. Until the destination runs the VM, any failure
(an agent error, QEMU's migration failing, no progress, the deadline, a cancel) rolls back:
the source's migration is cancelled, the destination's QEMU is torn down, and the source
is made sure to run. Once the destination runs, the job only moves forward: the VM's
record moves to the destination and the source QEMU is shut down. At no moment do two
QEMUs run the VM: the source is resumed only after the destination's QEMU is gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from segue.agent.client import AsyncAgentClient
from segue.controller import inventory
from segue.domain.errors import SegueError
from segue.engine.phases import MigrationCancelled, MigrationFailed, Phase
from segue.engine.progress import ACTIVE_STATES, Progress, progress_from_query

if TYPE_CHECKING:
    from segue.controller.migrations import Endpoint, MigrationOptions, MigrationService

log = logging.getLogger(__name__)
FORWARD = [Phase.CHECK, Phase.PREPARE, Phase.START, Phase.MONITOR, Phase.SWITCHOVER,
           Phase.FINALIZE]
POLL_S = 0.2
SWITCHOVER_TIMEOUT_S = 30.0
UNCAPPED_BANDWIDTH = 100 * 1024**3  # bytes/s: QEMU's cap set out of the way


class MigrationJob:
    """Runs one accepted migration to completion or back to where it started."""

    def __init__(self, service: MigrationService, migration_id: str, vm: str,
                 source: Endpoint, dest: Endpoint, options: MigrationOptions) -> None:
        self.service = service
        self.id = migration_id
        self.vm = vm
        self.source = source
        self.dest = dest
        self.options = options
        self.src: AsyncAgentClient = service.agents.client(source.url)
        self.dst: AsyncAgentClient = service.agents.client(dest.url)
        self.cancel_event = service.cancel_events[migration_id]
        self.started = time.monotonic()
        self.prepared = False
        self.migrating = False
        self.last: Progress | None = None

    def qemu_settings(self) -> tuple[dict[str, bool], dict[str, Any]]:
        """Capabilities and parameters both QEMUs get (same on both sides)."""
        caps = {"events": True}
        bandwidth = (self.options.max_bandwidth_mibs * 1024**2
                     if self.options.max_bandwidth_mibs else UNCAPPED_BANDWIDTH)
        params = {"downtime-limit": self.options.downtime_limit_ms, "max-bandwidth": bandwidth}
        return caps, params

    async def run(self) -> None:
        """The whole job; never raises (the outcome is in the job's record)."""
        try:
            spec = await self._prepare()
            await self._start(spec)
            await self._monitor()
            await self._switchover()
        except asyncio.CancelledError:
            await asyncio.shield(self._rollback(Phase.FAILED, "controller shutting down",
                                                "CONTROLLER_STOPPED"))
            raise
        except MigrationCancelled as err:
            await asyncio.shield(self._rollback(Phase.CANCELLED, err.message, err.code))
            return
        except Exception as err:
            code = err.code if isinstance(err, SegueError) else "MIGRATION_ERROR"
            message = err.message if isinstance(err, SegueError) else repr(err)
            await asyncio.shield(self._rollback(Phase.FAILED, message, code))
            return
        await asyncio.shield(self._finalize())

    def _check_cancel(self) -> None:
        if self.cancel_event.is_set():
            raise MigrationCancelled("MIGRATION_CANCELLED", "cancelled by the user", "")
        if time.monotonic() - self.started > self.options.deadline_s:
            raise MigrationFailed("MIGRATION_DEADLINE",
                                  f"not done within the {self.options.deadline_s:.0f} s deadline",
                                  "raise the deadline or the downtime limit")

    async def _prepare(self) -> dict[str, Any]:
        self.service.transition(self.id, Phase.PREPARE, f"destination {self.dest.host}")
        self._check_cancel()
        spec = (await self.src.get_vm(self.vm))["spec"]
        caps, params = self.qemu_settings()
        self.prepared = True  # from here on, rollback tears the destination down
        incoming = await self.dst.prepare_incoming(spec, self.id, caps, params)
        self.uri = str(incoming["uri"])
        self.service.note(self.id, f"destination QEMU (pid {incoming.get('pid')}) listens on "
                                   f"{self.uri}")
        return dict(spec)

    async def _start(self, spec: dict[str, Any]) -> None:
        self.service.transition(self.id, Phase.START, f"source {self.source.host} -> {self.uri}")
        self._check_cancel()
        caps, params = self.qemu_settings()
        self.migrating = True
        await self.src.start_migration(self.vm, self.uri, caps, params)
        self.service.note(self.id, f"capabilities {caps}, parameters {params}")

    async def _monitor(self) -> None:
        self.service.transition(self.id, Phase.MONITOR, "copying memory while the VM runs")
        best, best_at = -1, time.monotonic()
        while True:
            status = await self.src.migration_status(self.vm)
            progress = progress_from_query(status.get("migration") or {})
            self.last = progress
            self.service.record_sample(self.id, time.monotonic() - self.started,
                                       progress.to_dict())
            if progress.status == "completed":
                return
            if progress.status in ("failed", "cancelled") or progress.status not in ACTIVE_STATES:
                raise MigrationFailed("MIGRATION_QEMU_FAILED",
                                      f"QEMU's migration ended {progress.status}: "
                                      f"{progress.error or 'no reason given'}",
                                      "see the agents' logs; the VM stays on its source")
            if progress.transferred > best:
                best, best_at = progress.transferred, time.monotonic()
            elif time.monotonic() - best_at > self.options.stall_timeout_s:
                raise MigrationFailed("MIGRATION_STALLED",
                                      f"no data moved for {self.options.stall_timeout_s:.0f} s",
                                      "check the migration network between the hosts")
            self._check_cancel()
            await asyncio.sleep(POLL_S)

    async def _switchover(self) -> None:
        self.service.transition(self.id, Phase.SWITCHOVER,
                                "source paused and sent the rest; waiting for the destination")
        deadline = time.monotonic() + SWITCHOVER_TIMEOUT_S
        while time.monotonic() < deadline:
            info = await self.dst.get_vm(self.vm)
            if info["state"] == "running":
                return
            if info["state"] not in ("inmigrate", "paused", "starting"):
                break
            await asyncio.sleep(0.02)
        raise MigrationFailed("MIGRATION_DEST_NOT_RUNNING",
                              f"the destination did not resume {self.vm} after the copy",
                              "see the destination agent's log; the VM goes back to its source")

    async def recover(self, phase: Phase) -> None:
        """Finish or undo a job that a previous controller left in ``phase``; never raises.

        A destination that already runs the VM wins (the move is finished); anything else is
        rolled back, since no copy in flight survived the old controller's monitor loop.
        """
        self.service.note(self.id, f"controller restarted; job found in {phase}")
        self.prepared = phase != Phase.CHECK
        self.migrating = phase in (Phase.START, Phase.MONITOR, Phase.SWITCHOVER)
        try:
            dest_state = (await self.dst.get_vm(self.vm))["state"]
        except SegueError:
            dest_state = None
        if phase == Phase.FINALIZE or (dest_state == "running" and phase in FORWARD):
            # The destination runs (its agent resumed it when QEMU completed the copy):
            # undoing that now would rewind the guest; the move is finished instead.
            for step in FORWARD[FORWARD.index(phase) + 1:] if phase in FORWARD else []:
                self.service.transition(self.id, step, "found the destination running")
            await asyncio.shield(self._finalize(enter=False))
            return
        if phase == Phase.ROLLING_BACK:
            self.service.note(self.id, "resuming the interrupted rollback")
        await asyncio.shield(self._rollback(Phase.FAILED, "controller restarted mid-migration",
                                            "CONTROLLER_RESTARTED",
                                            enter=phase != Phase.ROLLING_BACK))

    async def _finalize(self, enter: bool = True) -> None:
        """The destination runs the VM: make it the owner, then shut the source QEMU down."""
        if enter:
            self.service.transition(self.id, Phase.FINALIZE, f"{self.dest.host} runs {self.vm}")
        summary = await self._summary()
        try:
            await self.dst.claim(self.vm)
        except SegueError as err:
            self.service.note(self.id, f"claim on {self.dest.host} failed: {err}; retrying")
            await asyncio.sleep(0.5)
            await self._retry(self.dst.claim(self.vm))
        with self.service.db.session() as session:
            inventory.move_vm(session, self.vm, self.dest.host)
        await self._release_source()
        summary["total_s"] = round(time.monotonic() - self.started, 3)
        self.service.set_summary(self.id, summary)
        self.service.transition(self.id, Phase.COMPLETED,
                                f"{self.vm} runs on {self.dest.host} in {summary['total_s']} s")

    async def _release_source(self) -> None:
        """Shut the source QEMU down once it reached ``postmigrate`` (QEMU reports the
        migration completed a moment before the source's run state says so)."""
        deadline = time.monotonic() + 10.0
        try:
            while (await self.src.get_vm(self.vm))["state"] != "postmigrate":
                if time.monotonic() > deadline:
                    raise MigrationFailed("MIGRATION_SOURCE_NOT_POSTMIGRATE",
                                          "the source never reached postmigrate",
                                          "its QEMU stays paused; destroy it by hand")
                await asyncio.sleep(0.02)
            await self.src.release(self.vm)
        except SegueError as err:
            self.service.note(self.id, f"release on {self.source.host} failed: {err}")

    async def _retry(self, call: Any) -> None:
        try:
            await call
        except SegueError as err:
            self.service.note(self.id, f"retry failed: {err}")

    async def _summary(self) -> dict[str, Any]:
        """What the move cost, from QEMU's final numbers and the two QMP event streams."""
        final = progress_from_query(
            (await self.src.migration_status(self.vm)).get("migration") or {})
        stop = _last_event(await self.src.events(self.vm), "STOP")
        resume = _last_event(await self.dst.events(self.vm), "RESUME")
        return {
            "qemu_downtime_ms": final.downtime_ms, "qemu_total_ms": final.total_time_ms,
            "setup_ms": final.setup_time_ms, "bytes_sent": final.transferred,
            "ram_total": final.total, "iterations": final.iteration,
            "switchover_ms": round((resume - stop) * 1000, 1) if stop and resume else None,
            "source_stop_at": stop, "dest_resume_at": resume,
        }

    async def _rollback(self, outcome: Phase, reason: str, code: str,
                        enter: bool = True) -> None:
        """Undo everything, every step attempted even if one fails; record the outcome."""
        if enter:
            self.service.transition(self.id, Phase.ROLLING_BACK, reason)
        if self.migrating:
            await self._step("cancel the source's migration", self._cancel_source())
        dest_gone = not self.prepared
        if self.prepared:
            dest_gone = await self._step("tear the destination down",
                                         self.dst.abort_incoming(self.vm))
        # Resuming a source whose copy completed while the destination may still run would
        # make two running VMs: only with the destination surely gone.
        await self._step("make sure the source runs", self._ensure_source_runs(dest_gone))
        self.service.transition(self.id, outcome, reason, reason=reason, error_code=code)

    async def _step(self, what: str, call: Any) -> bool:
        """Run one rollback step; True if it succeeded (failures are logged, never raised)."""
        try:
            await call
        except Exception as err:
            log.warning("migration %s rollback: %s failed: %r", self.id[:8], what, err)
            self.service.note(self.id, f"rollback: {what}: FAILED ({err})")
            return False
        self.service.note(self.id, f"rollback: {what}: done")
        return True

    async def _cancel_source(self) -> None:
        status = await self.src.migration_status(self.vm)
        if (status.get("migration") or {}).get("status") in ACTIVE_STATES:
            await self.src.cancel_migration(self.vm)
        for _ in range(100):
            status = await self.src.migration_status(self.vm)
            if (status.get("migration") or {}).get("status") not in ACTIVE_STATES:
                return
            await asyncio.sleep(0.1)

    async def _ensure_source_runs(self, dest_gone: bool) -> None:
        info = await self.src.get_vm(self.vm)
        if info["state"] in ("paused", "postmigrate"):
            if not dest_gone:
                raise MigrationFailed(
                    "MIGRATION_SPLIT_UNSAFE",
                    f"{self.vm} stays paused on {self.source.host}: its destination "
                    f"{self.dest.host} could not be confirmed gone",
                    f"check {self.dest.host}; resume the source only if it does not run there")
            await self.src.resume_vm(self.vm)
            info = await self.src.get_vm(self.vm)
        if info["state"] != "running":
            raise MigrationFailed("MIGRATION_SOURCE_NOT_RUNNING",
                                  f"{self.vm} is {info['state']} on {self.source.host}",
                                  "look at the source host")


def _last_event(events: list[dict[str, Any]], name: str) -> float | None:
    stamps = [float(e["timestamp"]) for e in events if e.get("event") == name]
    return stamps[-1] if stamps else None
