"""Migration jobs in SQL: the engine's ``JobStore`` and ``FactsSource``, and the job views.

``SqlJobStore`` keeps each job's row (``segue.controller.migration_models``): its phase, moved
only through ``segue.engine.phases.check_transition`` and stored with its time and reason;
notes (a transition from a phase to itself); progress samples; the summary. Its
``commit_location`` moves the VM in the inventory (``inventory.move_vm``). Its queries answer
with the API's models (``segue.api.migration``). ``InventoryFacts`` reads the hosts' last
facts from the inventory.

Every method opens its own session (``Database.session``): each is one transaction.

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

    @staticmethod
    def _row(session: Session, job_id: str) -> MigrationRow:
        row = session.get(MigrationRow, job_id)
        if row is None:
            raise NotFound("MIGRATION_NOT_FOUND", f"no migration {job_id}",
                           "list them with `segue migration list`")
        return row

    # ---- the engine's JobStore ----
    def transition(self, job_id: str, target: Phase, message: str = "", *,
                   reason: str | None = None, error_code: str | None = None) -> None:
        """Move the job to ``target`` (checked against the phase table) and store why."""
        with self.db.session() as session:
            row = self._row(session, job_id)
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

    def note(self, job_id: str, message: str) -> None:
        """Store a decision taken within a phase (no phase change)."""
        with self.db.session() as session:
            row = self._row(session, job_id)
            session.add(MigrationTransitionRow(migration_id=row.id, at=utcnow(),
                                               from_phase=row.phase, to_phase=row.phase,
                                               message=message))

    def record_sample(self, job_id: str, t: float, progress: Progress) -> None:
        data = progress.to_dict()
        with self.db.session() as session:
            row = self._row(session, job_id)
            row.last_progress = data
            session.add(MigrationSampleRow(migration_id=job_id, t=t, data=data))

    def set_summary(self, job_id: str, summary: dict[str, JsonValue]) -> None:
        with self.db.session() as session:
            self._row(session, job_id).summary = dict(summary)

    def commit_location(self, vm: str, host: str, generation: int | None) -> None:
        """``host`` now owns ``vm`` at lease ``generation`` in the inventory (a ``moved``
        event; None: unknown until its heartbeat reports it)."""
        with self.db.session() as session:
            inventory.move_vm(session, vm, host, generation=generation)

    # ---- jobs ----
    def create(self, spec: JobSpec, decide: Decide, message: Callable[[Phase], str]) -> Phase:
        """Store a new job in the phase ``decide`` picks (it may raise to refuse), with the
        first transition's ``message``; one transaction. Two requests for one VM racing past
        ``decide`` meet the database's one-active-job-per-VM index: the later one is refused
        (Conflict ``MIGRATION_IN_PROGRESS``)."""
        try:
            with self.db.session() as session:
                phase = decide(self._queued(session), self._running(session),
                               self._active_of(session, spec.vm))
                at = utcnow()
                session.add(MigrationRow(
                    id=spec.id, vm_name=spec.vm, source_host=spec.source, dest_host=spec.dest,
                    phase=phase.value, created_at=at, updated_at=at,
                    options=spec.options.model_dump(mode="json"), summary={},
                    last_progress={}, generation=spec.generation))
                session.add(MigrationTransitionRow(
                    migration_id=spec.id, at=at, from_phase=None, to_phase=phase.value,
                    message=message(phase)))
        except IntegrityError as err:
            raise Conflict("MIGRATION_IN_PROGRESS",
                           f"{spec.vm} is already migrating (a request made at the same time "
                           "won)", "wait for it, or cancel it (segue migration list)") from err
        return phase

    def phase(self, job_id: str) -> Phase:
        with self.db.session() as session:
            return Phase(self._row(session, job_id).phase)

    def mark_cancel_requested(self, job_id: str) -> None:
        with self.db.session() as session:
            self._row(session, job_id).cancel_requested = True

    def active_of(self, vm: str) -> ActiveJob | None:
        """The VM's migration that has not ended, if any."""
        with self.db.session() as session:
            return self._active_of(session, vm)

    def queue(self) -> tuple[list[Waiting], Running]:
        """The queued jobs (oldest first) and the slots held now."""
        with self.db.session() as session:
            return self._queued(session), self._running(session)

    def stored(self, job_ids: Sequence[str]) -> list[StoredJob]:
        """These jobs, as runners need them (raises HOST_NOT_FOUND if a host left)."""
        with self.db.session() as session:
            return [self._stored(session, self._row(session, i)) for i in job_ids]

    def unfinished(self) -> list[StoredJob]:
        """Every job that holds a slot (not queued, not ended)."""
        with self.db.session() as session:
            rows = session.scalars(select(MigrationRow).where(
                MigrationRow.phase.in_([p.value for p in RUNNING])))
            return [self._stored(session, row) for row in rows]

    @staticmethod
    def _stored(session: Session, row: MigrationRow) -> StoredJob:
        src = inventory.get_host(session, row.source_host)
        dst = inventory.get_host(session, row.dest_host)
        spec = JobSpec(row.id, row.vm_name, src.name, dst.name, _options(row), row.generation)
        return StoredJob(spec, Phase(row.phase), src.url, dst.url)

    @staticmethod
    def _queued_rows(session: Session) -> list[MigrationRow]:
        return list(session.scalars(select(MigrationRow)
                                    .where(MigrationRow.phase == Phase.QUEUED.value)
                                    .order_by(MigrationRow.created_at, MigrationRow.id)))

    def _queued(self, session: Session) -> list[Waiting]:
        return [Waiting(r.id, r.source_host, r.dest_host) for r in self._queued_rows(session)]

    @staticmethod
    def _running(session: Session) -> Running:
        rows = session.scalars(select(MigrationRow).where(
            MigrationRow.phase.in_([p.value for p in RUNNING])))
        return Running.of((r.source_host, r.dest_host) for r in rows)

    @staticmethod
    def _active_of(session: Session, vm: str) -> ActiveJob | None:
        row = session.scalars(select(MigrationRow).where(
            MigrationRow.vm_name == vm,
            MigrationRow.phase.in_([p.value for p in ACTIVE]))).first()
        return ActiveJob(row.id, Phase(row.phase)) if row is not None else None

    # ---- views ----
    def _positions(self, session: Session) -> dict[str, int]:
        return {row.id: n for n, row in enumerate(self._queued_rows(session), start=1)}

    def view(self, job_id: str) -> MigrationJobView:
        """One job with its transitions and queue position."""
        with self.db.session() as session:
            row = self._row(session, job_id)
            return job_view(row, self._positions(session).get(row.id), transitions=True)

    def views(self, vm: str | None = None) -> list[MigrationJobView]:
        """Every job (or ``vm``'s), oldest first, without transitions."""
        with self.db.session() as session:
            positions = self._positions(session)
            query = select(MigrationRow).order_by(MigrationRow.created_at)
            if vm is not None:
                query = query.where(MigrationRow.vm_name == vm)
            return [job_view(r, positions.get(r.id)) for r in session.scalars(query)]

    def samples(self, job_id: str) -> list[ProgressSample]:
        with self.db.session() as session:
            self._row(session, job_id)
            rows = session.scalars(select(MigrationSampleRow)
                                   .where(MigrationSampleRow.migration_id == job_id)
                                   .order_by(MigrationSampleRow.id))
            return [ProgressSample.model_validate({**r.data, "t": r.t}) for r in rows]


def _options(row: MigrationRow) -> MigrationOptionsBody:
    return MigrationOptionsBody.model_validate(row.options or {})


def job_view(row: MigrationRow, queue_position: int | None,
             transitions: bool = False) -> MigrationJobView:
    """The API's view of a job; ``queue_position`` (1: next) only while it is queued."""
    return MigrationJobView(
        id=row.id, vm=row.vm_name, source=row.source_host, destination=row.dest_host,
        phase=row.phase, queue_position=queue_position, created_at=row.created_at,
        updated_at=row.updated_at, finished_at=row.finished_at, reason=row.reason,
        error_code=row.error_code, cancel_requested=row.cancel_requested,
        options=_options(row), summary=dict(row.summary or {}),
        progress=ProgressSample.model_validate(row.last_progress) if row.last_progress
        else None,
        transitions=[TransitionView.model_validate(
            {"at": t.at, "from": t.from_phase, "to": t.to_phase, "message": t.message})
            for t in row.transitions] if transitions else None)


class InventoryFacts:
    """The engine's ``FactsSource`` over the inventory: each host's last reported facts."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def host_facts(self, host: str) -> HostFacts:
        """``host``'s last facts (parts it has not reported yet are empty); raises NotFound
        (``HOST_NOT_FOUND``)."""
        with self.db.session() as session:
            return host_facts_from_dict(host, inventory.get_host(session, host).facts or {})
