"""The queue of migration jobs under per-host limits (``segue.controller.scheduler``).

An accepted request whose source or destination has no migration slot left, or that would
overtake an earlier queued job on one of its slots, is stored ``queued`` instead of starting
(``must_wait``). Whenever a job ends, one is queued or cancelled, and once a second as a
safety net (``tick``), the queue is kicked: its own task then looks at it and starts the jobs
the scheduler picks, each leaving the queue through the engine (``queued -> check``, stored
before it runs, so its slots count at once) and running its checks again first; a job whose
checks now fail ends ``failed`` with their reason. Queued jobs survive a controller restart; a
stopping controller starts none.

Who takes a slot is decided one at a time (``lock``): a new request's phase and its start, a
pass over the queue, a queued job's cancel. The database answers in a worker thread, so
without the lock a request could decide on the queue a pass is changing, or a cancel and a
start could both take the same queued job.
"""

from __future__ import annotations

import asyncio
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
        self.lock = asyncio.Lock()  # see the module doc
        self._kicked = asyncio.Event()

    def must_wait(self, candidate: Waiting, queued: Sequence[Waiting], running: Running
                  ) -> bool:
        """Whether a new request must be queued behind ``queued`` rather than start."""
        return must_wait(candidate, queued, running, self.limits)

    async def start_queued(self) -> list[str]:
        """Start the queued jobs the scheduler picks, oldest first; their ids (none once
        stopping: queued jobs wait for the next controller). Takes ``lock``."""
        async with self.lock:
            if self.stopping:
                return []
            queued, running = await self.store.queue()
            picks = next_to_start(queued, running, self.limits)
            for stored in await self.store.stored(picks):
                job = self.runner.job(stored)
                await job.leave_queue()
                self.runner.start(job, recheck=True)
            return picks

    def kick(self) -> None:
        """Have the queue's task run ``start_queued`` (a job's end, a request, a cancel, the
        tick); it returns at once. Kicks while a pass runs make one more pass."""
        self._kicked.set()

    def start_ticking(self) -> None:
        """Serve kicks, and kick every QUEUE_TICK_S, until the runner stops."""
        self.runner.background(self._serve(), "migration-queue")
        self.runner.background(self._tick(), "migration-queue-tick")

    async def _serve(self) -> None:
        """One pass per kick: a failure is logged, never raised, and the next kick or tick
        tries again."""
        while True:
            await self._kicked.wait()
            self._kicked.clear()
            try:
                await self.start_queued()
            except Exception:
                log.exception("starting queued migrations failed; the next event retries")

    async def _tick(self) -> None:
        while True:
            await self.clock.sleep(QUEUE_TICK_S)
            self.kick()
