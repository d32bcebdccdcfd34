"""Migration jobs: accept a request (checked at once), run it phase by phase, keep the record.

A request is refused before anything starts: at once when the VM or host is unknown, the
destination is the VM's own host, the VM already migrates, an agent does not answer or the
VM is not running (each with its own code, as below); then every pre-migration check runs
(``segue.controller.precheck``, ``segue.checks``) and any error refuses the request with
``MIGRATION_CHECKS_FAILED``, whose ``details["results"]`` holds every result (errors,
warnings and passes). An accepted job runs in the controller's TaskGroup
(``segue.controller.migration_job``); every phase change is stored with its time and reason.

Errors: ``NotFound`` (``VM_NOT_FOUND``, ``HOST_NOT_FOUND``, ``MIGRATION_NOT_FOUND``),
``Conflict`` (``MIGRATION_SAME_HOST``, ``VM_NOT_RUNNING``, ``MIGRATION_IN_PROGRESS``,
``MIGRATION_CHECKS_FAILED``, ``MIGRATION_NOT_CANCELLABLE``), ``Unavailable``
(``AGENT_UNREACHABLE``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from segue.checks import errors_of, run_checks
from segue.controller import inventory
from segue.controller.agents import AgentPool
from segue.controller.db import Database
from segue.controller.migration_models import (
    MigrationRow,
    MigrationSampleRow,
    MigrationTransitionRow,
)
from segue.controller.models import utcnow as now_utc
from segue.controller.precheck import Prechecker
from segue.domain.errors import Conflict, InvalidRequest, NotFound
from segue.engine.phases import ACTIVE, Phase, check_transition

log = logging.getLogger(__name__)
CANCELLABLE = frozenset({Phase.CHECK, Phase.PREPARE, Phase.START, Phase.MONITOR})


@dataclass(frozen=True)
class MigrationOptions:
    """What the user may set per migration."""

    downtime_limit_ms: int = 300
    max_bandwidth_mibs: int | None = None  # None: not capped
    deadline_s: float = 600.0
    stall_timeout_s: float = 15.0

    def validate(self) -> None:
        if not 1 <= self.downtime_limit_ms <= 60_000:
            raise InvalidRequest("MIGRATION_OPTION_INVALID",
                                 f"downtime limit {self.downtime_limit_ms} ms is out of range",
                                 "use 1 to 60000 ms")
        if self.max_bandwidth_mibs is not None and self.max_bandwidth_mibs < 1:
            raise InvalidRequest("MIGRATION_OPTION_INVALID", "max bandwidth must be positive",
                                 "give MiB/s >= 1, or leave it out for no cap")
        if self.deadline_s <= 0 or self.stall_timeout_s <= 0:
            raise InvalidRequest("MIGRATION_OPTION_INVALID", "deadlines must be positive",
                                 "give seconds > 0")


@dataclass(frozen=True)
class Endpoint:
    """One side of a migration: host name, agent URL, migration address."""

    host: str
    url: str
    migration_address: str | None


def migration_to_dict(row: MigrationRow, with_transitions: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row.id, "vm": row.vm_name, "source": row.source_host, "destination": row.dest_host,
        "phase": row.phase, "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "reason": row.reason, "error_code": row.error_code,
        "cancel_requested": row.cancel_requested, "options": row.options,
        "summary": row.summary, "progress": row.last_progress,
    }
    if with_transitions:
        out["transitions"] = [
            {"at": t.at.isoformat(), "from": t.from_phase, "to": t.to_phase, "message": t.message}
            for t in row.transitions
        ]
    return out


class MigrationService:
    """Accepts, runs, cancels and reports migration jobs."""

    def __init__(self, db: Database, agents: AgentPool, tg: asyncio.TaskGroup,
                 heartbeat_timeout: float) -> None:
        self.db = db
        self.agents = agents
        self.tg = tg
        self.prechecks = Prechecker(db, agents, heartbeat_timeout)
        self.cancel_events: dict[str, asyncio.Event] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    # ---- records ----
    def _row(self, session: Session, migration_id: str) -> MigrationRow:
        row = session.get(MigrationRow, migration_id)
        if row is None:
            raise NotFound("MIGRATION_NOT_FOUND", f"no migration {migration_id}",
                           "list them with `segue migration list`")
        return row

    def get(self, migration_id: str) -> dict[str, Any]:
        with self.db.session() as session:
            return migration_to_dict(self._row(session, migration_id))

    def list_all(self, vm: str | None = None) -> list[dict[str, Any]]:
        with self.db.session() as session:
            query = select(MigrationRow).order_by(MigrationRow.created_at)
            if vm is not None:
                query = query.where(MigrationRow.vm_name == vm)
            return [migration_to_dict(r, with_transitions=False)
                    for r in session.scalars(query)]

    def samples(self, migration_id: str) -> list[dict[str, Any]]:
        with self.db.session() as session:
            self._row(session, migration_id)
            rows = session.scalars(select(MigrationSampleRow)
                                   .where(MigrationSampleRow.migration_id == migration_id)
                                   .order_by(MigrationSampleRow.id))
            return [{"t": r.t, **r.data} for r in rows]

    def transition(self, migration_id: str, target: Phase, message: str = "",
                   **fields: Any) -> None:
        """Move the job to ``target`` (checked against the state machine) and store why."""
        with self.db.session() as session:
            row = self._row(session, migration_id)
            check_transition(Phase(row.phase), target)
            at = now_utc()
            session.add(MigrationTransitionRow(migration_id=row.id, at=at, from_phase=row.phase,
                                               to_phase=target.value, message=message))
            row.phase, row.updated_at = target.value, at
            for key, value in fields.items():
                setattr(row, key, value)
            if target in (Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED):
                row.finished_at = at
        log.info("migration %s -> %s %s", migration_id[:8], target, message)

    def note(self, migration_id: str, message: str) -> None:
        """Store a decision taken within a phase (no phase change)."""
        with self.db.session() as session:
            row = self._row(session, migration_id)
            session.add(MigrationTransitionRow(migration_id=row.id, at=now_utc(),
                                               from_phase=row.phase, to_phase=row.phase,
                                               message=message))

    def record_sample(self, migration_id: str, t: float, progress: dict[str, Any]) -> None:
        with self.db.session() as session:
            row = self._row(session, migration_id)
            row.last_progress = progress
            session.add(MigrationSampleRow(migration_id=migration_id, t=t, data=progress))

    def set_summary(self, migration_id: str, summary: dict[str, Any]) -> None:
        with self.db.session() as session:
            self._row(session, migration_id).summary = summary

    # ---- requests ----
    async def request(self, vm_name: str, dest: str, options: MigrationOptions
                      ) -> dict[str, Any]:
        """Check the request, create the job and start it; raises before creating anything."""
        options.validate()
        source, target = self._check_inventory(vm_name, dest)
        warnings = await self._check_all(vm_name, dest)
        migration_id = str(uuid.uuid4())
        with self.db.session() as session:
            self._refuse_in_flight(session, vm_name)
            at = now_utc()
            session.add(MigrationRow(
                id=migration_id, vm_name=vm_name, source_host=source.host, dest_host=target.host,
                phase=Phase.CHECK.value, created_at=at, updated_at=at, options=asdict(options),
                summary={}, last_progress={}))
            session.add(MigrationTransitionRow(
                migration_id=migration_id, at=at, from_phase=None, to_phase=Phase.CHECK.value,
                message="requested; pre-migration checks passed"
                        + (f" (warnings: {', '.join(warnings)})" if warnings else "")))
        from segue.controller.migration_job import MigrationJob

        self.cancel_events[migration_id] = asyncio.Event()
        job = MigrationJob(self, migration_id, vm_name, source, target, options)
        task = self.tg.create_task(job.run(), name=f"migration-{migration_id[:8]}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return self.get(migration_id)

    def recover_all(self) -> int:
        """Reconcile every job a previous controller left unfinished (each in its own task);
        returns how many. A dead controller's jobs would otherwise block their VMs forever."""
        from segue.controller.migration_job import MigrationJob

        with self.db.session() as session:
            rows = list(session.scalars(select(MigrationRow).where(
                MigrationRow.phase.in_([p.value for p in ACTIVE]))))
            jobs = []
            for row in rows:
                src = inventory.get_host(session, row.source_host)
                dst = inventory.get_host(session, row.dest_host)
                jobs.append((row.id, row.vm_name, Phase(row.phase), MigrationOptions(**row.options),
                             Endpoint(src.name, src.url, src.migration_address),
                             Endpoint(dst.name, dst.url, dst.migration_address)))
        for job_id, vm, phase, options, source, dest in jobs:
            self.cancel_events[job_id] = asyncio.Event()
            job = MigrationJob(self, job_id, vm, source, dest, options)
            task = self.tg.create_task(job.recover(phase), name=f"recover-{job_id[:8]}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return len(jobs)

    def stop_all(self) -> None:
        """Cancel every running job (each rolls its migration back before it ends)."""
        for task in self.tasks:
            task.cancel()

    def _refuse_in_flight(self, session: Session, vm_name: str) -> None:
        active = session.scalars(select(MigrationRow).where(
            MigrationRow.vm_name == vm_name,
            MigrationRow.phase.in_([p.value for p in ACTIVE]))).first()
        if active is not None:
            raise Conflict("MIGRATION_IN_PROGRESS",
                           f"{vm_name} is already migrating ({active.id}, {active.phase})",
                           f"wait for it, or cancel it: segue migration cancel {active.id}")

    def _check_inventory(self, vm_name: str, dest: str) -> tuple[Endpoint, Endpoint]:
        with self.db.session() as session:
            vm = inventory.get_vm(session, vm_name)
            self._refuse_in_flight(session, vm_name)
            if vm.host == dest:
                raise Conflict("MIGRATION_SAME_HOST", f"{vm_name} already runs on {dest}",
                               "choose another destination host")
            target = inventory.get_host(session, dest)
            source = inventory.get_host(session, vm.host)
            return (Endpoint(source.name, source.url, source.migration_address),
                    Endpoint(target.name, target.url, target.migration_address))

    async def _check_all(self, vm_name: str, dest: str) -> list[str]:
        """Run every pre-migration check; the warnings' codes. Raises VM_NOT_RUNNING alone
        (as before the checks existed), else MIGRATION_CHECKS_FAILED with every result."""
        ctx = await self.prechecks.for_request(vm_name, dest)
        if ctx.vm_state != "running":
            raise Conflict("VM_NOT_RUNNING", f"{vm_name} is {ctx.vm_state}, not running",
                           f"start it first (segue vm start {vm_name})")
        results = run_checks(ctx)
        errors = errors_of(results)
        if errors:
            codes = ", ".join(sorted({r.code for r in errors}))
            raise Conflict("MIGRATION_CHECKS_FAILED",
                           f"{vm_name} cannot migrate to {dest}: {len(errors)} check(s) failed "
                           f"({codes})", "fix what each result's hint says; see them with "
                           f"segue vm migrate {vm_name} --to {dest} --check",
                           results=[r.to_dict() for r in results])
        return [r.code for r in results if r.severity == "warning"]

    def cancel(self, migration_id: str) -> dict[str, Any]:
        """Ask a running job to cancel; refused once the destination may be running."""
        with self.db.session() as session:
            row = self._row(session, migration_id)
            if Phase(row.phase) not in CANCELLABLE:
                raise Conflict("MIGRATION_NOT_CANCELLABLE",
                               f"migration {migration_id} is {row.phase}; it cannot be cancelled",
                               "only a migration still copying memory can be cancelled")
            row.cancel_requested = True
        event = self.cancel_events.get(migration_id)
        if event is not None:
            event.set()
        self.note(migration_id, "cancel requested by the user")
        return self.get(migration_id)
