"""The migration job's state machine: every allowed transition, and the refused ones."""

from __future__ import annotations

import itertools

import pytest

from segue.engine.phases import (
    ACTIVE,
    ALLOWED,
    ROLLBACK_FROM,
    RUNNING,
    TERMINAL,
    InvalidTransition,
    Phase,
    check_transition,
)

HAPPY_PATH = [Phase.CHECK, Phase.PREPARE, Phase.START, Phase.MONITOR, Phase.SWITCHOVER,
              Phase.FINALIZE, Phase.COMPLETED]


def test_the_happy_path_is_allowed_step_by_step() -> None:
    for current, target in itertools.pairwise(HAPPY_PATH):
        check_transition(current, target)


@pytest.mark.parametrize("phase", ROLLBACK_FROM)
def test_every_phase_before_finalize_can_roll_back(phase: Phase) -> None:
    check_transition(phase, Phase.ROLLING_BACK)


def test_finalize_never_rolls_back() -> None:
    """Once the destination runs the VM, undoing the move could run it twice."""
    with pytest.raises(InvalidTransition) as err:
        check_transition(Phase.FINALIZE, Phase.ROLLING_BACK)
    assert err.value.code == "MIGRATION_BAD_TRANSITION"


@pytest.mark.parametrize("current", sorted(TERMINAL))
@pytest.mark.parametrize("target", list(Phase))
def test_terminal_phases_are_final(current: Phase, target: Phase) -> None:
    with pytest.raises(InvalidTransition):
        check_transition(current, target)


@pytest.mark.parametrize(("current", "target"), [
    (Phase.CHECK, Phase.MONITOR), (Phase.PREPARE, Phase.SWITCHOVER),
    (Phase.MONITOR, Phase.COMPLETED), (Phase.ROLLING_BACK, Phase.COMPLETED),
    (Phase.START, Phase.FAILED),
])
def test_skipping_phases_is_refused(current: Phase, target: Phase) -> None:
    with pytest.raises(InvalidTransition):
        check_transition(current, target)


def test_rollback_ends_failed_or_cancelled_or_finds_the_commit_point_crossed() -> None:
    assert ALLOWED[Phase.ROLLING_BACK] == {Phase.FAILED, Phase.CANCELLED, Phase.SWITCHOVER}
    assert ACTIVE.isdisjoint(TERMINAL) and set(Phase) == ACTIVE | TERMINAL


@pytest.mark.parametrize("target", [Phase.CHECK, Phase.CANCELLED])
def test_a_queued_job_starts_with_its_checks_or_is_cancelled(target: Phase) -> None:
    check_transition(Phase.QUEUED, target)


@pytest.mark.parametrize("target", sorted(set(Phase) - {Phase.CHECK, Phase.CANCELLED}))
def test_a_queued_job_has_nothing_to_roll_back_and_skips_nothing(target: Phase) -> None:
    with pytest.raises(InvalidTransition):
        check_transition(Phase.QUEUED, target)


@pytest.mark.parametrize("current", sorted(set(Phase) - {Phase.QUEUED}))
def test_no_job_goes_back_to_the_queue(current: Phase) -> None:
    with pytest.raises(InvalidTransition):
        check_transition(current, Phase.QUEUED)


def test_a_queued_job_is_active_but_holds_no_slot() -> None:
    assert Phase.QUEUED in ACTIVE and Phase.QUEUED not in RUNNING
