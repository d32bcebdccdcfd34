"""What every part of one migration job shares: its spec, its ports, its phase, the user's
requests, and its rollback stack with the compensating steps (``segue.engine.rollback``).

``JobBase`` is the job's common half; ``segue.engine.job.MigrationJob`` runs it forward,
``segue.engine.postcopy`` watches a post-copy and ``segue.engine.recovery`` picks up a job a
previous controller left. Every phase change goes through ``enter`` (the store checks it
against ``segue.engine.phases``); every decision is noted through ``note``.

Compensating steps, bottom to top: ``SOURCE_RUNS`` (pushed when the job is made: resume the
source if it is paused, but only while the destination is confirmed gone, else
``MIGRATION_SPLIT_UNSAFE``), ``TEARDOWN`` (pushed before the destination's QEMU is asked
to start: a failed start may leave one), ``CANCEL_SOURCE`` (pushed before ``migrate``).
Each is idempotent, so a rollback a restart interrupted runs them all again.

Errors (``MigrationFailed`` unless said): ``MIGRATION_SPLIT_UNSAFE``,
``MIGRATION_SOURCE_NOT_RUNNING``, ``MIGRATION_CANCEL_TIMEOUT`` from the steps (noted, never
raised past ``roll_back``); ``MigrationCancelled`` (``MIGRATION_CANCELLED``) and
``MIGRATION_DEADLINE`` from ``check_cancel``; ``Conflict`` from ``cancel`` and
``request_postcopy`` (``segue.engine.control``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import JsonValue

from segue.api.migration import MigrationOptionsBody
from segue.api.qemu import MigrationStatus
from segue.domain.errors import Conflict, NotFound, SegueError
from segue.domain.vm import VMState
from segue.engine.control import not_cancellable, refuse_cancel, refuse_postcopy
from segue.engine.phases import ALLOWED, TERMINAL, MigrationCancelled, MigrationFailed, Phase
from segue.engine.policies import MigrationPolicy
from segue.engine.ports import AgentPort, Clock, FactsSource, JobStore
from segue.engine.progress import Progress, progress_from_query
from segue.engine.rollback import CommitCrossed, RollbackStack

log = logging.getLogger(__name__)
SOURCE_RUNS = "make sure the source runs"
TEARDOWN = "tear the destination down"
CANCEL_SOURCE = "cancel the source's migration"
CANCEL_POLL_S = 0.1
CANCEL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class JobSpec:
    """One migration: its id, the VM, the source and destination hosts' names, the options,
    and the VM's lease generation on record when the job was admitted: the fencing token
    of the job's state-changing calls to the source (None: none known, none sent)."""

    id: str
    vm: str
    source: str
    dest: str
    options: MigrationOptionsBody
    generation: int | None = None


@dataclass(frozen=True)
class Ports:
    """The world a job acts on: both agents, its record, the hosts' facts and the clock."""

    source: AgentPort
    dest: AgentPort
    store: JobStore
    facts: FactsSource
    clock: Clock


def error_of(err: Exception) -> tuple[str, str]:
    """``(code, message)`` of what failed a job (``MIGRATION_ERROR`` for a non-Segue one)."""
    if isinstance(err, SegueError):
        return err.code, err.message
    return "MIGRATION_ERROR", repr(err)


class JobBase:
    """The shared half of one job (see the module doc)."""

    def __init__(self, spec: JobSpec, ports: Ports, policy: MigrationPolicy,
                 phase: Phase = Phase.CHECK) -> None:
        self.spec, self.id, self.vm, self.options = spec, spec.id, spec.vm, spec.options
        self.src, self.dst = ports.source, ports.dest
        self.store, self.facts, self.clock = ports.store, ports.facts, ports.clock
        self.policy = policy
        self.started = self.clock.now()
        self.phase = phase
        self.phases = [phase]  # every phase this job object was in, in order
        self.rollback = RollbackStack()
        self.rollback.push(SOURCE_RUNS, self._ensure_source_runs)
        self.cancel_requested = False
        self._user_postcopy = False
        self.last: Progress | None = None
        self.prediction: dict[str, JsonValue] = {}
        self.throttle_max_pct = 0  # the most auto-converge slowed the guest
        self.throttled_s = 0.0  # seconds between samples that found it throttled
        self._last_sample_at = 0.0

    # ---- the record ----
    def elapsed(self) -> float:
        return self.clock.now() - self.started

    async def enter(self, phase: Phase, message: str = "", *, reason: str | None = None,
                    error_code: str | None = None) -> None:
        """Move to ``phase`` (the store refuses a move the phase table does not allow)."""
        await self.store.transition(self.id, phase, message, reason=reason,
                                    error_code=error_code)
        self.phase = phase
        self.phases.append(phase)
        log.info("migration %s -> %s %s", self.id[:8], phase, message)

    async def note(self, message: str) -> None:
        await self.store.note(self.id, message)

    async def sample(self) -> Progress:
        """One ``query-migrate`` of the source, stored as a sample."""
        progress = progress_from_query((await self.src.migration_status(self.vm)).migration)
        now = self.elapsed()
        if progress.throttle_pct and self.last is not None and self.last.throttle_pct:
            self.throttled_s += now - self._last_sample_at
        self.throttle_max_pct = max(self.throttle_max_pct, progress.throttle_pct)
        self.last, self._last_sample_at = progress, now
        await self.store.record_sample(self.id, now, progress)
        return progress

    @property
    def went_postcopy(self) -> bool:
        """QEMU switched to post-copy in this job (the destination held the newest memory)."""
        return Phase.POSTCOPY in self.phases

    # ---- what the user may ask ----
    async def cancel(self) -> None:
        """Ask the job to roll back and end ``cancelled`` at its next check. Raises
        Conflict (``MIGRATION_NOT_CANCELLABLE``) past the commit point or in a phase that
        cannot be cancelled."""
        if self.rollback.committed:
            raise not_cancellable(self.id, self.phase, self.rollback.commit_reason)
        refuse_cancel(self.id, self.phase)
        self.cancel_requested = True
        await self.note("cancel requested by the user")

    async def request_postcopy(self) -> None:
        """Switch to post-copy at the next sample (like ``virsh migrate-postcopy``). Raises
        Conflict (``MIGRATION_POSTCOPY_NOT_POSSIBLE``) unless the job copies memory with
        post-copy allowed."""
        refuse_postcopy(self.id, self.phase, self.options.allow_postcopy)
        self._user_postcopy = True
        await self.note("post-copy requested by the user")

    def take_postcopy_request(self) -> bool:
        """Whether the user asked for post-copy since the last call."""
        asked, self._user_postcopy = self._user_postcopy, False
        return asked

    def check_cancel(self) -> None:
        """Raise MigrationCancelled if the user cancelled, MigrationFailed
        (``MIGRATION_DEADLINE``) past the deadline; neither past the commit point (a cancel
        could reach QEMU after its switch and lose the VM)."""
        if self.rollback.committed:
            return
        if self.cancel_requested:
            raise MigrationCancelled("MIGRATION_CANCELLED", "cancelled by the user", "")
        if self.elapsed() > self.options.deadline_s:
            raise MigrationFailed("MIGRATION_DEADLINE",
                                  f"not done within the {self.options.deadline_s:.0f} s deadline",
                                  "raise the deadline or the downtime limit")

    # ---- rolling back ----
    def push_teardown(self) -> None:
        self.rollback.push(TEARDOWN, self._tear_down)

    def push_cancel_source(self) -> None:
        self.rollback.push(CANCEL_SOURCE, self._cancel_source)

    async def roll_back(self, outcome: Phase, reason: str, code: str,
                        enter: bool = True) -> None:
        """Run the rollback stack (every step attempted, each noted), then end ``outcome``.
        A step that finds the commit point crossed meanwhile (``CommitCrossed``: QEMU
        completed the copy before the cancel landed) stops it: the job rolls forward."""
        if enter:
            await self.enter(Phase.ROLLING_BACK, reason)
        try:
            await self.rollback.unwind(self.note, self.id)
        except CommitCrossed as crossed:
            self.rollback.commit(crossed.reason)
            await self.note(f"{reason}, but {crossed.reason}: the move is finished instead")
            await self.roll_forward()
            return
        await self.enter(outcome, reason, reason=reason, error_code=code)

    async def record_crash(self, err: Exception) -> None:
        """An unexpected error in the job's last steps: the job ends ``failed`` with
        ``MIGRATION_INTERNAL_ERROR`` where its phase allows it; in ``finalize`` (the
        destination runs the VM: the job can only complete) it is noted and the job stays
        there for the controller's recovery to finish. Never raises."""
        code, message = error_of(err)
        text = f"internal error in {self.phase}: {code}: {message}"
        try:
            if self.phase in TERMINAL:
                await self.note(text)
            elif Phase.FAILED in ALLOWED[self.phase]:
                await self.enter(Phase.FAILED, text, reason=text,
                                 error_code="MIGRATION_INTERNAL_ERROR")
            else:
                await self.note(f"{text}; the job stays in {self.phase} until it is finished")
        except Exception:
            log.exception("migration %s: its error could not be recorded either", self.id[:8])

    async def roll_forward(self) -> None:
        """Finish the move from the commit point (the job's switchover and finalize)."""
        raise NotImplementedError

    async def fail(self, err: Exception) -> None:
        """End the job ``failed`` for ``err``: rolled back before the commit point; past it,
        at once with both QEMUs left as they are (the destination may have run the guest)."""
        code, message = error_of(err)
        if self.rollback.committed:
            await self.enter(Phase.FAILED, message, reason=message, error_code=code)
            return
        await self.roll_back(Phase.FAILED, message, code)

    async def _tear_down(self) -> None:
        """Kill the destination's incoming QEMU; one that is not there is gone already.
        One whose agent refuses because it runs the guest already (``VM_RUNNING``) or took
        the VM over (``VM_NOT_INCOMING``) received the whole state: QEMU completed the copy
        while the job could not see it (the source's agent gone at that moment), so the
        commit point is crossed (``CommitCrossed``): the move is finished, never undone."""
        try:
            await self.dst.abort_incoming(self.vm)
        except NotFound:
            await self.note(f"{self.spec.dest} has no incoming {self.vm}: nothing to tear down")
        except Conflict as refused:
            if refused.code not in ("VM_RUNNING", "VM_NOT_INCOMING"):
                raise
            raise CommitCrossed(f"{self.spec.dest} runs {self.vm} already "
                                f"({refused.code}): QEMU completed the copy") from refused

    async def _cancel_source(self) -> None:
        """Cancel the source's migration if it runs, and wait until QEMU says it ended."""
        if (await self.src.migration_status(self.vm)).migration.status.active:
            await self._cancel_call()
        deadline = self.clock.now() + CANCEL_TIMEOUT_S
        while (status := (await self.src.migration_status(self.vm)).migration.status).active:
            if status.postcopy:
                raise CommitCrossed("QEMU switched to post-copy before the cancel")
            if self.clock.now() > deadline:
                raise MigrationFailed("MIGRATION_CANCEL_TIMEOUT",
                                      f"the source's migration still runs "
                                      f"{CANCEL_TIMEOUT_S:.0f} s after its cancel",
                                      "see the source agent's log")
            await self.clock.sleep(CANCEL_POLL_S)
        if status == MigrationStatus.COMPLETED:
            raise CommitCrossed("QEMU completed the copy before the cancel reached it")

    async def _cancel_call(self) -> None:
        """``cancel_migration`` at the job's generation. Its ``VM_NOT_OWNED`` while QEMU
        switched to post-copy or completed means the destination took the VM over: the
        caller's wait finds the commit point crossed; any other refusal is raised."""
        try:
            await self.src.cancel_migration(self.vm, generation=self.spec.generation)
        except Conflict as refused:
            if refused.code != "VM_NOT_OWNED":
                raise
            status = (await self.src.migration_status(self.vm)).migration.status
            if status.active and not status.postcopy:
                raise
            await self.note(f"the cancel was refused ({refused.message}): QEMU is {status.value}")

    async def _ensure_source_runs(self) -> None:
        """Resume a paused source, but only with the destination confirmed gone (torn down
        in this rollback, or never prepared): else two QEMUs could run the VM."""
        info = await self.src.get_vm(self.vm)
        if info.state in (VMState.PAUSED, VMState.POSTMIGRATE):
            if self.rollback.succeeded(TEARDOWN) is False:
                raise MigrationFailed(
                    "MIGRATION_SPLIT_UNSAFE",
                    f"{self.vm} stays paused on {self.spec.source}: its destination "
                    f"{self.spec.dest} could not be confirmed gone",
                    f"check {self.spec.dest}; resume the source only if it does not run there")
            await self.src.resume_vm(self.vm, generation=self.spec.generation)
            info = await self.src.get_vm(self.vm)
        if info.state != VMState.RUNNING:
            raise MigrationFailed("MIGRATION_SOURCE_NOT_RUNNING",
                                  f"{self.vm} is {info.state.value} on {self.spec.source}",
                                  "look at the source host")
