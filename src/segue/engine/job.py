"""One migration job's run: check, prepare, start, monitor, switchover, finalize; or roll back.

The job talks to the two agents through ``AgentPort``s, keeps its record through a
``JobStore``, reads the hosts' facts from a ``FactsSource`` and the time from a ``Clock``
(``segue.engine.ports``); it knows no HTTP and no SQL. Until its commit point, any failure
(an agent error, QEMU's migration failing, no progress, the deadline, a cancel) rolls back
through the stack of compensating steps pushed as the job went (``segue.engine.context``):
the source's migration is cancelled, the destination's QEMU is torn down, and the source is
made sure to run, only once the destination is confirmed gone. At no moment do two QEMUs run
the VM.

The commit point is QEMU reporting the copy ``completed``, or post-copy being requested of it:
from then on the destination may run guest code, the stack is dropped and the job only rolls
forward. It waits for the destination to run the VM (``ROLL_FORWARD_TIMEOUT_S``, noted as it
goes): a destination agent that restarts meanwhile takes the VM's lease over and resumes it,
and the job finishes. A cancel that reaches QEMU after it completed is found by the rollback
(``CommitCrossed``), which stops there and finishes the move instead. A failure past the point
ends ``failed`` with both QEMUs left as they are (the VM's lease says which may run: the
source's resume is refused once the destination took it over), and the error says what to
look at. One case goes back: a destination whose agent answers that its QEMU does not run the
VM and never resumed it (no RESUME among its events) ran no guest code, so the source's
paused memory is still the newest: the destination is torn down (its agent refuses that for
a running VM, and returns the lease unused) and the source resumed; the job still ends
``failed``. Once the destination runs, the VM's location is committed to the destination
(``JobStore.commit_location``) and the source QEMU is shut down. An unexpected error in the
last steps is recorded on the job (``record_crash``), never only logged.

The job is given its policy (``segue.engine.policies``; Segue's by default): while the
destination QEMU starts, the job measures the migration link and samples the dirty rate (side
by side, in a TaskGroup) when the policy wants them, and the policy settles its settings;
each progress sample goes through ``policy.decide`` and every action is applied and noted
with its reason. A post-copy is watched by ``segue.engine.postcopy``; a job a previous
controller left is picked up by ``segue.engine.recovery``.

The summary (``set_summary``) holds whether the stream is TLS (``encrypted``, as the
source's QEMU reported at the start; a migration asked for TLS that the source does not
encrypt fails), the policy's plan (``link_measured_mibs``,
``downtime_target_ms``, ``downtime_bound_ms``, ``predicted_*`` with ``predicted_total_s`` and
``predicted_downtime_ms``, ...), the last correction of its prediction from the passes
(``corrected_*``, carried by the policy's actions) and, once completed: ``postcopy``,
``downtime_limit_ms``, ``qemu_downtime_ms``, ``qemu_total_ms``, ``setup_ms``, ``bytes_sent``,
``ram_total``, ``iterations``, ``switchover_ms``, ``source_stop_at``, ``dest_resume_at``,
``total_s``, ``actual_total_s``, how much auto-converge slowed the guest
(``throttle_max_pct``, ``throttled_s``), after a post-copy how long the guest's vCPUs
waited for faulted pages (``postcopy_blocktime_ms``), and the prediction's errors
(``predicted_total_error``, ``predicted_downtime_error``, ``predicted_downtime_error_ms``,
``corrected_*_error``: ``segue.engine.prediction.prediction_errors``).

``run`` and ``recover`` never raise (but ``CancelledError``): the outcome is in the record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TypeVar

from pydantic import JsonValue

from segue.api.agent import IncomingAnswer
from segue.api.agent import VMEvent as AgentEvent
from segue.api.qemu import MigrationStatus
from segue.api.vm import VMInfo, VMSpecBody
from segue.domain.errors import NotFound, SegueError
from segue.domain.vm import VMState
from segue.engine import postcopy
from segue.engine.context import JobBase, JobSpec, Ports
from segue.engine.phases import MigrationCancelled, MigrationFailed, Phase
from segue.engine.policies import MigrationPolicy, SeguePolicy
from segue.engine.prediction import prediction_errors
from segue.engine.progress import Progress, progress_from_query

log = logging.getLogger(__name__)
POLL_S = 0.2
SWITCHOVER_POLL_S = 0.02
SILENT_POLL_S = 1.0  # a destination agent that does not answer is asked again this often
DEST_PATIENCE_S = 10.0  # past the commit point: how long the destination has to run the VM
#   before the source is asked to run it again (refused if the destination took it over)
ROLL_FORWARD_TIMEOUT_S = 120.0  # past the commit point: how long the job waits for the
#   destination to run the VM (an agent restart, a storage hiccup) before it ends
ROLL_FORWARD_NOTE_S = 10.0  # how often the wait is noted in the job
CLAIM_RETRY_S = 0.5
RELEASE_TIMEOUT_S = 10.0
WAITING = frozenset({VMState.INMIGRATE, VMState.PAUSED, VMState.STARTING})
Checks = Callable[[], Awaitable[None]]
T = TypeVar("T")


class MigrationJob(JobBase):
    """Runs one accepted migration to completion or back to where it started."""

    def __init__(self, spec: JobSpec, ports: Ports, policy: MigrationPolicy | None = None,
                 phase: Phase = Phase.CHECK) -> None:
        super().__init__(spec, ports, policy or SeguePolicy(spec.options), phase)
        self.uri = ""  # where the destination listens, once prepared

    async def leave_queue(self) -> None:
        """A queued job's slots are free: ``queued -> check`` (stored before the job runs,
        so its slots count at once); ``run`` it with its checks next."""
        await self.enter(Phase.CHECK, "migration slots free on both hosts; checking again "
                                      "before starting")

    async def run(self, checks: Checks | None = None) -> None:
        """The whole job, from ``check``; never raises but CancelledError (see the module
        doc). ``checks``: run first (a job leaving the queue); what it raises fails the job."""
        try:
            if checks is not None:
                await checks()
            await self._prepare()
            await self._start()
            await self._monitor()
            await self._switchover()
        except asyncio.CancelledError:
            if self.rollback.committed:
                raise  # past the commit point a new controller finishes the job
            await _shielded(self.roll_back(Phase.FAILED, "controller shutting down",
                                           "CONTROLLER_STOPPED"), self)
            raise
        except MigrationCancelled as err:
            await _shielded(self.roll_back(Phase.CANCELLED, err.message, err.code), self)
            return
        except Exception as err:
            await _shielded(self.fail(err), self)
            return
        await _shielded(self.finalize(), self)

    # ---- prepare ----
    async def _prepare(self) -> None:
        """Start the destination QEMU while measuring the link and sampling the dirty rate
        (side by side: the sample's second is not added to the move), then let the policy
        settle its settings from the measurement."""
        await self.enter(Phase.PREPARE, f"destination {self.spec.dest}")
        self.check_cancel()
        spec = (await self.src.get_vm(self.vm)).spec
        source_facts = await self.facts.host_facts(self.spec.source)
        dest_facts = await self.facts.host_facts(self.spec.dest)
        await self.note(self.policy.choose_streams(source_facts, dest_facts))
        self.push_teardown()  # a destination that failed to start may still have a QEMU
        incoming, (link, dirty) = await _first_error(self._start_destination(spec))
        self.uri = incoming.uri
        await self.note(f"destination QEMU (pid {incoming.pid}) listens on {self.uri}"
                        + (f" for TLS from {self.spec.source} alone" if incoming.tls else ""))
        if self.options.tls and not incoming.tls:
            raise MigrationFailed("MIGRATION_TLS_UNAVAILABLE",
                                  f"{self.spec.dest} prepared a plain stream, not TLS",
                                  f"run the same Segue version on {self.spec.dest}, or "
                                  "migrate with --no-tls")
        plan = self.policy.plan(spec.memory_mib * 1024**2, link, dirty, source_facts)
        self.prediction = dict(plan.summary)
        await self.store.set_summary(self.id, dict(plan.summary))
        for note in plan.notes:
            await self.note(note)

    async def _start_destination(self, spec: VMSpecBody
                                 ) -> tuple[IncomingAnswer, tuple[float | None, float | None]]:
        settings = self.policy.settings()
        async with asyncio.TaskGroup() as tg:
            measured = tg.create_task(self._measure())
            incoming = tg.create_task(self.dst.prepare_incoming(
                spec, self.id, dict(settings.capabilities), dict(settings.parameters),
                tls_peer=self.spec.source if self.options.tls else None))
        return incoming.result(), measured.result()

    async def _measure(self) -> tuple[float | None, float | None]:
        """(link bytes/s, dirty bytes/s), side by side, when the policy wants them; each
        None when it could not be measured (noted)."""
        if not self.policy.measures:
            return None, None
        async with asyncio.TaskGroup() as tg:
            link = tg.create_task(self._measure_link())
            dirty = tg.create_task(self._sample_dirty_rate())
        return link.result(), dirty.result()

    async def _sample_dirty_rate(self) -> float | None:
        """The guest's dirty rate in bytes/s; None (noted) when QEMU could not measure it."""
        try:
            sample = await self.src.dirty_rate(self.vm)
        except SegueError as err:
            await self.note(f"no dirty-rate sample ({err.code}): no prediction")
            return None
        return sample.dirty_rate_mibs * 2**20

    async def _measure_link(self) -> float | None:
        """The migration link's rate from a short TCP stream between the two migration
        addresses; None (noted) when it cannot be measured."""
        try:
            sink = await self.dst.open_probe_listener(sink=True)
            answer = await self.src.measure_throughput(sink.address, sink.port)
        except SegueError as err:
            await self.note(f"link not measured ({err.code}): {err.message}")
            return None
        if not answer.ok or answer.bytes_per_s is None:
            await self.note(f"link not measured: {answer.error}")
            return None
        return answer.bytes_per_s

    # ---- start and monitor ----
    async def _start(self) -> None:
        await self.enter(Phase.START, f"source {self.spec.source} -> {self.uri}")
        self.check_cancel()
        settings = self.policy.settings()
        caps, params = dict(settings.capabilities), dict(settings.parameters)
        self.push_cancel_source()  # a migrate that failed midway may have started
        view = await self.src.start_migration(self.vm, self.uri, caps, params,
                                              migration_id=self.id, destination=self.spec.dest,
                                              generation=self.spec.generation,
                                              tls=self.options.tls)
        await self.note(f"capabilities {caps}, parameters {params}: " + "; ".join(settings.reasons))
        await self._record_encryption(view.tls is True)

    async def _record_encryption(self, encrypted: bool) -> None:
        """Note and keep (summary ``encrypted``) whether the source's QEMU sends over TLS;
        a migration asked to be encrypted that is not fails (and rolls back)."""
        self.prediction["encrypted"] = encrypted
        await self.store.set_summary(self.id, dict(self.prediction))
        if self.options.tls and not encrypted:
            raise MigrationFailed("MIGRATION_TLS_UNAVAILABLE",
                                  f"{self.spec.source} started the migration without TLS",
                                  f"run the same Segue version on {self.spec.source}, or "
                                  "migrate with --no-tls")
        await self.note(f"the stream is TLS: {self.spec.dest} admits {self.spec.source}'s "
                        f"certificate alone, {self.spec.source} checks {self.spec.dest}'s name"
                        if encrypted else "the stream is plain (--no-tls): readable on the link")

    async def _monitor(self) -> None:
        """Pre-copy until QEMU completes it or switches to post-copy (then the post-copy is
        watched to its end); either is the commit point."""
        await self.enter(Phase.MONITOR, "copying memory while the VM runs")
        best, best_at = -1, self.clock.now()
        while True:
            progress = await self.sample()
            if progress.status == MigrationStatus.COMPLETED:
                self.rollback.commit("QEMU completed the copy")
                return
            if progress.status.postcopy:
                self.rollback.commit("QEMU switched to post-copy")
                await self.watch_postcopy()
                return
            _raise_if_ended(progress)
            if progress.transferred > best:
                best, best_at = progress.transferred, self.clock.now()
            elif self.clock.now() - best_at > self.options.stall_timeout_s:
                raise MigrationFailed("MIGRATION_STALLED",
                                      f"no data moved for {self.options.stall_timeout_s:.0f} s",
                                      "check the migration network between the hosts")
            self.check_cancel()
            await self._apply_policy(progress)
            await self.clock.sleep(POLL_S)

    async def _apply_policy(self, progress: Progress) -> None:
        """One ``decide`` on this sample; every action applied and noted. A user's post-copy
        request makes the policy start it at this sample."""
        if self.take_postcopy_request():
            self.policy.request_postcopy("asked by the user")
        for action in self.policy.decide(progress, self.elapsed()):
            if action.summary:  # a corrected prediction: shown while the job runs
                self.prediction.update(action.summary)
                await self.store.set_summary(self.id, dict(self.prediction))
            if action.kind == "note":  # the policy's own change of course: nothing to apply
                await self.note(f"policy: {action.reason}")
                continue
            await self.note(f"policy: {action.kind} {action.parameters or ''}-- {action.reason}")
            if action.kind == "abort":
                raise MigrationFailed(action.code, action.reason,
                                      "raise the deadline, the downtime limit, or allow "
                                      "post-copy")
            if action.kind == "set_parameters":
                await self.src.set_migration_parameters(self.vm, dict(action.parameters))
            elif action.kind == "start_postcopy":
                # QEMU may switch at any moment once asked: no more rollback from here
                self.rollback.commit("post-copy requested of QEMU")
                await self.src.start_postcopy(self.vm)

    async def watch_postcopy(self) -> None:
        """The destination runs the guest; wait for QEMU to complete (``postcopy``)."""
        await self.enter(Phase.POSTCOPY,
                         "post-copy: the destination runs the VM and pulls the rest")
        await postcopy.wait_postcopy(self)

    async def roll_forward(self) -> None:
        """The commit point was crossed while rolling back (``JobBase.roll_back``): wait
        for the destination to run the VM and finalize, as a job that saw QEMU complete."""
        try:
            await self._switchover()
        except Exception as err:
            await self.fail(err)
            return
        await self.finalize()

    # ---- switchover and finalize ----
    async def _switchover(self) -> None:
        """Wait for the destination to run the VM. Past the commit point the VM's lease
        decides who runs it (``segue.agent.leases``): the destination takes it over before
        it resumes the guest. A destination not running it within ``DEST_PATIENCE_S`` (its
        agent away, its QEMU stuck): the source is asked to run it again, which its agent
        does only if the destination never took the lease over (the handover withdrawn,
        atomically: a destination that comes back later cannot take it any more); then the
        destination is torn down (or, unreachable, left to reconciliation) and the job ends
        ``failed`` with the VM on its source. If the destination did take it over, it runs
        the VM (or will, once its agent is back): the job waits for it, up to
        ``ROLL_FORWARD_TIMEOUT_S``, and finishes the move. After a post-copy the source
        never runs the VM again (its memory is incomplete): the job only waits."""
        await self.enter(Phase.SWITCHOVER,
                         "post-copy completed; the destination has every page"
                         if self.went_postcopy
                         else "source paused and sent the rest; waiting for the destination")
        await self.settle()

    async def settle(self) -> None:
        """In ``switchover``: return once the destination runs the VM, or raise with the VM
        on its source again or left to the lease (``_switchover``'s doc)."""
        try:
            await self.wait_destination_runs(DEST_PATIENCE_S)
            return
        except MigrationFailed as err:
            if not self.went_postcopy and await self._source_takes_it_back(err):
                raise MigrationFailed(
                    err.code, f"{err.message}; it never took the VM over, so {self.vm} runs "
                    f"on {self.spec.source} again",
                    f"see {self.spec.dest}'s agent log for why it did not take the VM over"
                ) from None
        await self.wait_destination_runs(ROLL_FORWARD_TIMEOUT_S)

    async def _source_takes_it_back(self, err: MigrationFailed) -> bool:
        """Ask the source to run the VM again (its agent refuses unless it still holds the
        VM's lease: the destination never took it over); on success tear the destination
        down (best effort: reconciliation aborts an unclaimed incoming QEMU left behind).
        Whether the VM runs on the source now."""
        await self.note(f"{self.spec.dest} does not run {self.vm} ({err.message}): the source "
                        f"runs it again if the destination never took its lease over")
        try:
            await self.src.resume_vm(self.vm, generation=self.spec.generation)
        except SegueError as refused:
            await self.note(f"{self.spec.source} does not run it again ({refused.code}: "
                            f"{refused.message}): waiting for {self.spec.dest}")
            return False
        try:
            await self._tear_down()
        except SegueError as step:
            await self.note(f"{self.spec.dest}'s incoming QEMU not torn down ({step.code}); "
                            "reconciliation removes it once its agent answers")
        await self.note(f"{self.vm} runs on {self.spec.source} again")
        return True

    async def wait_destination_runs(self, patience_s: float = ROLL_FORWARD_TIMEOUT_S) -> None:
        """Return once the destination runs the VM. Past the commit point the job rolls
        forward: a destination whose agent does not answer (restarting, cut off) or whose
        QEMU still waits (for its lease, for the device state) is asked again for up to
        ``patience_s``, the wait noted in the job every ``ROLL_FORWARD_NOTE_S``.
        Raises MigrationFailed: ``MIGRATION_DEST_NOT_RUNNING`` when its QEMU is gone or in
        another state, or still waiting at the end; ``MIGRATION_DEST_UNREACHABLE`` when its
        agent never answered again."""
        start = self.clock.now()
        deadline, next_note = start + patience_s, start + ROLL_FORWARD_NOTE_S
        state: str = "silent"
        while self.clock.now() < deadline:
            try:
                info = await self.dst.get_vm(self.vm)
            except NotFound:
                state = "gone"
                break
            except SegueError as err:
                state = f"silent: {err.code}"
            else:
                state = info.state.value
                if info.state == VMState.RUNNING:
                    if self.clock.now() - start >= ROLL_FORWARD_NOTE_S:
                        await self.note(f"{self.spec.dest} runs {self.vm} after "
                                        f"{self.clock.now() - start:.0f} s: rolling forward")
                    return
                if info.state not in WAITING:
                    break
            if self.clock.now() >= next_note:
                next_note += ROLL_FORWARD_NOTE_S
                await self.note(f"waiting for {self.spec.dest} to run {self.vm} "
                                f"({self.clock.now() - start:.0f} s, {state}); past the commit "
                                f"point the source stays paused and nothing is undone")
            await self.clock.sleep(SILENT_POLL_S if state.startswith("silent")
                                   else SWITCHOVER_POLL_S)
        if state.startswith("silent"):
            raise MigrationFailed(
                "MIGRATION_DEST_UNREACHABLE",
                f"the destination {self.spec.dest}'s agent did not answer for "
                f"{patience_s:.0f} s after the copy completed ({state})",
                f"nothing is undone past the commit point: when {self.spec.dest}'s agent is "
                f"back it takes {self.vm} over and runs it (its lease was handed over), and "
                f"the controller's reconciliation records the move and releases the paused "
                f"source on {self.spec.source}")
        raise MigrationFailed(
            "MIGRATION_DEST_NOT_RUNNING",
            f"the destination {self.spec.dest} did not resume {self.vm} after the copy "
            f"(it is {state})",
            f"past the commit point nothing is undone: see {self.spec.dest}'s agent log; "
            f"the source QEMU on {self.spec.source} stays paused with the VM's memory as "
            f"the copy ended, and its agent resumes it only if the VM's lease was returned "
            f"unused (the VM never ran on {self.spec.dest})")

    async def finalize(self, enter: bool = True) -> None:
        """The destination runs the VM: make it the owner, commit the location, then shut
        the source QEMU down; ends ``completed``. An agent's failure in a step is noted,
        never raised: the destination runs the VM whatever else fails."""
        if enter:
            await self.enter(Phase.FINALIZE, f"{self.spec.dest} runs {self.vm}")
        try:
            summary = await self._summary()
        except SegueError as err:
            await self.note(f"no final numbers from QEMU: {err}")
            summary = {**self.prediction, "postcopy": self.went_postcopy}
        claimed = await self._claim()
        await self.store.commit_location(self.vm, self.spec.dest,
                                         claimed.generation if claimed is not None else None)
        await self._release_source()
        total = round(self.elapsed(), 3)
        qemu_total = summary.get("qemu_total_ms")
        summary["total_s"] = total
        summary["actual_total_s"] = (round(qemu_total / 1000, 2)
                                     if isinstance(qemu_total, int | float) and qemu_total
                                     else total)
        summary.update(prediction_errors(summary))
        await self.store.set_summary(self.id, summary)
        await self.enter(Phase.COMPLETED, f"{self.vm} runs on {self.spec.dest} in {total} s")

    async def _claim(self) -> VMInfo | None:
        """The destination's agent takes the VM over (retried once); the VM as it owns it
        now (with the lease generation it took it over at), None if both tries failed."""
        try:
            return await self.dst.claim(self.vm)
        except SegueError as err:
            await self.note(f"claim on {self.spec.dest} failed: {err}; retrying")
            await self.clock.sleep(CLAIM_RETRY_S)
            try:
                return await self.dst.claim(self.vm)
            except SegueError as again:
                await self.note(f"retry failed: {again}")
                return None

    async def _release_source(self) -> None:
        """Shut the source QEMU down once it reached ``postmigrate`` (QEMU reports the
        migration completed a moment before the source's run state says so); a failure
        is noted."""
        deadline = self.clock.now() + RELEASE_TIMEOUT_S
        try:
            while (await self.src.get_vm(self.vm)).state != VMState.POSTMIGRATE:
                if self.clock.now() > deadline:
                    raise MigrationFailed("MIGRATION_SOURCE_NOT_POSTMIGRATE",
                                          "the source never reached postmigrate",
                                          "its QEMU stays paused; destroy it by hand")
                await self.clock.sleep(SWITCHOVER_POLL_S)
            await self.src.release(self.vm)
        except SegueError as err:
            await self.note(f"release on {self.spec.source} failed: {err}")

    async def _blocktime(self) -> int | None:
        """After a post-copy: the ms the guest's vCPUs waited for faulted pages, as the
        destination's QEMU counted them (``postcopy-blocktime``); None when unknown."""
        if not self.went_postcopy:
            return None
        try:
            return (await self.dst.migration_status(self.vm)).migration.postcopy_blocktime
        except SegueError:
            return None

    async def _summary(self) -> dict[str, JsonValue]:
        """What the move cost, from QEMU's final numbers and the two QMP event streams."""
        final = progress_from_query((await self.src.migration_status(self.vm)).migration)
        stop = _last_event(await self.src.events(self.vm), "STOP")
        resume = _last_event(await self.dst.events(self.vm), "RESUME")
        return {
            **self.prediction, "postcopy": self.went_postcopy,
            "downtime_limit_ms": self.policy.downtime_ms,
            "qemu_downtime_ms": final.downtime_ms, "qemu_total_ms": final.total_time_ms,
            "setup_ms": final.setup_time_ms, "bytes_sent": final.transferred,
            "ram_total": final.total, "iterations": final.iteration,
            "switchover_ms": round((resume - stop) * 1000, 1) if stop and resume else None,
            "source_stop_at": stop, "dest_resume_at": resume,
            "throttle_max_pct": self.throttle_max_pct,
            "throttled_s": round(self.throttled_s, 2),
            "postcopy_blocktime_ms": await self._blocktime(),
        }


def _raise_if_ended(progress: Progress) -> None:
    """Raise MigrationFailed if QEMU's pre-copy ended without completing."""
    if not progress.status.active:
        raise MigrationFailed("MIGRATION_QEMU_FAILED",
                              f"QEMU's migration ended {progress.status.value}: "
                              f"{progress.error or 'no reason given'}",
                              "see the agents' logs; the VM stays on its source")


def _last_event(events: list[AgentEvent], name: str) -> float | None:
    stamps = [e.timestamp for e in events if e.event == name]
    return stamps[-1] if stamps else None


async def _first_error(call: Coroutine[object, object, T]) -> T:
    """Await ``call``, whose TaskGroups wrap what fails in ExceptionGroups: the first error
    is raised as itself (cancellation passes through)."""
    try:
        return await call
    except BaseExceptionGroup as group:
        first: BaseException = group
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


async def _shielded(cleanup: Coroutine[object, object, None], job: MigrationJob) -> None:
    """Run a job's last steps (rollback, finalize) to their end even if the job's task is
    cancelled meanwhile. An error there never dies silently: it is logged and recorded on
    the job (``JobBase.record_crash``)."""
    try:
        await asyncio.shield(cleanup)
    except asyncio.CancelledError:
        raise
    except Exception as err:
        log.exception("migration %s: its last steps failed", job.id[:8])
        await asyncio.shield(job.record_crash(err))
