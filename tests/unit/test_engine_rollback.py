"""The rollback stack: newest step first, every step attempted, each outcome noted; nothing
to undo past the commit point."""

from __future__ import annotations

import pytest

from segue.domain.errors import Unavailable
from segue.engine.rollback import RollbackRefused, RollbackStack


def stack_of(ran: list[str], failing: set[str]) -> RollbackStack:
    stack = RollbackStack()
    for what in ("bottom", "middle", "top"):
        async def undo(what: str = what) -> None:
            ran.append(what)
            if what in failing:
                raise Unavailable("FAKE_BOOM", f"{what} failed", "")
        stack.push(what, undo)
    return stack


@pytest.mark.parametrize("failing", [set(), {"top"}, {"middle"}, {"top", "middle", "bottom"}])
async def test_every_step_runs_newest_first_and_each_outcome_is_noted(failing: set[str]) -> None:
    ran: list[str] = []
    notes: list[str] = []
    stack = stack_of(ran, failing)
    assert stack.steps == ["top", "middle", "bottom"]
    async def note(text: str) -> None:
        notes.append(text)

    assert await stack.unwind(note) is (not failing)
    assert ran == ["top", "middle", "bottom"]
    for what in ran:
        expected = (f"rollback: {what}: FAILED (FAKE_BOOM: {what} failed)" if what in failing
                    else f"rollback: {what}: done")
        assert expected in notes
        assert stack.succeeded(what) is (what not in failing)
    assert stack.succeeded("never pushed") is None
    assert stack.steps == []


async def test_past_the_commit_point_nothing_is_undone() -> None:
    ran: list[str] = []
    stack = stack_of(ran, set())
    stack.commit("QEMU completed the copy")
    stack.push("late", lambda: _never())
    assert stack.committed and stack.steps == []
    with pytest.raises(RollbackRefused) as err:
        await stack.unwind(_ignore)
    assert err.value.code == "MIGRATION_PAST_COMMIT" and "completed" in err.value.message
    assert ran == []


async def _never() -> None:
    raise AssertionError("a step pushed past the commit point ran")


async def _ignore(note: str) -> None:
    pass
