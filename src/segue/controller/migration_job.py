"""One migration job's run: prepare, start, monitor, switchover, finalize; or roll back.

The job talks to the two agents only. Until the destination runs the VM, any failure
(an agent error, QEMU's migration failing, no progress, the deadline, a cancel) rolls back:
the source's migration is cancelled, the destination's QEMU is torn down, and the source
is made sure to run. Once the destination runs, the job only moves forward: the VM's
record moves to the destination and the source QEMU is shut down. At no moment do two
QEMUs run the VM: the source is resumed only after the destination's QEMU is gone.

The policy (``segue.engine.policy``) is pure; this loop only applies it: while the
destination QEMU starts, it measures the migration link and samples the dirty rate, then
stores the downtime target chosen and a prediction; each sample goes through ``policy.decide``
and every action is applied and noted with its reason. Once QEMU switched to post-copy the
destination holds the newest memory: the job never rolls back from then on. A post-copy whose
stream breaks (``postcopy-paused``; a hung stream is paused on purpose) is recovered once the
destination's migration address answers again: ``migrate-recover`` there, ``migrate`` with
``resume`` on the source.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from segue.agent.client import AsyncAgentClient
from segue.controller import inventory
from segue.domain.errors import NotFound, SegueError
from segue.engine import policy
from segue.engine.phases import MigrationCancelled, MigrationFailed, Phase
from segue.engine.progress import ACTIVE_STATES, Progress, progress_from_query

if TYPE_CHECKING:
    from segue.controller.migrations import Endpoint, MigrationOptions, MigrationService

log = logging.getLogger(__name__)
FORWARD = [Phase.CHECK, Phase.PREPARE, Phase.START, Phase.MONITOR, Phase.SWITCHOVER,
           Phase.FINALIZE]
POLL_S = 0.2
SWITCHOVER_TIMEOUT_S = 30.0
POSTCOPY_STALL_S = 5.0  # a post-copy stream that moved nothing this long is paused to recover
POSTCOPY_RECOVER_TIMEOUT_S = 600.0


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
        self.postcopy_request = service.postcopy_requests.setdefault(migration_id,
                                                                     asyncio.Event())
        self.started = time.monotonic()
        self.prepared = False
        self.migrating = False
        self.last: Progress | None = None
        self.postcopy = False  # QEMU switched to post-copy: never roll back from here
        self.postcopy_requested = False  # QEMU may switch at any moment: no more cancels
        self.multifd = 0
        self.preempt: bool | None = None
        self.settings = policy.initial_settings(options)
        self.policy_state = policy.initial_state(options)
        self.prediction: dict[str, Any] = {}

    def qemu_settings(self) -> tuple[dict[str, bool], dict[str, Any]]:
        """Capabilities and parameters both QEMUs get (same on both sides; the policy's)."""
        return dict(self.settings.capabilities), dict(self.settings.parameters)

    async def run(self, checks: Callable[[], Awaitable[None]] | None = None) -> None:
        """The whole job; never raises (the outcome is in the job's record). ``checks``: run
        first, in ``check`` (a job leaving the queue); what it raises fails the job."""
        try:
            if checks is not None:
                await checks()
            spec = await self._prepare()
            await self._start(spec)
            await self._monitor()
            await self._switchover()
        except asyncio.CancelledError:
            if self.postcopy:
                raise  # the destination owns the VM; a new controller finishes the job
            await asyncio.shield(self._rollback(Phase.FAILED, "controller shutting down",
                                                "CONTROLLER_STOPPED"))
            raise
        except MigrationCancelled as err:
            await asyncio.shield(self._rollback(Phase.CANCELLED, err.message, err.code))
            return
        except Exception as err:
            code = err.code if isinstance(err, SegueError) else "MIGRATION_ERROR"
            message = err.message if isinstance(err, SegueError) else repr(err)
            if self.postcopy:  # no rollback: the source no longer has the newest memory
                self.service.transition(self.id, Phase.FAILED, message, reason=message,
                                        error_code=code)
                return
            await asyncio.shield(self._rollback(Phase.FAILED, message, code))
            return
        await asyncio.shield(self._finalize())

    def _check_cancel(self) -> None:
        if self.postcopy_requested:
            return  # a cancel could reach QEMU after its switch and lose the VM
        if self.cancel_event.is_set():
            raise MigrationCancelled("MIGRATION_CANCELLED", "cancelled by the user", "")
        if time.monotonic() - self.started > self.options.deadline_s:
            raise MigrationFailed("MIGRATION_DEADLINE",
                                  f"not done within the {self.options.deadline_s:.0f} s deadline",
                                  "raise the deadline or the downtime limit")

    async def _prepare(self) -> dict[str, Any]:
        """Start the destination QEMU while measuring the link and sampling the dirty rate
        (side by side: the sample's second is not added to the move), then settle the
        policy's settings from the measurement."""
        self.service.transition(self.id, Phase.PREPARE, f"destination {self.dest.host}")
        self._check_cancel()
        spec = (await self.src.get_vm(self.vm))["spec"]
        self.source_facts = self.service.host_facts(self.source.host)
        self._choose_streams()
        caps, params = self.qemu_settings()
        measuring = asyncio.create_task(self._measure(), name=f"measure-{self.id[:8]}")
        self.prepared = True  # from here on, rollback tears the destination down
        try:
            incoming = await self.dst.prepare_incoming(spec, self.id, caps, params)
        except BaseException:
            measuring.cancel()
            raise
        self.uri = str(incoming["uri"])
        self.service.note(self.id, f"destination QEMU (pid {incoming.get('pid')}) listens on "
                                   f"{self.uri}")
        link, dirty = await measuring
        self._plan(int(spec.get("memory_mib") or 0) * 1024**2, link, dirty)
        return dict(spec)

    def _choose_streams(self) -> None:
        """Multifd or one stream, and the post-copy preempt channel, from both hosts' facts
        (the destination needs them before it listens, so before anything is measured);
        noted with the reason."""
        src, dst = self.source_facts, self.service.host_facts(self.dest.host)
        speeds = [f.migration.speed_mbps or 0 for f in (src, dst)]
        nic_bps = min(speeds) * 1e6 / 8 if all(speeds) else None
        cpus = min(max(1, f.cpu.logical_cpus) for f in (src, dst))
        oldest = policy.oldest_version([f.qemu.version for f in (src, dst)])
        self.multifd, why = policy.multifd_channels(self.options, nic_bps, cpus, oldest)
        self.preempt = policy.postcopy_preempt(self.options, oldest)
        self.settings = policy.initial_settings(self.options, multifd=self.multifd,
                                                preempt=self.preempt)
        self.service.note(self.id, why)

    async def _measure(self) -> tuple[float | None, float | None]:
        """(link bytes/s, dirty bytes/s), side by side; each None when it could not be
        measured (noted). Cancelled, it cancels both."""
        async with asyncio.TaskGroup() as tg:
            link = tg.create_task(self._measure_link())
            dirty = tg.create_task(self._sample_dirty_rate())
        return link.result(), dirty.result()

    async def _sample_dirty_rate(self) -> float | None:
        """The guest's dirty rate in bytes/s; None (noted) when QEMU could not measure it."""
        try:
            sample = await self.src.dirty_rate(self.vm)
        except SegueError as err:
            self.service.note(self.id, f"no dirty-rate sample ({err.code}): no prediction")
            return None
        return float(sample["dirty_rate_mibs"]) * 2**20

    async def _measure_link(self) -> float | None:
        """The migration link's rate from a short TCP stream between the two migration
        addresses; None (noted) when it cannot be measured."""
        try:
            sink = await self.dst.open_probe_listener(sink=True)
            answer = await self.src.measure_throughput(sink["address"], int(sink["port"]))
        except SegueError as err:
            self.service.note(self.id, f"link not measured ({err.code}): {err.message}")
            return None
        if not answer.get("ok"):
            self.service.note(self.id, f"link not measured: {answer.get('error')}")
            return None
        return float(answer["bytes_per_s"])

    def _plan(self, memory: int, measured: float | None, dirty: float | None) -> None:
        """The downtime target, the prediction and the early post-copy decision, from the
        measurements; stored in the job's summary and noted."""
        link = policy.link_estimate(self.options, measured)
        downtime, why = policy.choose_downtime(self.options, memory, link, dirty or 0.0)
        cache, cache_why = policy.xbzrle_cache(memory, link, dirty or 0.0, self.multifd)
        self.settings = policy.initial_settings(self.options, downtime, self.multifd, cache,
                                                self.preempt)
        self.prediction = {"link_measured_mibs": round(measured / 2**20, 1) if measured
                           else None, "link_estimate_mibs": round(link / 2**20, 1),
                           "downtime_target_ms": downtime, "downtime_reason": why,
                           "xbzrle_cache_mib": cache // 2**20, "xbzrle_reason": cache_why}
        if dirty is None:
            self.policy_state = policy.initial_state(self.options, downtime_ms=downtime)
            self.service.set_summary(self.id, dict(self.prediction))
            self.service.note(self.id, why)
            return
        guess = policy.predict(memory, link, dirty, downtime)
        risk = policy.multipass_risk(self.source_facts.cpu.accel,
                                     self.source_facts.qemu.version, memory, link, dirty)
        self.policy_state = policy.initial_state(self.options, guess, downtime, risk)
        self.prediction.update({"sampled_dirty_rate_mibs": round(dirty / 2**20, 2),
                                **guess.to_summary(), "postcopy_at_once":
                                self.policy_state.early_postcopy})
        self.service.set_summary(self.id, dict(self.prediction))
        self.service.note(self.id, f"{why}; prediction: {guess.reason}; about "
                                   f"{guess.total_s:.1f} s")
        if risk and not self.options.allow_postcopy:
            self.service.note(self.id, f"warning: {risk}; post-copy is not allowed, so "
                                       "pre-copy runs anyway")

    async def _start(self, spec: dict[str, Any]) -> None:
        self.service.transition(self.id, Phase.START, f"source {self.source.host} -> {self.uri}")
        self._check_cancel()
        caps, params = self.qemu_settings()
        self.migrating = True
        await self.src.start_migration(self.vm, self.uri, caps, params)
        self.service.note(self.id, f"capabilities {caps}, parameters {params}: "
                                   + "; ".join(self.settings.reasons))

    async def _sample(self) -> Progress:
        status = await self.src.migration_status(self.vm)
        progress = progress_from_query(status.get("migration") or {})
        self.last = progress
        self.service.record_sample(self.id, time.monotonic() - self.started, progress.to_dict())
        return progress

    async def _monitor(self) -> None:
        """Pre-copy until QEMU completes it or switches to post-copy (then ``_postcopy``)."""
        self.service.transition(self.id, Phase.MONITOR, "copying memory while the VM runs")
        best, best_at = -1, time.monotonic()
        while True:
            progress = await self._sample()
            if progress.status == "completed":
                return
            if progress.status.startswith("postcopy"):
                await self._postcopy()
                return
            _raise_if_ended(progress)
            if progress.transferred > best:
                best, best_at = progress.transferred, time.monotonic()
            elif time.monotonic() - best_at > self.options.stall_timeout_s:
                raise MigrationFailed("MIGRATION_STALLED",
                                      f"no data moved for {self.options.stall_timeout_s:.0f} s",
                                      "check the migration network between the hosts")
            self._check_cancel()
            await self._apply_policy(progress)
            await asyncio.sleep(POLL_S)

    async def _apply_policy(self, progress: Progress) -> None:
        """One ``policy.decide`` on this sample; every action applied and noted. A user's
        post-copy request makes the policy start it at this sample."""
        if self.postcopy_request.is_set() and not self.policy_state.postcopy:
            self.policy_state = replace(self.policy_state, early_postcopy="asked by the user",
                                        early_postcopy_iteration=0)
        self.policy_state, actions = policy.decide(
            self.policy_state, progress, time.monotonic() - self.started, self.options)
        for action in actions:
            self.service.note(self.id, f"policy: {action.kind} {action.parameters or ''}"
                                       f"-- {action.reason}")
            if action.kind == "abort":
                raise MigrationFailed("MIGRATION_DEADLINE", action.reason,
                                      "raise the deadline, the downtime limit, or allow "
                                      "post-copy")
            if action.kind == "set_parameters":
                await self.src.set_migration_parameters(self.vm, action.parameters)
            elif action.kind == "start_postcopy":
                self.postcopy_requested = True
                await self.src.start_postcopy(self.vm)

    async def _postcopy(self) -> None:
        """The destination runs the guest; wait for QEMU to complete, recovering a paused
        stream; never rolls back (see the module doc)."""
        self.postcopy = True
        self.service.transition(self.id, Phase.POSTCOPY,
                                "post-copy: the destination runs the VM and pulls the rest")
        await self._wait_postcopy()

    async def _wait_postcopy(self) -> None:
        best, best_at = -1, time.monotonic()
        while True:
            progress = await self._sample()
            if progress.status == "completed":
                return
            if progress.status == "postcopy-paused":
                await self._recover_postcopy()
                best, best_at = -1, time.monotonic()
            elif progress.status not in ACTIVE_STATES:
                raise MigrationFailed("MIGRATION_POSTCOPY_FAILED",
                                      f"post-copy ended {progress.status}: {progress.error}",
                                      f"the VM's newest memory was on {self.dest.host}; "
                                      "see both agents' logs")
            elif progress.transferred > best:
                best, best_at = progress.transferred, time.monotonic()
            elif time.monotonic() - best_at > POSTCOPY_STALL_S:
                await self._pause_hung_stream()
                best, best_at = -1, time.monotonic()
            await asyncio.sleep(POLL_S)

    async def _pause_hung_stream(self) -> None:
        """A post-copy stream that moves nothing: pause both sides so it can be recovered."""
        self.service.note(self.id, f"post-copy moved nothing for {POSTCOPY_STALL_S:.0f} s: "
                                   "migrate-pause on both sides to recover it")
        for side, call in (("source", self.src.pause_migration(self.vm)),
                           ("destination", self.dst.pause_migration(self.vm))):
            try:
                await call
            except SegueError as err:
                self.service.note(self.id, f"migrate-pause on the {side}: {err}")

    async def _recover_postcopy(self) -> None:
        """Wait for the destination's migration address, then migrate-recover there and
        resume the source into it (each step noted); up to POSTCOPY_RECOVER_TIMEOUT_S."""
        self.service.note(self.id, "post-copy paused (the migration stream broke): waiting "
                                   f"for {self.dest.host}'s migration address")
        deadline = time.monotonic() + POSTCOPY_RECOVER_TIMEOUT_S
        while time.monotonic() < deadline:
            await self._raise_if_dest_gone()
            if await self._dest_reachable() and await self._dest_paused():
                try:
                    uri = str((await self.dst.recover_incoming(self.vm))["uri"])
                    self.service.note(self.id, f"recover: destination listens on {uri}")
                    await self.src.resume_migration(self.vm, uri)
                    self.service.note(self.id, "recover: source resumed the post-copy")
                    return
                except SegueError as err:
                    self.service.note(self.id, f"recover failed ({err}); retrying")
            await asyncio.sleep(0.5)
        raise MigrationFailed("MIGRATION_POSTCOPY_LOST",
                              f"the post-copy stream to {self.dest.host} did not come back in "
                              f"{POSTCOPY_RECOVER_TIMEOUT_S:.0f} s",
                              "both QEMUs stay paused: restore the migration network, then "
                              "run migrate-recover/migrate resume by hand")

    async def _raise_if_dest_gone(self) -> None:
        """Raise MigrationFailed (``MIGRATION_POSTCOPY_LOST``) if the destination's QEMU is
        gone: it held the newest memory, nothing can recover the post-copy."""
        try:
            state = (await self.dst.get_vm(self.vm))["state"]
        except NotFound:
            state = "gone"
        except SegueError:
            return  # its agent does not answer: it may come back
        if state in ("stopped", "shutdown", "crashed", "gone"):
            raise MigrationFailed("MIGRATION_POSTCOPY_LOST",
                                  f"{self.vm}'s destination QEMU on {self.dest.host} is {state} "
                                  "during post-copy; it held the newest memory",
                                  f"the source QEMU on {self.source.host} stays paused with "
                                  "older memory: restart the VM from its disks")

    async def _dest_reachable(self) -> bool:
        try:
            listener = await self.dst.open_probe_listener()
            probe = await self.src.probe_migration_path(listener["address"],
                                                        int(listener["port"]))
        except SegueError:
            return False
        return bool(probe.get("ok"))

    async def _dest_paused(self) -> bool:
        """The destination's side of the stream noticed the break too (QEMU refuses
        migrate-recover before its own status is postcopy-paused)."""
        try:
            status = await self.dst.migration_status(self.vm)
        except SegueError:
            return False
        return (status.get("migration") or {}).get("status") == "postcopy-paused"

    async def _switchover(self) -> None:
        self.service.transition(self.id, Phase.SWITCHOVER,
                                "post-copy completed; the destination has every page"
                                if self.postcopy else
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
        if phase == Phase.POSTCOPY:
            await self._resume_postcopy()
            return
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

    async def _resume_postcopy(self) -> None:
        """A post-copy the old controller left: wait for it (recovering it if paused), never
        roll back."""
        self.postcopy = True
        try:
            await self._wait_postcopy()
            await self._switchover()
        except Exception as err:
            message = err.message if isinstance(err, SegueError) else repr(err)
            self.service.transition(self.id, Phase.FAILED, message, reason=message,
                                    error_code="MIGRATION_POSTCOPY_FAILED")
            return
        await asyncio.shield(self._finalize())

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
        summary["actual_total_s"] = (round(summary["qemu_total_ms"] / 1000, 2)
                                     if summary.get("qemu_total_ms") else summary["total_s"])
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
            **self.prediction, "postcopy": self.postcopy,
            "downtime_limit_ms": self.policy_state.downtime_ms,
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


def _raise_if_ended(progress: Progress) -> None:
    """Raise MigrationFailed if QEMU's pre-copy ended without completing."""
    if progress.status in ("failed", "cancelled") or progress.status not in ACTIVE_STATES:
        raise MigrationFailed("MIGRATION_QEMU_FAILED",
                              f"QEMU's migration ended {progress.status}: "
                              f"{progress.error or 'no reason given'}",
                              "see the agents' logs; the VM stays on its source")


def _last_event(events: list[dict[str, Any]], name: str) -> float | None:
    stamps = [float(e["timestamp"]) for e in events if e.get("event") == name]
    return stamps[-1] if stamps else None
