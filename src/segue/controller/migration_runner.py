"""Migration jobs at work in the controller: each engine job (``segue.engine.job``) runs in
its own task of the controller's TaskGroup, with the typed clients of its two agents
(``AgentPool.typed``), the SQL job store and the inventory's facts.

The runner knows the jobs running now (``get``), so that a user's cancel or post-copy request
reaches the job itself. Every task's end calls ``on_end`` (the queue moves on). ``stop_all``
cancels every task: a job before its commit point rolls back (shielded) before it ends; one
past it is left for the next controller (``segue.engine.recovery``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine

from segue.controller.agents import AgentPool
from segue.controller.migration_store import InventoryFacts, SqlJobStore, StoredJob
from segue.engine import recovery
from segue.engine.context import JobSpec, Ports
from segue.engine.job import MigrationJob
from segue.engine.phases import Phase
from segue.engine.policies import SeguePolicy
from segue.engine.policy import DEFAULT_MAX_AUTO_DOWNTIME_MS
from segue.engine.ports import Clock

log = logging.getLogger(__name__)
Recheck = Callable[[JobSpec], Awaitable[None]]


class JobRunner:
    """Runs jobs and background loops in the controller's TaskGroup (see the module doc)."""

    def __init__(self, store: SqlJobStore, facts: InventoryFacts, agents: AgentPool,
                 tg: asyncio.TaskGroup, clock: Clock, recheck: Recheck,
                 on_end: Callable[[], None],
                 max_auto_downtime_ms: int = DEFAULT_MAX_AUTO_DOWNTIME_MS) -> None:
        self.store = store
        self.facts = facts
        self.agents = agents
        self.tg = tg
        self.clock = clock
        self.recheck = recheck
        self.on_end = on_end
        self.max_auto_downtime_ms = max_auto_downtime_ms
        self._jobs: dict[str, MigrationJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def job(self, stored: StoredJob) -> MigrationJob:
        """The engine job of a stored one, in its stored phase, with Segue's policy under
        the cluster's downtime bound (``max_auto_downtime_ms``) unless the job sets its own."""
        ports = Ports(self.agents.typed(stored.source_url, stored.spec.source),
                      self.agents.typed(stored.dest_url, stored.spec.dest),
                      self.store, self.facts, self.clock)
        policy = SeguePolicy(stored.spec.options, self.max_auto_downtime_ms)
        return MigrationJob(stored.spec, ports, policy, stored.phase)

    def get(self, job_id: str) -> MigrationJob | None:
        """The job ``job_id`` if it runs in this controller now."""
        return self._jobs.get(job_id)

    def start(self, job: MigrationJob, recheck: bool = False) -> None:
        """Run a job that is in ``check``; ``recheck``: its pre-migration checks run again
        first (a queued job's)."""
        async def checks() -> None:
            await self.recheck(job.spec)

        self._spawn(job.run(checks if recheck else None), f"migration-{job.id[:8]}", job)

    def recover(self, job: MigrationJob, phase: Phase) -> None:
        """Finish or undo a job a previous controller left in ``phase``."""
        self._spawn(recovery.recover(job, phase), f"recover-{job.id[:8]}", job)

    def background(self, loop: Coroutine[object, object, None], name: str) -> None:
        """Run a loop (the queue's tick) until ``stop_all``."""
        self._spawn(loop, name, None)

    def stop_all(self) -> None:
        """Cancel every task (see the module doc)."""
        for task in self._tasks:
            task.cancel()

    def _spawn(self, work: Coroutine[object, object, None], name: str,
               job: MigrationJob | None) -> None:
        task = self.tg.create_task(work, name=name)
        self._tasks.add(task)
        if job is None:
            task.add_done_callback(self._tasks.discard)
            return
        self._jobs[job.id] = job

        def ended(done: asyncio.Task[None]) -> None:
            self._tasks.discard(done)
            if self._jobs.get(job.id) is job:
                del self._jobs[job.id]
            self.on_end()

        task.add_done_callback(ended)
