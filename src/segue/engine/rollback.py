"""A migration's rollback: a stack of idempotent compensating steps (Ganeti's
``_AbortMigration`` habit).

The job pushes a step as soon as the thing it undoes may exist: "tear the destination down"
before the destination's QEMU is asked to start, "cancel the source's migration" before
``migrate``. The bottom step, "make sure the source runs", is pushed first. ``unwind`` runs
them newest first and attempts every one even if one fails, noting each outcome; a step
reads the outcome of those before it with ``succeeded``.

``commit`` marks the commit point (QEMU completed the copy, or post-copy was requested of
it): the stack is dropped and ``unwind`` refuses from then on, since the destination may
have run guest code and only rolling forward is safe. A step that finds the point crossed
while it undoes (a cancel that reached QEMU after it completed) raises ``CommitCrossed``:
the unwind stops there and the job rolls forward.

Errors: ``RollbackRefused`` (``MIGRATION_PAST_COMMIT``) for ``unwind`` after ``commit``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from segue.domain.errors import Conflict

log = logging.getLogger(__name__)
Undo = Callable[[], Awaitable[object]]
Note = Callable[[str], Awaitable[None]]


class RollbackRefused(Conflict):
    """A rollback was asked for past the commit point."""


class CommitCrossed(Exception):
    """A compensating step found the commit point crossed meanwhile (QEMU completed the
    copy before its cancel landed): ``unwind`` stops at once, the steps below it are not
    run, and the job rolls forward instead."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Step:
    """One compensating step: what it undoes, in words a user reads, and how."""

    what: str
    undo: Undo


class RollbackStack:
    """The compensating steps of one job, newest on top."""

    def __init__(self) -> None:
        self._steps: list[Step] = []
        self._outcomes: dict[str, bool] = {}
        self.committed = False
        self.commit_reason = ""

    @property
    def steps(self) -> list[str]:
        """What the stack would undo, newest first."""
        return [step.what for step in reversed(self._steps)]

    def push(self, what: str, undo: Undo) -> None:
        """Add a step on top (ignored past the commit point: nothing is undone then)."""
        if not self.committed:
            self._steps.append(Step(what, undo))

    def commit(self, reason: str) -> None:
        """Cross the commit point: drop every step; from now on only roll forward."""
        if not self.committed:
            self.committed, self.commit_reason = True, reason
            self._steps.clear()

    def succeeded(self, what: str) -> bool | None:
        """Whether the step ``what`` ran and succeeded in this unwind (None: it did not run,
        e.g. it was never pushed)."""
        return self._outcomes.get(what)

    async def unwind(self, note: Note, job_id: str = "") -> bool:
        """Run every step, newest first, each attempted even if another failed, each outcome
        noted (``rollback: WHAT: done`` or ``rollback: WHAT: FAILED (error)``); True if all
        succeeded. Raises RollbackRefused past the commit point."""
        if self.committed:
            raise RollbackRefused("MIGRATION_PAST_COMMIT",
                                  f"nothing is rolled back past the commit point "
                                  f"({self.commit_reason})",
                                  "the migration only rolls forward from here")
        steps, self._steps = list(reversed(self._steps)), []
        for step in steps:
            try:
                await step.undo()
            except CommitCrossed as crossed:
                await note(f"rollback: {step.what}: {crossed.reason}: stopped, rolling forward")
                raise
            except Exception as err:
                log.warning("migration %s rollback: %s failed: %r", job_id[:8], step.what, err)
                await note(f"rollback: {step.what}: FAILED ({err})")
                self._outcomes[step.what] = False
                continue
            await note(f"rollback: {step.what}: done")
            self._outcomes[step.what] = True
        return all(self._outcomes.get(step.what) for step in steps)
