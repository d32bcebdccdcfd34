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
    "destroy": (EVERY_ROLE, EVERY_STATE, "", False, False, True),
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
    # re-homing a stopped VM (segue.agent.rehome)
    "release_definition": (OWNED, {S.STOPPED}, "VM_NOT_STOPPED", False, False, True),
}

# the operations that take the caller's generation, the fencing token (VM_NOT_OWNED)
FENCING = {"stop", "destroy", "migrate", "cancel", "resume"}


def test_the_declared_table() -> None:
    assert set(GUARDS) == set(EXPECTED)
    for name, (roles, states, code, idle, fresh, locked) in EXPECTED.items():
        guard = GUARDS[name]
        assert (guard.roles, guard.states) == (roles, states), name
        assert (guard.idle, guard.fresh, guard.locked) == (idle, fresh, locked), name
        if states != EVERY_STATE:
            assert guard.code == code, name
        assert guard.wanted and guard.hint, name
        assert guard.fencing == (name in FENCING), name


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


def a_situation_it_accepts(name: str) -> FakeVM:
    """A VM in a role, state and migration the guard of ``name`` lets through."""
    for (role, migration), state in itertools.product(SITUATIONS, VMState):
        if expected_outcome(name, role, state, migration) is None:
            return vm_in(role, state, migration)
    raise AssertionError(f"{name} accepts nothing")


@pytest.mark.parametrize("name", sorted(FENCING))
async def test_a_fencing_guard_refuses_any_generation_but_the_one_held(name: str) -> None:
    guard = GUARDS[name]
    vm = a_situation_it_accepts(name)
    vm.generation = 4
    await guard.check(vm)  # no generation: nothing to check
    await guard.check(vm, 4)
    for stale, held in ((3, 4), (5, 4), (4, None)):
        vm.generation = held
        with pytest.raises(Conflict) as err:
            await guard.check(vm, stale)
        assert err.value.code == "VM_NOT_OWNED", name
        assert err.value.details == {"expected": stale, "held": held}
        assert f"generation {stale}" in err.value.message and err.value.hint
        assert (f"generation {held}" if held else "no lease") in err.value.message


async def test_a_wrong_state_is_named_before_the_generation() -> None:
    """A stopped VM holds no lease: a stop with a generation says it is not running."""
    vm = vm_in(OWNER, S.STOPPED, MigrationStatus.NONE)
    with pytest.raises(Conflict) as err:
        await GUARDS["stop"].check(vm, 7)
    assert err.value.code == "VM_NOT_RUNNING"


async def test_the_other_guards_ignore_a_generation() -> None:
    for name in sorted(set(EXPECTED) - FENCING):
        vm = a_situation_it_accepts(name)
        await GUARDS[name].check(vm, 99)  # no VM_NOT_OWNED: the guard does not fence


async def test_a_fencing_operation_gets_the_generation_its_guard_checked() -> None:
    seen: list[int | None] = []

    async def probe_fencing_op(host: Host, vm: ManagedVM, *,
                               generation: int | None = None) -> str:
        seen.append(generation)
        return vm.name

    try:
        op = requires(roles=OWNED, states={S.RUNNING}, fencing=True)(probe_fencing_op)
        host = Host(vm_in(OWNER, S.RUNNING, MigrationStatus.NONE))
        host.vm.generation = 2
        assert await op(host, "web1") == "web1"
        assert await op(host, "web1", generation=2) == "web1"
        with pytest.raises(Conflict) as err:
            await op(host, "web1", generation=1)
        assert err.value.code == "VM_NOT_OWNED"
        assert seen == [None, 2]  # the refused call never reached the operation
    finally:
        GUARDS.pop("probe_fencing_op", None)


def test_a_fencing_operation_must_take_a_keyword_only_generation() -> None:
    async def probe_unfenced_op(host: Host, vm: ManagedVM, generation: int | None = None
                                ) -> None:
        return None

    with pytest.raises(RuntimeError, match="keyword-only generation"):
        requires(roles=OWNED, states={S.RUNNING}, fencing=True)(probe_unfenced_op)
    assert "probe_unfenced_op" not in GUARDS
