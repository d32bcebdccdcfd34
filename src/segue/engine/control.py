"""What a user may ask of a migration job from outside it, and when it is refused (pure).

A job cancels while queued or until it crosses its commit point (``CANCELLABLE``); it
switches to post-copy on request only while it copies memory (``start``, ``monitor``) with
post-copy allowed. A queued job has nothing started: ``cancel_queued`` ends it at once.

Errors: ``Conflict`` (``MIGRATION_NOT_CANCELLABLE``, ``MIGRATION_POSTCOPY_NOT_POSSIBLE``);
``InvalidTransition`` from the store when a job is not where the caller thought.
"""

from __future__ import annotations

from segue.domain.errors import Conflict
from segue.engine.phases import Phase
from segue.engine.ports import JobStore

CANCELLABLE = frozenset({Phase.QUEUED, Phase.CHECK, Phase.PREPARE, Phase.START, Phase.MONITOR})
COPYING = frozenset({Phase.START, Phase.MONITOR})
QUEUED_CANCEL_REASON = "cancelled by the user while queued"


def not_cancellable(job_id: str, phase: Phase, why: str = "") -> Conflict:
    """The refusal of a cancel of a job in ``phase`` (``why``: past its commit point)."""
    state = f"past its commit point ({why})" if why else phase.value
    return Conflict("MIGRATION_NOT_CANCELLABLE",
                    f"migration {job_id} is {state}; it cannot be cancelled",
                    "only a migration queued or still copying memory can be cancelled")


def refuse_cancel(job_id: str, phase: Phase) -> None:
    """Raise ``MIGRATION_NOT_CANCELLABLE`` unless a job in ``phase`` may be cancelled."""
    if phase not in CANCELLABLE:
        raise not_cancellable(job_id, phase)


def refuse_postcopy(job_id: str, phase: Phase, allowed: bool, running: bool = True) -> None:
    """Raise ``MIGRATION_POSTCOPY_NOT_POSSIBLE`` unless the job copies memory (``phase`` in
    ``COPYING`` and ``running`` in this controller) with post-copy ``allowed``."""
    if phase not in COPYING or not running:
        raise Conflict("MIGRATION_POSTCOPY_NOT_POSSIBLE",
                       f"migration {job_id} is {phase.value}, not copying memory",
                       "switch to post-copy while it copies (phase start or monitor)")
    if not allowed:
        raise Conflict("MIGRATION_POSTCOPY_NOT_POSSIBLE",
                       f"migration {job_id} was started with post-copy not allowed",
                       "cancel it and migrate again without --no-postcopy")


async def cancel_queued(store: JobStore, job_id: str) -> None:
    """End a queued job ``cancelled`` (nothing had started, nothing to undo); raises
    ``InvalidTransition`` if it is no longer queued."""
    await store.transition(job_id, Phase.CANCELLED, QUEUED_CANCEL_REASON,
                     reason=QUEUED_CANCEL_REASON, error_code="MIGRATION_CANCELLED")
