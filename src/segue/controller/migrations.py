"""Migration jobs on the controller: what the routes call (``segue.controller.api_migrations``).

A request is admitted first (``segue.controller.migration_admission``: nothing is stored for a
refused one), then stored (``segue.controller.migration_store``) and started at once, or
queued behind the per-host limits (``segue.controller.migration_queue``). Jobs run in the
controller's TaskGroup (``segue.controller.migration_runner``) as engine jobs
(``segue.engine.job``): every phase change is the engine's, and stored with its time and
reason. A cancel ends a queued job at once (``segue.engine.control.cancel_queued``) and asks a
running one to roll back; a post-copy request goes to the job itself. ``recover_all`` picks up
what a previous controller left; ``stop_all`` stops every job (each before its commit point
rolls back).

Errors: those of admission; ``NotFound`` (``MIGRATION_NOT_FOUND``), ``Conflict``
(``MIGRATION_NOT_CANCELLABLE``, ``MIGRATION_POSTCOPY_NOT_POSSIBLE``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from segue.api.checks import CheckAnswer, WhereAnswer
from segue.api.migration import MigrationJobView, MigrationOptionsBody, ProgressSample
from segue.controller.agents import AgentPool
from segue.controller.db import Database
from segue.controller.migration_admission import Admission
from segue.controller.migration_queue import MigrationQueue
from segue.controller.migration_runner import JobRunner
from segue.controller.migration_store import ActiveJob, InventoryFacts, SqlJobStore
from segue.controller.precheck import Prechecker
from segue.controller.scheduler import HostLimits, Running, Waiting
from segue.engine.context import JobSpec
from segue.engine.control import cancel_queued, refuse_cancel, refuse_postcopy
from segue.engine.phases import Phase
from segue.engine.policy import DEFAULT_MAX_AUTO_DOWNTIME_MS
from segue.engine.ports import Clock, MonotonicClock
from segue.security.actors import Actor

log = logging.getLogger(__name__)


class MigrationService:
    """Accepts, runs, cancels and reports migration jobs (see the module doc)."""

    def __init__(self, db: Database, agents: AgentPool, tg: asyncio.TaskGroup,
                 heartbeat_timeout: float, limits: HostLimits | None = None,
                 clock: Clock | None = None,
                 max_auto_downtime_ms: int = DEFAULT_MAX_AUTO_DOWNTIME_MS) -> None:
        """``max_auto_downtime_ms``: the cluster's downtime bound, for every job whose
        request sets none (``segue.engine.policy.downtime_bound``)."""
        clock = clock or MonotonicClock()
        self.store = SqlJobStore(db)
        self.facts = InventoryFacts(db)
        self.prechecks = Prechecker(db, agents, heartbeat_timeout)
        self.admission = Admission(db, self.store, self.facts, self.prechecks)
        self.policies = self.admission.policies  # user-defined policies: one gate for all
        self.placement = self.admission.placement  # placement and the rules' enforcement
        self.runner = JobRunner(self.store, self.facts, agents, tg, clock,
                                self.admission.recheck, on_end=lambda: self.queue.kick(),
                                max_auto_downtime_ms=max_auto_downtime_ms)
        self.queue = MigrationQueue(self.store, self.runner, limits or HostLimits(), clock)

    # ---- reads ----
    async def get(self, job_id: str) -> MigrationJobView:
        return await self.store.view(job_id)

    async def list_all(self, vm: str | None = None) -> list[MigrationJobView]:
        return await self.store.views(vm)

    async def samples(self, job_id: str) -> list[ProgressSample]:
        return await self.store.samples(job_id)

    async def check(self, vm: str, dest: str, actor: Actor | None = None,
                    encrypted: bool = True) -> CheckAnswer:
        """Every pre-migration check for one destination, and the policies' verdict for
        ``actor``; nothing starts."""
        return await self.prechecks.check(vm, dest, actor, encrypted)

    async def where(self, vm: str, actor: Actor | None = None) -> WhereAnswer:
        """Every other host with its check results and the policies' verdict."""
        return await self.prechecks.where(vm, actor)

    # ---- requests ----
    async def request(self, vm: str, dest: str, options: MigrationOptionsBody,
                      actor: Actor | None = None, initiator: str = "user"
                      ) -> MigrationJobView:
        """Admit the request, then store the job and start it, or queue it when the per-host
        limits hold it back; raises (admission's errors) before storing anything.
        ``actor`` and ``initiator`` are what user-defined policies decide on: maintenance,
        DRS and HA call this with their initiator (and no actor)."""
        spec, warnings = await self.admission.admit(vm, dest, options, actor, initiator)
        candidate = Waiting(spec.id, spec.source, spec.dest)

        def decide(queue: Sequence[Waiting], running: Running, active: ActiveJob | None
                   ) -> Phase:  # runs in the database's thread: pure
            self.admission.refuse_in_flight(vm, active)  # a request that won the race
            return Phase.QUEUED if self.queue.must_wait(candidate, queue, running) else \
                Phase.CHECK

        async with self.queue.lock:
            phase = await self.store.create(
                spec, decide, lambda p: self._accepted_message(warnings, p == Phase.QUEUED))
            if phase != Phase.QUEUED:
                await self._start(spec)
        if phase == Phase.QUEUED:
            self.queue.kick()
        return await self.store.view(spec.id)

    async def _start(self, spec: JobSpec) -> None:
        stored = (await self.store.stored([spec.id]))[0]
        self.runner.start(self.runner.job(stored))

    def _accepted_message(self, warnings: list[str], queued: bool) -> str:
        message = "requested; pre-migration checks passed"
        if warnings:
            message += f" (warnings: {', '.join(warnings)})"
        if queued:
            limits = self.queue.limits
            message += (f"; queued behind the per-host limits (outgoing "
                        f"{limits.max_outgoing}, incoming {limits.max_incoming})")
        return message

    async def request_postcopy(self, job_id: str) -> MigrationJobView:
        """Switch a copying job to post-copy at its next sample (the user's call, like
        ``virsh migrate-postcopy``); refused (``MIGRATION_POSTCOPY_NOT_POSSIBLE``) unless
        it copies (start, monitor) with post-copy allowed."""
        job = self.runner.get(job_id)
        if job is None:
            phase = await self.store.phase(job_id)
            refuse_postcopy(job_id, phase, allowed=True, running=False)
        else:
            await job.request_postcopy()
        return await self.store.view(job_id)

    async def cancel(self, job_id: str) -> MigrationJobView:
        """End a queued job ``cancelled`` at once (nothing had started), or ask a running job
        to roll back; refused (``MIGRATION_NOT_CANCELLABLE``) once the destination may run
        the VM."""
        async with self.queue.lock:  # a queued job leaves the queue or is cancelled, not both
            phase = await self.store.phase(job_id)
            refuse_cancel(job_id, phase)
            job = self.runner.get(job_id)
            if phase == Phase.QUEUED or job is None:
                await self.store.mark_cancel_requested(job_id)
                if phase == Phase.QUEUED:
                    await cancel_queued(self.store, job_id)
                    self.queue.kick()  # it held its place on two slots
                else:
                    await self.store.note(job_id, "cancel requested by the user")
                return await self.store.view(job_id)
        await job.cancel()
        await self.store.mark_cancel_requested(job_id)
        return await self.store.view(job_id)

    # ---- controller start and stop ----
    async def recover_all(self) -> int:
        """Reconcile every job a previous controller left running (each in its own task)
        and return how many; then resume the queue. Queued jobs had nothing started: they
        stay queued, in order, and start as the scheduler allows."""
        left = await self.store.unfinished()
        for stored in left:
            self.runner.recover(self.runner.job(stored), stored.phase)
        self.queue.start_ticking()
        self.queue.kick()
        return len(left)

    def stop_all(self) -> None:
        """Cancel every running job (each before its commit point rolls back first); queued
        jobs stay queued."""
        self.queue.stopping = True
        self.runner.stop_all()
