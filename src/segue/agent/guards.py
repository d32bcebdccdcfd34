"""Which agent operation may act on a VM in which role and run state: a declared table.

Every operation on one VM declares its guard with ``@requires`` (the way qemu.qmp's
``@require`` guards its runstates); the guards collect in ``GUARDS`` (operation name ->
``Guard``), the table ``tests/unit/test_agent_guards.py`` checks. The wrapped operation is
called with the VM's name: the guard finds the VM, takes its lock (unless the operation must
run beside a locked one: post-copy pause and recovery, mid-flight parameters), refreshes its
run state from QEMU if the guard says ``fresh``, checks, and calls the operation with the
``ManagedVM``.

Roles are those of ``segue.agent.roles`` (``owner``, ``source``, ``incoming``); the run
state is ``stopped`` once the QEMU process is gone. The checks, in this order:

1. role: an unclaimed destination where only an owned VM may act: ``VM_INCOMING``; an owned
   VM where only a destination may act: ``VM_NOT_INCOMING``;
2. run state: the guard's own code (``VM_NOT_RUNNING``, ``VM_NOT_STOPPED``,
   ``VM_NOT_MIGRATED``, ``VM_NOT_PAUSED``);
3. migration (QEMU is asked only when the guard needs it): a ``source`` where only an
   ``owner`` may act, or a migration still under way where the guard wants none (``idle``):
   ``MIGRATION_IN_PROGRESS``;
4. ownership, for an operation declared with ``fencing``: it takes the caller's
   ``generation`` (keyword-only), the lease generation the caller believes this host holds
   the VM at (its fencing token); given and not the one this host holds
   (``ManagedVM.generation``; or this host holds none): ``VM_NOT_OWNED``, naming both.
   Checked last, so a stopped VM still answers ``VM_NOT_RUNNING`` and the like; without a
   generation nothing is checked (a caller that knows none, e.g. an operator). A start's
   ``generation`` is another one: the lease's current generation, which its claim checks
   (``segue.agent.leases``), since a stopped VM is held by no one.

Errors: ``NotFound`` (``VM_NOT_FOUND``) from the lookup; ``Conflict`` with the codes above.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from segue.agent.managed import ManagedVM
from segue.agent.roles import VMRole, role_of
from segue.domain.errors import Conflict
from segue.domain.vm import VMState
from segue.qemu.qmp import QMPSession

ALL_ROLES = frozenset(VMRole)
OWNED = frozenset({VMRole.OWNER, VMRole.SOURCE})
INCOMING = frozenset({VMRole.INCOMING})
ANY_STATE = frozenset(VMState)
LIVE = ANY_STATE - {VMState.STOPPED}  # a QEMU process runs


@dataclass(frozen=True)
class Guard:
    """When an operation may act: ``roles`` and run ``states`` it accepts; ``code``,
    ``wanted`` and ``hint`` for a state it refuses; ``idle``: no migration may be under way;
    ``fresh``: ask QEMU for the run state first; ``locked``: hold the VM's lock;
    ``fencing``: the operation takes the caller's ``generation`` (module doc, step 4)."""

    operation: str
    roles: frozenset[VMRole]
    states: frozenset[VMState]
    code: str = "VM_NOT_RUNNING"
    wanted: str = "running"
    hint: str = "start it first"
    idle: bool = False
    fresh: bool = False
    locked: bool = True
    fencing: bool = False

    async def check(self, vm: ManagedVM, generation: int | None = None) -> None:
        """Raises Conflict (see the module doc) unless the operation may act on ``vm``;
        ``generation``: the caller's, checked if the guard is ``fencing``."""
        if self.fresh:
            await vm.refresh_state()
        self.check_role(vm)
        state = vm.live_state()
        if state not in self.states:
            pid = f" (pid {vm.pid})" if state is not VMState.STOPPED else ""
            raise Conflict(self.code, f"{vm.name} is {state.value}{pid}, not {self.wanted}",
                           self.hint, state=state.value)
        if vm.incoming is None and (self.idle or not self.roles >= OWNED):
            migration = await vm.migration()
            role = role_of(False, migration, state)
            if role not in self.roles or (self.idle and migration.status.active):
                raise Conflict("MIGRATION_IN_PROGRESS",
                               f"{vm.name} is migrating (QEMU: {migration.status.value})",
                               "wait for the migration to end, or cancel it")
        if self.fencing:
            check_owned(vm, generation)

    def check_role(self, vm: ManagedVM) -> None:
        """Step 1 of ``check``: incoming or owned (no QEMU asked)."""
        if vm.incoming is not None and VMRole.INCOMING not in self.roles:
            raise Conflict("VM_INCOMING",
                           f"{vm.name} is the destination of migration {vm.incoming}, not a "
                           "VM this host owns",
                           "act on the migration's source host, wait for the claim, or abort "
                           "the incoming side")
        if vm.incoming is None and not self.roles & OWNED:
            raise Conflict("VM_NOT_INCOMING",
                           f"{vm.name} is owned by this host, not an incoming migration",
                           "act on the incoming side only on the migration's destination")


def check_owned(vm: ManagedVM, generation: int | None) -> None:
    """Raises Conflict (``VM_NOT_OWNED``) if ``generation`` is given and this host does not
    hold the VM's lease at it (step 4 of the module doc)."""
    if generation is None or generation == vm.generation:
        return
    held = (f"holds it at generation {vm.generation}" if vm.generation is not None
            else "holds no lease of it")
    raise Conflict("VM_NOT_OWNED",
                   f"{vm.name}: the caller expects generation {generation}, but this host "
                   f"{held}",
                   "the VM was claimed (or its lease moved on) since the caller read its "
                   "record: refresh the VM's record (its host and generation) and try again",
                   expected=generation, held=vm.generation)


GUARDS: dict[str, Guard] = {}


def qmp_of(vm: ManagedVM) -> QMPSession:
    """The VM's QMP session; raises Conflict (``VM_NOT_RUNNING``) without one (a QEMU this
    agent could not connect to after a restart)."""
    if vm.qmp is None:
        raise Conflict("VM_NOT_RUNNING", f"{vm.name} has no QMP session on this host",
                       "see the agent's log: its QEMU did not answer", state=vm.state.value)
    return vm.qmp


class HasVMs(Protocol):
    """What a guarded operation's owner offers: its VMs by name (raises NotFound)."""

    def get(self, name: str) -> ManagedVM: ...


S = TypeVar("S", bound=HasVMs)
P = ParamSpec("P")
R = TypeVar("R")
Operation = Callable[Concatenate[S, ManagedVM, P], Awaitable[R]]
Guarded = Callable[Concatenate[S, str, P], Coroutine[Any, Any, R]]


def requires(*, roles: Iterable[VMRole], states: Iterable[VMState],
             code: str = "VM_NOT_RUNNING", wanted: str = "running", hint: str = "start it first",
             idle: bool = False, fresh: bool = False, locked: bool = True,
             fencing: bool = False) -> Callable[[Operation[S, P, R]], Guarded[S, P, R]]:
    """Declare the guard of an operation ``op(self, vm, ...)`` (see ``Guard``) and enter it
    into ``GUARDS``; the result is ``op(self, name, ...)``, guarded. A ``fencing`` operation
    declares a keyword-only ``generation: int | None = None`` (the guard checks it; the
    operation gets it too); RuntimeError at import if it does not."""

    def decorate(op: Operation[S, P, R]) -> Guarded[S, P, R]:
        guard = Guard(op.__name__, frozenset(roles), frozenset(states), code, wanted, hint,
                      idle, fresh, locked, fencing)
        if op.__name__ in GUARDS:
            raise RuntimeError(f"two guarded agent operations are named {op.__name__}")
        token = inspect.signature(op).parameters.get("generation")
        if fencing and (token is None or token.kind is not inspect.Parameter.KEYWORD_ONLY):
            raise RuntimeError(f"the fencing operation {op.__name__} takes no keyword-only "
                               "generation")
        GUARDS[op.__name__] = guard

        async def guarded(self: S, name: str, /, *args: P.args, **kwargs: P.kwargs) -> R:
            vm = self.get(name)
            generation = kwargs.get("generation")
            async with vm.lock if guard.locked else contextlib.nullcontext():
                await guard.check(vm, generation if isinstance(generation, int) else None)
                return await op(self, vm, *args, **kwargs)

        functools.update_wrapper(guarded, op)
        return guarded

    return decorate
