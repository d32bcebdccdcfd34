"""Reconciliation: the controller's view of who runs each VM, kept to what the hosts say.

The truth of who may run a VM is its lease on shared storage (``segue.agent.leases``); the
hosts report, in every heartbeat, each QEMU they have of it (``VMInstance``: run state,
role, the lease generation held, why it is fenced). ``record_instances`` replaces the
reporting host's rows, and ``decide`` (pure) reads all hosts' rows of a VM:

- the owner is the host whose instance runs the VM at the highest generation: when that is
  not the host the inventory names, the inventory follows (``owner-changed``, with the
  evidence), whatever a job said, since a generation only grows with a claim;
- two running instances (never expected: the lease forbids it) are a ``split-brain``
  event; a running instance at an older generation than the owner's is ``stale`` (its agent
  fences it at its next lease renewal); a fenced instance is recorded once (``fenced``);
- a migrated-away source (``postmigrate`` on a host that is not the owner, while the owner
  runs the VM at a higher generation) is released when no job of the VM is active, and an
  unclaimed incoming QEMU that never took the VM over (no lease generation) on a host that is
  not the owner is torn down: ``run_releases`` asks their agents, finishing a move whose job
  gave up past its commit point (``MIGRATION_DEST_UNREACHABLE``) either way.

Events are recorded when an instance changes (its state, generation or fencing), not on
every heartbeat. A restarted controller or agent converges within a heartbeat or two.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from segue.api.inventory import VMReport
from segue.controller.models import VMInstance
from segue.domain.errors import SegueError
from segue.domain.vm import VMState

log = logging.getLogger(__name__)
RECONCILE_INTERVAL_S = 5.0


@dataclass(frozen=True)
class Seen:
    """One host's instance of a VM, as decided on."""

    host: str
    state: str
    role: str
    generation: int | None
    fenced: str | None = None


@dataclass(frozen=True)
class Decision:
    """What reconciling one VM found: the ``owner`` to record (host, generation; None: keep
    the inventory's), ``events`` (kind, data), the hosts whose migrated-away source may be
    released (``release``) and those whose unclaimed incoming QEMU, which never took the VM
    over, may be torn down (``abort``)."""

    owner: tuple[str, int] | None = None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    release: list[str] = field(default_factory=list)
    abort: list[str] = field(default_factory=list)


def decide(owner_host: str, owner_generation: int | None, seen: Sequence[Seen],
           changed: Iterable[str], job_active: bool) -> Decision:
    """Reconcile one VM (module doc): ``owner_host``/``owner_generation`` as the inventory
    has them, ``seen`` every host's instance, ``changed`` the hosts whose instance changed
    in this heartbeat (events are recorded for those only), ``job_active``: a migration job
    of the VM is under way."""
    changed = set(changed)
    running = [s for s in seen if s.state == VMState.RUNNING.value and s.fenced is None
               and s.generation is not None]
    newest = max(running, key=lambda s: s.generation or 0, default=None)
    decision = Decision()
    if newest is not None and newest.host != owner_host and newest.generation is not None \
            and (owner_generation is None or newest.generation > owner_generation):
        decision = Decision(owner=(newest.host, newest.generation))
        decision.events.append(("owner-changed", {
            "from": owner_host, "to": newest.host, "generation": newest.generation,
            "evidence": f"{newest.host} runs it at lease generation {newest.generation}"}))
    top = newest.generation if newest is not None else owner_generation
    if len(running) > 1 and changed & {s.host for s in running}:
        decision.events.append(("split-brain", {
            "running": {s.host: s.generation for s in running},
            "kept": newest.host if newest else None}))
    for s in seen:
        if s.host not in changed:
            continue
        if s.fenced is not None:
            decision.events.append(("fenced", {"host": s.host, "why": s.fenced}))
        elif s.state == VMState.RUNNING.value and s in running and s is not newest:
            decision.events.append(("stale", {"host": s.host, "generation": s.generation,
                                              "owner_generation": top}))
    owner_now = decision.owner[0] if decision.owner else owner_host
    owner_runs = any(s.host == owner_now for s in running)
    if not job_active and owner_runs:
        decision.release.extend(s.host for s in seen if s.host != owner_now
                                and s.state == VMState.POSTMIGRATE.value)
    if not job_active:
        decision.abort.extend(s.host for s in seen if s.role == "incoming"
                              and s.host != owner_now and s.generation is None
                              and s.state != VMState.RUNNING.value)
    return decision


# ---- the database side ----
def record_instances(session: Session, host: str, reported: list[VMReport],
                     now: datetime) -> set[str]:
    """Replace ``host``'s instances with its heartbeat's; the names of the VMs whose
    instance there is new, changed or gone."""
    old = {row.vm_name: row for row in session.scalars(
        select(VMInstance).where(VMInstance.host == host))}
    changed: set[str] = set()
    for info in reported:
        row = old.pop(info.name, None)
        key = (info.state.value, info.role, info.generation, info.fenced)
        if row is None:
            row = VMInstance(vm_name=info.name, host=host, uuid=info.uuid, state="",
                             role="", seen_at=now)
            session.add(row)
        if (row.state, row.role, row.generation, row.fenced) != key:
            changed.add(info.name)
        row.uuid, row.state, row.role = info.uuid, info.state.value, info.role
        row.generation, row.fenced, row.migration_id = (info.generation, info.fenced,
                                                        info.migration_id)
        row.seen_at = now
    for name, row in old.items():
        changed.add(name)
        session.delete(row)
    return changed


def instances_of(session: Session, vm_name: str, hosts: set[str]) -> list[Seen]:
    """Every connected host's instance of the VM (``hosts``: the connected ones)."""
    rows = session.scalars(select(VMInstance).where(VMInstance.vm_name == vm_name))
    return [Seen(r.host, r.state, r.role, r.generation, r.fenced) for r in rows
            if r.host in hosts]


def forget_instances(session: Session, vm_name: str) -> None:
    session.execute(delete(VMInstance).where(VMInstance.vm_name == vm_name))


# ---- releasing migrated-away sources ----
class Releaser(Protocol):
    """What the reconciler needs of an agent (``segue.clients.agent.AgentClient``)."""

    async def release(self, name: str) -> None: ...

    async def abort_incoming(self, name: str) -> None: ...


class Pending(Protocol):
    """Where ``run_releases`` reads its work and records the outcomes (the inventory
    service: its database work runs off the event loop)."""

    async def pending_releases(self) -> list[tuple[str, str, str, str]]: ...

    def agent(self, url: str, host: str) -> Releaser: ...

    async def released(self, vm: str, host: str, action: str, error: str | None) -> None: ...


async def run_releases(source: Pending) -> None:
    """Every ``RECONCILE_INTERVAL_S``: release each migrated-away source and tear down each
    unclaimed incoming QEMU reconciliation found (``decide``), noting the outcome as an
    event; never raises (but cancellation)."""
    while True:
        await asyncio.sleep(RECONCILE_INTERVAL_S)
        try:
            pending = await source.pending_releases()
        except Exception:
            log.exception("reconciliation: reading the instances failed; trying again")
            continue
        for action, vm, host, url in pending:
            agent = source.agent(url, host)
            try:
                await (agent.release(vm) if action == "release" else agent.abort_incoming(vm))
            except SegueError as err:
                await source.released(vm, host, action, f"{err.code}: {err.message}")
                continue
            except Exception as err:  # an agent's bug must not stop reconciliation
                log.exception("reconciliation: %s of %s on %s failed", action, vm, host)
                await source.released(vm, host, action, repr(err))
                continue
            await source.released(vm, host, action, None)
