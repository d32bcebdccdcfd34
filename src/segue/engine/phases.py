"""The phases of a migration job and the transitions allowed between them (pure).

    [queued ->] check -> prepare -> start -> monitor -> switchover -> finalize -> completed
    any phase from ``check`` to ``switchover`` -> rolling_back -> failed | cancelled
    monitor | postcopy | switchover -> failed      (past the commit point: no rollback)
    rolling_back -> switchover     (the commit point was crossed while rolling back)
    queued -> cancelled

``queued``: accepted, but a per-host concurrency limit holds it back
(``segue.controller.scheduler``); nothing has started, so leaving it needs no rollback.

``finalize`` begins only once the destination runs the VM; from then on the move is not
undone (the destination owns the VM), so finalize never rolls back.

``postcopy`` (monitor -> postcopy -> switchover | finalize): QEMU switched to post-copy, the
destination runs the guest and holds its newest memory, so it never rolls back either; a
post-copy that cannot be recovered ends ``failed`` with no rollback.

The commit point (``segue.engine.job``) is QEMU reporting the copy ``completed``, or post-copy
being requested of it: from then on the destination may have run guest code, so the job only
rolls forward, and a failure (in ``monitor`` right after the request, in ``postcopy`` or in
``switchover``) ends ``failed`` with both QEMUs left as they are. A rollback that finds QEMU
completed the copy after all (a cancel that reached it too late) goes on to ``switchover``.
"""

from __future__ import annotations

from enum import StrEnum

from segue.domain.errors import Conflict, SegueError, Unavailable


class Phase(StrEnum):
    QUEUED = "queued"
    CHECK = "check"
    PREPARE = "prepare"
    START = "start"
    MONITOR = "monitor"
    POSTCOPY = "postcopy"
    SWITCHOVER = "switchover"
    FINALIZE = "finalize"
    COMPLETED = "completed"
    ROLLING_BACK = "rolling_back"
    FAILED = "failed"
    CANCELLED = "cancelled"


ROLLBACK_FROM = (Phase.CHECK, Phase.PREPARE, Phase.START, Phase.MONITOR, Phase.SWITCHOVER)

ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.QUEUED: frozenset({Phase.CHECK, Phase.CANCELLED}),
    Phase.CHECK: frozenset({Phase.PREPARE, Phase.ROLLING_BACK}),
    Phase.PREPARE: frozenset({Phase.START, Phase.ROLLING_BACK}),
    Phase.START: frozenset({Phase.MONITOR, Phase.ROLLING_BACK}),
    Phase.MONITOR: frozenset({Phase.SWITCHOVER, Phase.POSTCOPY, Phase.ROLLING_BACK,
                              Phase.FAILED}),
    Phase.POSTCOPY: frozenset({Phase.SWITCHOVER, Phase.FINALIZE, Phase.FAILED}),
    Phase.SWITCHOVER: frozenset({Phase.FINALIZE, Phase.ROLLING_BACK, Phase.FAILED}),
    Phase.FINALIZE: frozenset({Phase.COMPLETED}),
    Phase.ROLLING_BACK: frozenset({Phase.FAILED, Phase.CANCELLED, Phase.SWITCHOVER}),
    Phase.COMPLETED: frozenset(),
    Phase.FAILED: frozenset(),
    Phase.CANCELLED: frozenset(),
}

TERMINAL = frozenset({Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED})
ACTIVE = frozenset(Phase) - TERMINAL
RUNNING = ACTIVE - {Phase.QUEUED}  # holds a per-host migration slot


class InvalidTransition(SegueError):
    kind = "conflict"


def check_transition(current: Phase, target: Phase) -> None:
    """Raise InvalidTransition unless ``current -> target`` is allowed."""
    if target not in ALLOWED[current]:
        raise InvalidTransition("MIGRATION_BAD_TRANSITION",
                                f"a migration cannot go from {current} to {target}",
                                "this is a bug in the migration engine")


class MigrationFailed(Unavailable):
    """The migration could not complete; the VM stays (or is put back) on its source."""


class MigrationCancelled(Conflict):
    """The user cancelled the migration; the VM stays on its source."""
