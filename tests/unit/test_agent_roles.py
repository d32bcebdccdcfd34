"""A VM's role from QEMU's answers (pure)."""

from __future__ import annotations

import pytest

from segue.agent.roles import VMRole, migration_active, migration_completed, role_of
from segue.api.qemu import QueryMigrate
from segue.domain.vm import VMState


def qemu(answer: dict[str, object]) -> QueryMigrate:
    """QEMU's ``query-migrate`` answer, as the QMP edge wraps it."""
    return QueryMigrate.model_validate(answer)


@pytest.mark.parametrize(("incoming", "migration", "state", "role"), [
    (True, {}, VMState.INMIGRATE, VMRole.INCOMING),
    (True, {"status": "completed"}, VMState.RUNNING, VMRole.INCOMING),  # until claimed
    (False, {}, VMState.RUNNING, VMRole.OWNER),
    (False, {}, VMState.STOPPED, VMRole.OWNER),
    (False, {"status": "setup"}, VMState.RUNNING, VMRole.SOURCE),
    (False, {"status": "active"}, VMState.RUNNING, VMRole.SOURCE),
    (False, {"status": "device"}, VMState.PAUSED, VMRole.SOURCE),
    (False, {"status": "cancelling"}, VMState.RUNNING, VMRole.SOURCE),
    (False, {"status": "completed"}, VMState.POSTMIGRATE, VMRole.SOURCE),
    (False, {"status": "completed"}, VMState.PAUSED, VMRole.SOURCE),  # finish-migrate
    (False, {"status": "completed"}, VMState.RUNNING, VMRole.OWNER),  # resumed: rolled back
    (False, {"status": "cancelled"}, VMState.RUNNING, VMRole.OWNER),
    (False, {"status": "failed"}, VMState.RUNNING, VMRole.OWNER),
])
def test_role_of(incoming: bool, migration: dict[str, str], state: VMState,
                 role: VMRole) -> None:
    assert role_of(incoming, qemu(migration), state) is role


def test_active_and_completed() -> None:
    assert migration_active(qemu({"status": "postcopy-active"}))
    assert not migration_active(qemu({})) and not migration_active(qemu({"status": "completed"}))
    assert migration_completed(qemu({"status": "completed"}))
    assert not migration_completed(qemu({"socket-address": []}))
