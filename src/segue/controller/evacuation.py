"""Maintenance evacuations on the controller: the planned moves of a host run as migration
jobs, each evacuation a task of the controller's TaskGroup.

``Evacuations.begin`` stores the plan (``segue.controller.evacuation_models``: each VM's
destination or blocker) together with the host's ``entering-maintenance`` state, in one
transaction, then runs it: each planned VM is requested through
``MigrationService.request`` (initiator ``maintenance``, no actor: the policies decide on
that), at most ``max_parallel`` of this evacuation's jobs at once (the scheduler's per-host
limits may queue them further), and each job is awaited by polling its record. A job that
ends other than ``completed``, or a request that is refused, makes that VM a blocker with
the job's (or the refusal's) code and message; but a job that *failed* (not cancelled)
and left the VM running on its source, as every failure before the commit point does (a
controller's own stop or restart rolling back a copy no controller watched,
``CONTROLLER_STOPPED``, ``CONTROLLER_RESTARTED``; a destination that did not resume in
time; an agent's timeout), is requested once more (``evacuation-retried``), never while
another of the VM's jobs runs; a second failure makes it a blocker. When no VM is waiting or
migrating any more, the host becomes ``in-maintenance`` if only blocked VMs are not left on
it, else it stays ``entering-maintenance`` with the reason naming the blockers
(``web1: MUST_RULE; web2: MIGRATION_FAILED``), and the task ends.

A VM's job id is stored as soon as its request returns. ``resume_all`` (at the controller's
start) runs every evacuation a previous controller left running: a VM with a job id is
awaited, never requested again; a planned VM that already has a migration in flight (a
controller that stopped between a request and its record) adopts that job; a planned VM no
longer on the host counts as moved. Every step is a VM event (``evacuation-requested``,
``evacuation-moved``, ``evacuation-blocked``) in the VM's event log (``segue vm events``).

A planned VM that is stopped when its turn comes is re-homed instead of migrated, at once
and without a migration slot: the destination's agent adopts its definition, the old
host's agent releases its copy (``segue.agent.rehome``; one that cannot be told then drops
it at its next start), and the inventory records the VM on the destination (``moved``
event). A refused adoption makes it a blocker with the agent's code. A VM neither running
nor stopped then (paused, missing, ...) is a blocker (``VM_STATE_BLOCKS``).

``begin_return`` (``segue host maintenance exit HOST --return``) runs the same way a return:
each VM the host's latest evacuation moved is requested back to the host from where that
evacuation put it (the migration's admission checks rules, capacity and policies, as for any
request: a refusal makes that VM a blocker). A VM already back counts as moved; one that has
gone elsewhere since is not moved (``RETURN_SKIPPED``). The host's state does not change;
its events are ``return-requested``, ``return-moved``, ``return-blocked``.

Errors: ``Conflict`` (``EVACUATION_RUNNING``) from ``refuse_running``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from segue.api.maintenance import EvacuationMoveView, MaintenanceStatus
from segue.api.migration import MigrationOptionsBody
from segue.controller import inventory
from segue.controller.db import Database
from segue.controller.evacuation_models import EvacuationMoveRow, EvacuationRow
from segue.controller.migrations import MigrationService
from segue.controller.models import utcnow
from segue.domain.errors import Conflict, SegueError
from segue.domain.maintenance import MaintenanceState
from segue.domain.vm import VMState
from segue.engine.phases import TERMINAL, Phase
from segue.placement.evacuation import Blocker, EvacuationPlan

log = logging.getLogger(__name__)
POLL_S = 0.5  # seconds between looks at an evacuation's jobs
PLANNED, MIGRATING, MOVED, BLOCKED = "planned", "migrating", "moved", "blocked"
RUNNING, DONE, STUCK, STOPPED = "running", "done", "stuck", "stopped"
EVACUATE, RETURN = "evacuate", "return"
RETURN_SKIPPED = "RETURN_SKIPPED"
OTHER_MEANS = "it left the host by other means"
REHOMED = "re-homed: stopped, its definition moved"
RETRIED = "requested again"
VM_STATE_BLOCKS = "VM_STATE_BLOCKS"


def state_blocks(vm: str, state: str | None) -> str:
    """The message of a VM neither running nor stopped (``VM_STATE_BLOCKS``)."""
    return f"{vm} is {state}: only a running VM migrates and a stopped one is re-homed"


@dataclass(frozen=True)
class MoveRecord:
    """One VM of an evacuation as stored."""

    id: int
    vm: str
    dest: str | None
    phase: str
    job_id: str | None
    source: str | None = None
    retried: bool = False


@dataclass(frozen=True)
class EvacuationRecord:
    id: int
    host: str
    max_parallel: int
    moves: tuple[MoveRecord, ...]
    kind: str = EVACUATE

    def leaves(self, move: MoveRecord) -> str:
        """The host ``move`` leaves."""
        return move.source or self.host


class Evacuations:
    """Runs, resumes, stops and reports evacuations (see the module doc)."""

    def __init__(self, db: Database, migrations: MigrationService, tg: asyncio.TaskGroup,
                 poll_s: float = POLL_S) -> None:
        self.db = db
        self.migrations = migrations
        self.tg = tg
        self.poll_s = poll_s
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def refuse_running(self, host: str) -> None:
        """Raise Conflict (``EVACUATION_RUNNING``) if ``host``'s evacuation runs."""
        if host in self.tasks:
            raise Conflict("EVACUATION_RUNNING", f"host {host} is being evacuated already",
                           f"follow it (segue host maintenance status {host}), or stop it "
                           f"(segue host maintenance exit {host})", host=host)

    async def begin(self, host: str, max_parallel: int, plan: EvacuationPlan,
                    unmovable: Sequence[Blocker], reason: str) -> None:
        """Store the plan with the host ``entering-maintenance`` (``reason``) and run it."""
        evacuation_id = await self.db.run(_begin, host, max_parallel, plan, unmovable, reason)
        self._start(host, evacuation_id)

    async def begin_return(self, host: str, max_parallel: int) -> list[MoveRecord]:
        """Bring back the VMs ``host``'s latest evacuation moved (module doc); the moves
        (none: nothing to bring back, no run stored)."""
        evacuation_id, moves = await self.db.run(_begin_return, host, max_parallel)
        if evacuation_id is not None:
            self._start(host, evacuation_id)
        return moves

    def _start(self, host: str, evacuation_id: int) -> None:
        self.tasks[host] = self.tg.create_task(self._run(host, evacuation_id),
                                               name=f"evacuate-{host}")

    async def resume_all(self) -> int:
        """Run again every evacuation a previous controller left running; how many."""
        left = await self.db.run(_running_evacuations)
        for host, evacuation_id in left:
            self._start(host, evacuation_id)
        return len(left)

    def stop_all(self) -> None:
        """Cancel every evacuation task (they stay ``running`` in the database, to resume)."""
        for task in self.tasks.values():
            task.cancel()

    async def stop(self, host: str) -> None:
        """End ``host``'s evacuation (the host leaves maintenance): no new request; the
        jobs already requested run on."""
        task = self.tasks.pop(host, None)
        if task is not None:
            task.cancel()
        await self.db.run(_stop, host)

    async def status(self, host: str) -> MaintenanceStatus:
        """``host``'s maintenance state and its latest evacuation, each VM's phase."""
        status = await self.db.run(_status, host, utcnow())
        vms = []
        for row in status.vms:
            if row.phase == MIGRATING and row.job_id is not None:
                job = await self.migrations.get(row.job_id)
                sample = job.progress
                sent = (sample.transferred, sample.transferred + sample.remaining) \
                    if sample is not None else (0, 0)
                row = row.model_copy(update={
                    "job_phase": job.phase,
                    "progress_pct": round(100 * sent[0] / sent[1], 1) if sent[1] else None,
                    "eta_s": sample.eta_s if sample is not None else None})
            vms.append(row)
        eta = status.eta_s
        if eta is not None:  # no sooner than the slowest move running says
            eta = max([eta, *(r.eta_s for r in vms if r.eta_s is not None)])
        return status.model_copy(update={"vms": vms, "eta_s": eta})

    async def _run(self, host: str, evacuation_id: int) -> None:
        try:
            while True:  # polls the jobs' records: they end in the runner's tasks
                if await self._step(evacuation_id):
                    return
                await asyncio.sleep(self.poll_s)
        except Exception as err:  # the TaskGroup must outlive one evacuation's fault
            log.exception("the evacuation of %s stopped on an error", host)
            await self.db.run(_end_on_error, evacuation_id, f"{type(err).__name__}: {err}")
        finally:
            if self.tasks.get(host) is asyncio.current_task():
                del self.tasks[host]

    async def _step(self, evacuation_id: int) -> bool:
        """Await the jobs, request what may start; True once nothing is left to do."""
        evacuation = await self.db.run(_record, evacuation_id)
        if evacuation is None:
            return True  # stopped meanwhile
        in_flight = 0
        for move in evacuation.moves:
            if move.phase == MIGRATING and move.job_id is not None:
                in_flight += not await self._ended(evacuation, move, move.job_id)
        waiting = 0
        for move in (m for m in evacuation.moves if m.phase == PLANNED):
            if in_flight >= evacuation.max_parallel and await self.db.run(
                    _vm_state, move.vm) != VMState.STOPPED.value:
                waiting += 1  # a migration slot is needed; a re-homing goes on at once
                continue
            in_flight += await self._request(evacuation, move)
        if in_flight or waiting:
            return False
        await self.db.run(_finish, evacuation_id)
        return True

    async def _ended(self, evacuation: EvacuationRecord, move: MoveRecord, job_id: str
                     ) -> bool:
        job = await self.migrations.get(job_id)
        if Phase(job.phase) not in TERMINAL:
            return False
        if job.phase == Phase.COMPLETED:
            await self.db.run(_moved, move.id, evacuation.leaves(move), job.destination,
                              job_id)
        elif job.phase == Phase.FAILED and not move.retried:
            await self.db.run(_retry, move.id, evacuation.leaves(move), job_id,
                              job.error_code or "MIGRATION_FAILED")
        else:
            await self.db.run(_blocked, move.id, evacuation.leaves(move),
                              job.error_code or "MIGRATION_FAILED",
                              f"its migration {job_id} ended {job.phase}: {job.reason}")
        return True

    async def _request(self, evacuation: EvacuationRecord, move: MoveRecord) -> bool:
        """Request ``move``'s migration (or adopt the one in flight); True if a job runs."""
        leaves = evacuation.leaves(move)
        active = await self.migrations.store.active_of(move.vm)
        if active is not None:
            await self.db.run(_requested, move.id, leaves, active.id)
            return True
        where, state = await self.db.run(_vm_place, move.vm)
        if where != leaves:
            if evacuation.kind == RETURN and where != move.dest:
                await self.db.run(_blocked, move.id, leaves, RETURN_SKIPPED,
                                  f"{move.vm} runs on {where or 'no host'} now, not on "
                                  f"{leaves} where the evacuation put it: not moved back")
            else:
                await self.db.run(_moved, move.id, leaves, None, None)
            return False
        if state == VMState.STOPPED.value:
            await self._rehome(move, leaves)
            return False
        if state != VMState.RUNNING.value:
            await self.db.run(_blocked, move.id, leaves, VM_STATE_BLOCKS,
                              state_blocks(move.vm, state))
            return False
        try:
            job = await self.migrations.request(move.vm, str(move.dest), MigrationOptionsBody(),
                                                actor=None, initiator="maintenance")
        except SegueError as err:
            await self.db.run(_blocked, move.id, leaves, err.code, err.message)
            return False
        await self.db.run(_requested, move.id, leaves, job.id)
        return True


    async def _rehome(self, move: MoveRecord, leaves: str) -> None:
        """Move the stopped VM's definition from ``leaves`` to ``move.dest`` (module doc)."""
        dest = str(move.dest)
        agents = self.migrations.prechecks.agents
        try:  # (typed() itself refuses a revoked host)
            urls, datastore = await self.db.run(_rehome_facts, move.vm, (leaves, dest))
            await agents.typed(urls[dest], dest).adopt(move.vm, datastore, leaves)
        except SegueError as err:
            await self.db.run(_blocked, move.id, leaves, err.code, err.message)
            return
        try:
            await agents.typed(urls[leaves], leaves).release_definition(move.vm)
        except SegueError as err:  # it cannot start it any more; it drops it when restarted
            log.warning("%s: %s kept its copy of %s's definition (%s)", move.vm, leaves,
                        move.vm, err)
        await self.db.run(_rehomed, move.id, leaves, dest)


# ---- the database side (each runs in Database.run: one transaction) ----

def _begin(session: Session, host: str, max_parallel: int, plan: EvacuationPlan,
           unmovable: Sequence[Blocker], reason: str) -> int:
    row = inventory.get_host(session, host)
    inventory.set_maintenance(row, MaintenanceState.ENTERING, reason)
    now = utcnow()
    evacuation = EvacuationRow(host=host, max_parallel=max_parallel, state=RUNNING,
                               predicted_s=plan.predicted_s, started_at=now)
    session.add(evacuation)
    session.flush()
    position = 0
    for move in plan.moves:
        session.add(EvacuationMoveRow(evacuation_id=evacuation.id, position=position,
                                      vm=move.vm, dest=move.dest,
                                      predicted_s=move.predicted_s, phase=PLANNED))
        position += 1
    for blocker in (*plan.blocked, *unmovable):
        session.add(EvacuationMoveRow(evacuation_id=evacuation.id, position=position,
                                      vm=blocker.vm, phase=BLOCKED, blocker=blocker.code,
                                      message=blocker.message))
        inventory.record_vm_event(session, blocker.vm, "evacuation-blocked",
                                  {"host": host, "code": blocker.code,
                                   "message": blocker.message}, now)
        position += 1
    return evacuation.id


def _begin_return(session: Session, host: str, max_parallel: int
                  ) -> tuple[int | None, list[MoveRecord]]:
    inventory.get_host(session, host)
    last = session.scalars(select(EvacuationRow).where(
        EvacuationRow.host == host, EvacuationRow.kind == EVACUATE)
        .order_by(EvacuationRow.id.desc())).first()
    moved = [m for m in _moves(session, last.id) if m.phase == MOVED and m.dest is not None
             and m.message != OTHER_MEANS] if last is not None else []
    if not moved:
        return None, []
    evacuation = EvacuationRow(host=host, kind=RETURN, max_parallel=max_parallel,
                               state=RUNNING, started_at=utcnow(),
                               predicted_s=max((m.predicted_s for m in moved), default=0.0))
    session.add(evacuation)
    session.flush()
    records = []
    for position, m in enumerate(moved):
        row = EvacuationMoveRow(evacuation_id=evacuation.id, position=position, vm=m.vm,
                                source=m.dest, dest=host, predicted_s=m.predicted_s,
                                phase=PLANNED)
        session.add(row)
        records.append(MoveRecord(0, m.vm, host, PLANNED, None, m.dest))
    return evacuation.id, records


def _running_evacuations(session: Session) -> list[tuple[str, int]]:
    rows = session.scalars(select(EvacuationRow).where(EvacuationRow.state == RUNNING))
    return [(r.host, r.id) for r in rows]


def _moves(session: Session, evacuation_id: int) -> list[EvacuationMoveRow]:
    return list(session.scalars(select(EvacuationMoveRow).where(
        EvacuationMoveRow.evacuation_id == evacuation_id).order_by(
        EvacuationMoveRow.position)))


def _record(session: Session, evacuation_id: int) -> EvacuationRecord | None:
    row = session.get(EvacuationRow, evacuation_id)
    if row is None or row.state != RUNNING:
        return None
    return EvacuationRecord(row.id, row.host, row.max_parallel, tuple(
        MoveRecord(m.id, m.vm, m.dest, m.phase, m.job_id, m.source,
                   (m.message or "").startswith(RETRIED))
        for m in _moves(session, evacuation_id)), row.kind)


def _vm_place(session: Session, vm: str) -> tuple[str | None, str | None]:
    """The VM's host and inventory state (None, None: not in the inventory)."""
    row = inventory.find_vm(session, vm)
    return (row.host, row.state) if row is not None else (None, None)


def _vm_state(session: Session, vm: str) -> str | None:
    return _vm_place(session, vm)[1]


def _rehome_facts(session: Session, vm: str, hosts: Sequence[str]
                  ) -> tuple[dict[str, str], str]:
    """The agents' URLs of ``hosts`` and the VM's home datastore."""
    spec = dict(inventory.get_vm(session, vm).spec)
    return ({h: inventory.get_host(session, h).url for h in hosts},
            str(spec.get("datastore") or ""))


def _rehomed(session: Session, move_id: int, host: str, dest: str) -> None:
    move = session.get_one(EvacuationMoveRow, move_id)
    inventory.move_vm(session, move.vm, dest)
    move.phase, move.dest, move.message = MOVED, dest, REHOMED
    inventory.record_vm_event(session, move.vm, _event(session, move, "moved"),
                              {"from": host, "to": dest, "rehomed": True})


def _event(session: Session, move: EvacuationMoveRow, what: str) -> str:
    """The event kind of ``what`` (requested, moved, blocked) for ``move``'s run."""
    kind = session.get_one(EvacuationRow, move.evacuation_id).kind
    return f"{'return' if kind == RETURN else 'evacuation'}-{what}"


def _requested(session: Session, move_id: int, host: str, job_id: str) -> None:
    move = session.get_one(EvacuationMoveRow, move_id)
    move.phase, move.job_id = MIGRATING, job_id
    inventory.record_vm_event(session, move.vm, _event(session, move, "requested"),
                              {"host": host, "to": move.dest, "job": job_id})


def _moved(session: Session, move_id: int, host: str, dest: str | None,
           job_id: str | None) -> None:
    move = session.get_one(EvacuationMoveRow, move_id)
    move.phase = MOVED
    if dest is None:
        move.message = OTHER_MEANS
    else:
        move.dest = dest  # an adopted job may have gone elsewhere
    inventory.record_vm_event(session, move.vm, _event(session, move, "moved"),
                              {"from": host, "to": dest or move.dest, "job": job_id})


def _retry(session: Session, move_id: int, host: str, job_id: str, code: str) -> None:
    move = session.get_one(EvacuationMoveRow, move_id)
    move.phase, move.job_id = PLANNED, None
    move.message = f"{RETRIED}: its migration {job_id} failed ({code})"
    inventory.record_vm_event(session, move.vm, _event(session, move, "retried"),
                              {"host": host, "job": job_id, "code": code})


def _blocked(session: Session, move_id: int, host: str, code: str, message: str) -> None:
    move = session.get_one(EvacuationMoveRow, move_id)
    move.phase, move.blocker, move.message = BLOCKED, code, message
    inventory.record_vm_event(session, move.vm, _event(session, move, "blocked"),
                              {"host": host, "code": code, "message": message})


def _finish(session: Session, evacuation_id: int) -> None:
    """The host ``in-maintenance`` if no VM but blocked ones is left on it, else stuck
    (a return: done, or stuck naming its blockers; the host's state unchanged)."""
    evacuation = session.get_one(EvacuationRow, evacuation_id)
    evacuation.ended_at = utcnow()
    if evacuation.kind == RETURN:
        blocked = [f"{m.vm}: {m.blocker}" for m in _moves(session, evacuation_id)
                   if m.phase == BLOCKED]
        evacuation.state = STUCK if blocked else DONE
        evacuation.reason = "; ".join(blocked) or None
        return
    host = inventory.get_host(session, evacuation.host)
    if host.maintenance_state != MaintenanceState.ENTERING:
        evacuation.state = STOPPED
        return
    moves = _moves(session, evacuation_id)
    blocked = [f"{m.vm}: {m.blocker}" for m in moves if m.phase == BLOCKED]
    known = {m.vm for m in moves if m.phase == BLOCKED}
    blocked += [f"{vm.name}: NOT_PLANNED" for vm in inventory.list_vms(session, host.name)
                if vm.name not in known]
    if blocked:
        evacuation.state, evacuation.reason = STUCK, "; ".join(blocked)
        inventory.set_maintenance(host, MaintenanceState.ENTERING, evacuation.reason)
    else:
        evacuation.state = DONE
        inventory.set_maintenance(host, MaintenanceState.IN)


def _end_on_error(session: Session, evacuation_id: int, error: str) -> None:
    evacuation = session.get_one(EvacuationRow, evacuation_id)
    evacuation.state, evacuation.ended_at = STUCK, utcnow()
    evacuation.reason = f"the evacuation stopped on an error ({error}); enter again to retry"
    host = inventory.get_host(session, evacuation.host)
    if evacuation.kind == EVACUATE and host.maintenance_state == MaintenanceState.ENTERING:
        inventory.set_maintenance(host, MaintenanceState.ENTERING, evacuation.reason)


def _stop(session: Session, host: str) -> None:
    for row in session.scalars(select(EvacuationRow).where(
            EvacuationRow.host == host, EvacuationRow.state == RUNNING)):
        row.state, row.ended_at = STOPPED, utcnow()
        row.reason = "the host left maintenance before the evacuation ended"


def _status(session: Session, host: str, now: datetime) -> MaintenanceStatus:
    row = inventory.get_host(session, host)
    evacuation = session.scalars(select(EvacuationRow).where(EvacuationRow.host == host)
                                 .order_by(EvacuationRow.id.desc())).first()
    status = MaintenanceStatus(host=host, state=row.maintenance_state,
                               reason=row.maintenance_reason)
    if evacuation is None:
        return status
    elapsed = (now - evacuation.started_at).total_seconds()
    eta = max(0.0, round(evacuation.predicted_s - elapsed, 1)) \
        if evacuation.state == RUNNING else None
    return status.model_copy(update={
        "evacuation": evacuation.state, "kind": evacuation.kind,
        "max_parallel": evacuation.max_parallel,
        "started_at": evacuation.started_at, "ended_at": evacuation.ended_at,
        "predicted_s": evacuation.predicted_s, "eta_s": eta,
        "vms": [EvacuationMoveView(vm=m.vm, phase=m.phase, source=m.source or host,
                                   dest=m.dest, job_id=m.job_id,
                                   predicted_s=m.predicted_s, blocker=m.blocker,
                                   message=m.message)
                for m in _moves(session, evacuation.id)]})
