"""Migration jobs in SQL: the engine's ``JobStore`` and ``FactsSource``, and the job views.

``SqlJobStore`` keeps each job's row (``segue.controller.migration_models``): its phase, moved
only through ``segue.engine.phases.check_transition`` and stored with its time and reason;
notes (a transition from a phase to itself); progress samples; the summary. Its
``commit_location`` moves the VM in the inventory (``inventory.move_vm``). Its queries answer
with the API's models (``segue.api.migration``). ``InventoryFacts`` reads the hosts' last
facts from the inventory.

Every method is one transaction, run in the database's worker thread (``Database.run``) and
awaited; each answers with plain values (the API's models, ``StoredJob``...), never with a
row.

Errors: ``NotFound`` (``MIGRATION_NOT_FOUND``, ``HOST_NOT_FOUND``, ``VM_NOT_FOUND``),
``InvalidTransition`` (``MIGRATION_BAD_TRANSITION``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import JsonValue
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from segue.api.migration import (
    MigrationJobView,
    MigrationOptionsBody,
    ProgressSample,
    TransitionView,
)
from segue.checks.context import host_facts_from_dict
from segue.controller import inventory
from segue.controller.db import Database
from segue.controller.migration_models import (
    MigrationRow,
    MigrationSampleRow,
    MigrationTransitionRow,
)
from segue.controller.models import utcnow
from segue.controller.scheduler import Running, Waiting
from segue.domain.errors import Conflict, NotFound
from segue.domain.host import HostFacts
from segue.engine.context import JobSpec
from segue.engine.phases import ACTIVE, RUNNING, TERMINAL, Phase, check_transition
from segue.engine.progress import Progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredJob:
    """A stored job as a runner needs it: its spec, phase and both agents' URLs."""

    spec: JobSpec
    phase: Phase
    source_url: str
    dest_url: str


@dataclass(frozen=True)
class ActiveJob:
    """A VM's migration that has not ended."""

    id: str
    phase: Phase


# Given the queue (oldest first), the slots held and the VM's active job, the phase a new
# job starts in; raises to refuse it.
Decide = Callable[[Sequence[Waiting], Running, ActiveJob | None], Phase]


class SqlJobStore:
    """The jobs' records in the controller's database (see the module doc)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # ---- the engine's JobStore ----
    async def transition(self, job_id: str, target: Phase, message: str = "", *,
                         reason: str | None = None, error_code: str | None = None) -> None:
        """Move the job to ``target`` (checked against the phase table) and store why."""
        await self.db.run(_transition, job_id, target, message, reason, error_code)

    async def note(self, job_id: str, message: str) -> None:
        """Store a decision taken within a phase (no phase change)."""
        await self.db.run(_note, job_id, message)

    async def record_sample(self, job_id: str, t: float, progress: Progress) -> None:
        await self.db.run(_record_sample, job_id, t, progress.to_dict())

    async def set_summary(self, job_id: str, summary: dict[str, JsonValue]) -> None:
        await self.db.run(_set_summary, job_id, dict(summary))

    async def commit_location(self, vm: str, host: str, generation: int | None) -> None:
        """``host`` now owns ``vm`` at lease ``generation`` in the inventory (a ``moved``
        event; None: unknown until its heartbeat reports it)."""
        await self.db.run(_commit_location, vm, host, generation)

    # ---- jobs ----
    async def create(self, spec: JobSpec, decide: Decide, message: Callable[[Phase], str]
                     ) -> Phase:
        """Store a new job in the phase ``decide`` picks (it may raise to refuse), with the
        first transition's ``message``; one transaction, in the database's thread (``decide``
        and ``message`` are pure: they run there). Two requests for one VM racing past
        ``decide`` meet the database's one-active-job-per-VM index: the later one is refused
        (Conflict ``MIGRATION_IN_PROGRESS``)."""
        try:
            return await self.db.run(_create, spec, decide, message)
        except IntegrityError as err:
            raise Conflict("MIGRATION_IN_PROGRESS",
                           f"{spec.vm} is already migrating (a request made at the same time "
                           "won)", "wait for it, or cancel it (segue migration list)") from err

    async def phase(self, job_id: str) -> Phase:
        return await self.db.run(_phase, job_id)

    async def mark_cancel_requested(self, job_id: str) -> None:
        await self.db.run(_mark_cancel_requested, job_id)

    async def active_of(self, vm: str) -> ActiveJob | None:
        """The VM's migration that has not ended, if any."""
        return await self.db.run(_active_of, vm)

    async def queue(self) -> tuple[list[Waiting], Running]:
        """The queued jobs (oldest first) and the slots held now."""
        return await self.db.run(_queue)

    async def stored(self, job_ids: Sequence[str]) -> list[StoredJob]:
        """These jobs, as runners need them (raises HOST_NOT_FOUND if a host left)."""
        return await self.db.run(_stored_jobs, list(job_ids))

    async def unfinished(self) -> list[StoredJob]:
        """Every job that holds a slot (not queued, not ended)."""
        return await self.db.run(_unfinished)

    # ---- views ----
    async def view(self, job_id: str) -> MigrationJobView:
        """One job with its transitions and queue position."""
        return await self.db.run(_view, job_id)

    async def views(self, vm: str | None = None) -> list[MigrationJobView]:
        """Every job (or ``vm``'s), oldest first, without transitions."""
        return await self.db.run(_views, vm)

    async def samples(self, job_id: str) -> list[ProgressSample]:
        return await self.db.run(_samples, job_id)


# ---- the transactions (each runs in the database's thread, with its own session) ----
def _row(session: Session, job_id: str) -> MigrationRow:
    row = session.get(MigrationRow, job_id)
    if row is None:
        raise NotFound("MIGRATION_NOT_FOUND", f"no migration {job_id}",
                       "list them with `segue migration list`")
    return row


def _transition(session: Session, job_id: str, target: Phase, message: str,
                reason: str | None, error_code: str | None) -> None:
    row = _row(session, job_id)
    check_transition(Phase(row.phase), target)
    at = utcnow()
    session.add(MigrationTransitionRow(migration_id=row.id, at=at, from_phase=row.phase,
                                       to_phase=target.value, message=message))
    row.phase, row.updated_at = target.value, at
    if reason is not None:
        row.reason = reason
    if error_code is not None:
        row.error_code = error_code
    if target in TERMINAL:
        row.finished_at = at


def _note(session: Session, job_id: str, message: str) -> None:
    row = _row(session, job_id)
    session.add(MigrationTransitionRow(migration_id=row.id, at=utcnow(), from_phase=row.phase,
                                       to_phase=row.phase, message=message))


def _record_sample(session: Session, job_id: str, t: float, data: dict[str, JsonValue]
                   ) -> None:
    _row(session, job_id).last_progress = data
    session.add(MigrationSampleRow(migration_id=job_id, t=t, data=data))


def _set_summary(session: Session, job_id: str, summary: dict[str, JsonValue]) -> None:
    _row(session, job_id).summary = summary


def _commit_location(session: Session, vm: str, host: str, generation: int | None) -> None:
    inventory.move_vm(session, vm, host, generation=generation)


def _create(session: Session, spec: JobSpec, decide: Decide,
            message: Callable[[Phase], str]) -> Phase:
    phase = decide(_queued(session), _running(session), _active_of(session, spec.vm))
    at = utcnow()
    session.add(MigrationRow(
        id=spec.id, vm_name=spec.vm, source_host=spec.source, dest_host=spec.dest,
        phase=phase.value, created_at=at, updated_at=at,
        options=spec.options.model_dump(mode="json"), summary={}, last_progress={},
        generation=spec.generation))
    session.add(MigrationTransitionRow(migration_id=spec.id, at=at, from_phase=None,
                                       to_phase=phase.value, message=message(phase)))
    return phase


def _phase(session: Session, job_id: str) -> Phase:
    return Phase(_row(session, job_id).phase)


def _mark_cancel_requested(session: Session, job_id: str) -> None:
    _row(session, job_id).cancel_requested = True


def _queue(session: Session) -> tuple[list[Waiting], Running]:
    return _queued(session), _running(session)


def _stored_jobs(session: Session, job_ids: list[str]) -> list[StoredJob]:
    return [_stored(session, _row(session, i)) for i in job_ids]


def _unfinished(session: Session) -> list[StoredJob]:
    rows = session.scalars(select(MigrationRow).where(
        MigrationRow.phase.in_([p.value for p in RUNNING])))
    return [_stored(session, row) for row in rows]


def _stored(session: Session, row: MigrationRow) -> StoredJob:
    src = inventory.get_host(session, row.source_host)
    dst = inventory.get_host(session, row.dest_host)
    spec = JobSpec(row.id, row.vm_name, src.name, dst.name, _options(row), row.generation)
    return StoredJob(spec, Phase(row.phase), src.url, dst.url)


def _queued_rows(session: Session) -> list[MigrationRow]:
    return list(session.scalars(select(MigrationRow)
                                .where(MigrationRow.phase == Phase.QUEUED.value)
                                .order_by(MigrationRow.created_at, MigrationRow.id)))


def _queued(session: Session) -> list[Waiting]:
    return [Waiting(r.id, r.source_host, r.dest_host) for r in _queued_rows(session)]


def _running(session: Session) -> Running:
    rows = session.scalars(select(MigrationRow).where(
        MigrationRow.phase.in_([p.value for p in RUNNING])))
    return Running.of((r.source_host, r.dest_host) for r in rows)


def _active_of(session: Session, vm: str) -> ActiveJob | None:
    row = session.scalars(select(MigrationRow).where(
        MigrationRow.vm_name == vm,
        MigrationRow.phase.in_([p.value for p in ACTIVE]))).first()
    return ActiveJob(row.id, Phase(row.phase)) if row is not None else None


def _positions(session: Session) -> dict[str, int]:
    return {row.id: n for n, row in enumerate(_queued_rows(session), start=1)}


def _view(session: Session, job_id: str) -> MigrationJobView:
    row = _row(session, job_id)
    return job_view(row, _positions(session).get(row.id), transitions=True)


def _views(session: Session, vm: str | None) -> list[MigrationJobView]:
    positions = _positions(session)
    query = select(MigrationRow).order_by(MigrationRow.created_at)
    if vm is not None:
        query = query.where(MigrationRow.vm_name == vm)
    return [job_view(r, positions.get(r.id)) for r in session.scalars(query)]


def _samples(session: Session, job_id: str) -> list[ProgressSample]:
    _row(session, job_id)
    rows = session.scalars(select(MigrationSampleRow)
                           .where(MigrationSampleRow.migration_id == job_id)
                           .order_by(MigrationSampleRow.id))
    return [ProgressSample.model_validate({**r.data, "t": r.t}) for r in rows]


def _options(row: MigrationRow) -> MigrationOptionsBody:
    return MigrationOptionsBody.model_validate(row.options or {})


def _encrypted(summary: dict[str, JsonValue]) -> bool | None:
    value = summary.get("encrypted")
    return value if isinstance(value, bool) else None


def job_view(row: MigrationRow, queue_position: int | None,
             transitions: bool = False) -> MigrationJobView:
    """The API's view of a job; ``queue_position`` (1: next) only while it is queued."""
    return MigrationJobView(
        id=row.id, vm=row.vm_name, source=row.source_host, destination=row.dest_host,
        phase=row.phase, queue_position=queue_position, created_at=row.created_at,
        updated_at=row.updated_at, finished_at=row.finished_at, reason=row.reason,
        error_code=row.error_code, cancel_requested=row.cancel_requested,
        options=_options(row), summary=dict(row.summary or {}),
        encrypted=_encrypted(row.summary or {}),
        progress=ProgressSample.model_validate(row.last_progress) if row.last_progress
        else None,
        transitions=[TransitionView.model_validate(
            {"at": t.at, "from": t.from_phase, "to": t.to_phase, "message": t.message})
            for t in row.transitions] if transitions else None)


class InventoryFacts:
    """The engine's ``FactsSource`` over the inventory: each host's last reported facts."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def host_facts(self, host: str) -> HostFacts:
        """``host``'s last facts (parts it has not reported yet are empty); raises NotFound
        (``HOST_NOT_FOUND``)."""
        return await self.db.run(_host_facts, host)


def _host_facts(session: Session, host: str) -> HostFacts:
    return host_facts_from_dict(host, inventory.get_host(session, host).facts or {})
