"""The role x state guards of the agent's operations (``segue.agent.guards``): the declared
table is the one expected, and each guard lets exactly its roles and states through, with
the documented Conflict code otherwise."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path

import pytest

import segue.agent.incoming
import segue.agent.outgoing
import segue.agent.vms  # noqa: F401  (their @requires enter the table)
from segue.agent.guards import GUARDS, Guard, requires
from segue.agent.managed import ManagedVM
from segue.agent.roles import VMRole
from segue.api.qemu import MigrationStatus, QueryMigrate
from segue.domain.errors import Conflict
from segue.domain.vm import VMSpec, VMState
from segue.qemu.argv import RuntimePaths

OWNER, SOURCE, INCOMING = VMRole.OWNER, VMRole.SOURCE, VMRole.INCOMING
OWNED = {OWNER, SOURCE}
EVERY_ROLE = {OWNER, SOURCE, INCOMING}
S = VMState
EVERY_STATE = set(VMState)
LIVE = EVERY_STATE - {S.STOPPED}

# operation: (roles, states, code for another state, idle, fresh, locked)
EXPECTED: dict[str, tuple[set[VMRole], set[VMState], str, bool, bool, bool]] = {
    # the VM's lifecycle (segue.agent.vms)
    "start": (OWNED, {S.STOPPED}, "VM_NOT_STOPPED", False, False, True),
    "stop": (EVERY_ROLE, LIVE, "VM_NOT_RUNNING", False, False, True),
    # source (segue.agent.outgoing)
    "migrate": ({OWNER}, {S.RUNNING}, "VM_NOT_RUNNING", False, True, True),
    "cancel": (OWNED, LIVE, "VM_NOT_RUNNING", False, False, True),
    "dirty_rate": (OWNED, {S.RUNNING}, "VM_NOT_RUNNING", False, True, True),
    "set_parameters": (OWNED, LIVE, "VM_NOT_RUNNING", False, False, False),
    "start_postcopy": (OWNED, LIVE, "VM_NOT_RUNNING", False, False, False),
    "resume_migration": (OWNED, LIVE, "VM_NOT_RUNNING", False, False, False),
    "release": (OWNED, {S.POSTMIGRATE}, "VM_NOT_MIGRATED", False, True, True),
    "resume": (OWNED, {S.PAUSED, S.POSTMIGRATE}, "VM_NOT_PAUSED", True, True, True),
    # either side
    "pause": (EVERY_ROLE, LIVE, "VM_NOT_RUNNING", False, False, False),
    # destination (segue.agent.incoming)
    "claim": ({INCOMING}, {S.RUNNING}, "VM_NOT_RUNNING", False, True, True),
    "abort": ({INCOMING}, EVERY_STATE - {S.RUNNING}, "VM_RUNNING", False, True, True),
    "recover": ({INCOMING}, LIVE, "VM_NOT_RUNNING", False, False, False),
}


def test_the_declared_table() -> None:
    assert set(GUARDS) == set(EXPECTED)
    for name, (roles, states, code, idle, fresh, locked) in EXPECTED.items():
        guard = GUARDS[name]
        assert (guard.roles, guard.states) == (roles, states), name
        assert (guard.idle, guard.fresh, guard.locked) == (idle, fresh, locked), name
        if states != EVERY_STATE:
            assert guard.code == code, name
        assert guard.wanted and guard.hint, name


def test_post_copy_recovery_never_waits_for_a_lock_or_an_in_band_answer() -> None:
    """A post-copy destination whose stream is down answers nothing in band, and another
    operation may hold the VM's lock: pause and recover ask nothing and take no lock."""
    for name in ("pause", "recover", "resume_migration", "set_parameters", "start_postcopy"):
        assert not GUARDS[name].locked and not GUARDS[name].fresh, name


class FakeVM(ManagedVM):
    """A VM whose QEMU is this test process (alive), with a given migration status."""

    qemu_migration: QueryMigrate = QueryMigrate()
    refreshed: int = 0

    async def migration(self) -> QueryMigrate:
        return self.qemu_migration

    async def refresh_state(self) -> None:
        self.refreshed += 1


def vm_in(role: VMRole, state: VMState, migration: MigrationStatus) -> FakeVM:
    vm = FakeVM(spec=VMSpec(name="web1", datastore="shared"),
                runtime=RuntimePaths(Path("/nonexistent")), state=state,
                pid=None if state is S.STOPPED else os.getpid(),
                incoming="m-1" if role is INCOMING else None)
    vm.qemu_migration = QueryMigrate(status=migration)
    return vm


# (role, QEMU's migration status) pairs a VM can be in, as role_of derives them
SITUATIONS = [(OWNER, MigrationStatus.NONE), (OWNER, MigrationStatus.CANCELLED),
              (SOURCE, MigrationStatus.ACTIVE), (SOURCE, MigrationStatus.POSTCOPY_PAUSED),
              (SOURCE, MigrationStatus.COMPLETED), (INCOMING, MigrationStatus.ACTIVE),
              (INCOMING, MigrationStatus.COMPLETED)]


def expected_outcome(name: str, role: VMRole, state: VMState,
                     migration: MigrationStatus) -> str | None:
    """The Conflict code the guard must raise (None: it lets the operation act)."""
    roles, states, code, idle, _, _ = EXPECTED[name]
    if role is INCOMING and INCOMING not in roles:
        return "VM_INCOMING"
    if role is not INCOMING and not roles & OWNED:
        return "VM_NOT_INCOMING"
    if state not in states:
        return code
    if role is INCOMING:
        return None
    # the role QEMU's answers give (segue.agent.roles.role_of)
    actual = SOURCE if (migration.active or state is S.POSTMIGRATE
                        or (migration is MigrationStatus.COMPLETED and state is S.PAUSED)) \
        else OWNER
    if actual not in roles or (idle and migration.active):
        return "MIGRATION_IN_PROGRESS"
    return None


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_each_guard_lets_exactly_its_roles_and_states_through(name: str) -> None:
    guard = GUARDS[name]
    for (role, migration), state in itertools.product(SITUATIONS, VMState):
        vm = vm_in(role, state, migration)
        want = expected_outcome(name, role, state, migration)
        try:
            await guard.check(vm)
        except Conflict as err:
            assert err.code == want, (name, role, migration, state)
            assert vm.name in err.message and err.hint
        else:
            assert want is None, (name, role, migration, state)
        assert vm.refreshed == (1 if guard.fresh else 0)


def test_a_state_conflict_names_the_state_and_the_pid() -> None:
    vm = vm_in(OWNER, S.RUNNING, MigrationStatus.NONE)
    with pytest.raises(Conflict) as err:
        asyncio.run(GUARDS["start"].check(vm))
    assert err.value.code == "VM_NOT_STOPPED" and str(os.getpid()) in err.value.message
    assert err.value.details == {"state": "running"}


class Host:
    """An owner of guarded operations: its VMs by name."""

    def __init__(self, vm: ManagedVM) -> None:
        self.vm = vm

    def get(self, name: str) -> ManagedVM:
        assert name == self.vm.name
        return self.vm


async def test_the_decorator_finds_the_vm_locks_checks_and_registers() -> None:
    held: list[bool] = []

    async def probe_guarded_op(host: Host, vm: ManagedVM, word: str) -> str:
        held.append(vm.lock.locked())
        return f"{vm.name} {word}"

    try:
        locked = requires(roles=OWNED, states={S.RUNNING})(probe_guarded_op)
        assert isinstance(GUARDS["probe_guarded_op"], Guard)
        host = Host(vm_in(OWNER, S.RUNNING, MigrationStatus.NONE))
        assert await locked(host, "web1", "ran") == "web1 ran"
        host.vm.state = S.PAUSED
        with pytest.raises(Conflict):
            await locked(host, "web1", "ran")
        with pytest.raises(RuntimeError):  # one guard per operation name
            requires(roles=OWNED, states={S.RUNNING})(probe_guarded_op)
    finally:
        GUARDS.pop("probe_guarded_op", None)
    assert held == [True]
