"""The queue of migration jobs under per-host limits (``segue.controller.scheduler``).

An accepted request whose source or destination has no migration slot left, or that would
overtake an earlier queued job on one of its slots, is stored ``queued`` instead of starting
(``must_wait``). Whenever a job ends, one is queued or cancelled, and once a second as a
safety net (``tick``), the queue is looked at and the jobs the scheduler picks start: each
leaves the queue through the engine (``queued -> check``) before anything awaits, so its slots
count at once, and its checks run again first; a job whose checks now fail ends ``failed``
with their reason. Queued jobs survive a controller restart; a stopping controller starts
none.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from segue.controller.migration_runner import JobRunner
from segue.controller.migration_store import SqlJobStore
from segue.controller.scheduler import HostLimits, Running, Waiting, must_wait, next_to_start
from segue.engine.ports import Clock

log = logging.getLogger(__name__)
QUEUE_TICK_S = 1.0  # the safety net: how often the queue is looked at without an event


class MigrationQueue:
    """Starts queued jobs as the per-host limits allow (see the module doc)."""

    def __init__(self, store: SqlJobStore, runner: JobRunner, limits: HostLimits,
                 clock: Clock) -> None:
        self.store = store
        self.runner = runner
        self.limits = limits
        self.clock = clock
        self.stopping = False

    def must_wait(self, candidate: Waiting, queued: Sequence[Waiting], running: Running
                  ) -> bool:
        """Whether a new request must be queued behind ``queued`` rather than start."""
        return must_wait(candidate, queued, running, self.limits)

    def start_queued(self) -> list[str]:
        """Start the queued jobs the scheduler picks, oldest first; their ids (none once
        stopping: queued jobs wait for the next controller)."""
        if self.stopping:
            return []
        queued, running = self.store.queue()
        picks = next_to_start(queued, running, self.limits)
        for stored in self.store.stored(picks):
            job = self.runner.job(stored)
            job.leave_queue()
            self.runner.start(job, recheck=True)
        return picks

    def kick(self) -> None:
        """``start_queued`` from an event (a job's end, a request, a cancel, the tick): a
        failure is logged, never raised, and the next event or tick tries again."""
        try:
            self.start_queued()
        except Exception:
            log.exception("starting queued migrations failed; the next event retries")

    def start_ticking(self) -> None:
        """Look at the queue every QUEUE_TICK_S until the runner stops."""
        self.runner.background(self._tick(), "migration-queue")

    async def _tick(self) -> None:
        while True:
            await self.clock.sleep(QUEUE_TICK_S)
            self.kick()
