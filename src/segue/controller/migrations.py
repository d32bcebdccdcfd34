"""Migration jobs: accept a request (checked at once), run it phase by phase, keep the record.

A request is refused before anything starts: at once when the VM or host is unknown, the
destination is the VM's own host, the VM already migrates, an agent does not answer or the
VM is not running (each with its own code, as below); then every pre-migration check runs
(``segue.controller.precheck``, ``segue.checks``) and any error refuses the request with
``MIGRATION_CHECKS_FAILED``, whose ``details["results"]`` holds every result (errors,
warnings and passes). An accepted job runs in the controller's TaskGroup
(``segue.controller.migration_job``); every phase change is stored with its time and reason.

Per-host limits (``HostLimits``): an accepted request whose source or destination has no
migration slot left, or that would overtake an earlier queued job on one of its slots, is
stored ``queued`` instead of starting (``segue.controller.scheduler`` decides). Whenever a job
ends, one is queued or cancelled, and once a second as a safety net, the queue is looked at
and the jobs the scheduler picks start: their checks run again first, and a job whose checks
now fail ends ``failed`` with their reason. Queued jobs survive a controller restart.

Errors: ``NotFound`` (``VM_NOT_FOUND``, ``HOST_NOT_FOUND``, ``MIGRATION_NOT_FOUND``),
``Conflict`` (``MIGRATION_SAME_HOST``, ``VM_NOT_RUNNING``, ``MIGRATION_IN_PROGRESS``,
``MIGRATION_CHECKS_FAILED``, ``MIGRATION_NOT_CANCELLABLE``), ``Unavailable``
(``AGENT_UNREACHABLE``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from segue.checks import errors_of, run_checks
from segue.checks.context import host_facts_from_dict
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
from segue.controller.scheduler import HostLimits, Running, Waiting, must_wait, next_to_start
from segue.domain.errors import Conflict, InvalidRequest, NotFound
from segue.domain.host import HostFacts
from segue.engine import policy
from segue.engine.phases import ACTIVE, RUNNING, Phase, check_transition

log = logging.getLogger(__name__)
QUEUE_TICK_S = 1.0  # the safety net: how often the queue is looked at without an event
CANCELLABLE = frozenset({Phase.QUEUED, Phase.CHECK, Phase.PREPARE, Phase.START, Phase.MONITOR})


@dataclass(frozen=True)
class MigrationOptions:
    """What the user may set per migration."""

    downtime_limit_ms: int | None = None  # None: chosen from measurement (policy)
    max_bandwidth_mibs: int | None = None  # None: not capped
    deadline_s: float = 600.0
    stall_timeout_s: float = 15.0
    allow_postcopy: bool = True  # the policy may switch to post-copy (segue.engine.policy)
    max_downtime_ms: int = 2000  # the policy raises the downtime target up to this

    def validate(self) -> None:
        if self.downtime_limit_ms is not None and not 1 <= self.downtime_limit_ms <= 60_000:
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


@dataclass(frozen=True)
class JobSpec:
    """What a job needs to run: its id, VM, options and both endpoints."""

    id: str
    vm: str
    options: MigrationOptions
    source: Endpoint
    dest: Endpoint


def _job_spec(session: Session, row: MigrationRow) -> JobSpec:
    """A stored job's spec; raises NotFound (HOST_NOT_FOUND) if a host left the inventory."""
    src = inventory.get_host(session, row.source_host)
    dst = inventory.get_host(session, row.dest_host)
    return JobSpec(row.id, row.vm_name, MigrationOptions(**row.options),
                   Endpoint(src.name, src.url, src.migration_address),
                   Endpoint(dst.name, dst.url, dst.migration_address))


def migration_to_dict(row: MigrationRow, with_transitions: bool = True,
                      queue_position: int | None = None) -> dict[str, Any]:
    """The API's view of a job; ``queue_position`` (1: next) only while it is queued."""
    out: dict[str, Any] = {
        "id": row.id, "vm": row.vm_name, "source": row.source_host, "destination": row.dest_host,
        "phase": row.phase, "queue_position": queue_position,
        "created_at": row.created_at.isoformat(),
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
                 heartbeat_timeout: float, limits: HostLimits | None = None) -> None:
        self.db = db
        self.agents = agents
        self.tg = tg
        self.limits = limits or HostLimits()
        self.prechecks = Prechecker(db, agents, heartbeat_timeout)
        self.cancel_events: dict[str, asyncio.Event] = {}
        self.postcopy_requests: dict[str, asyncio.Event] = {}  # the user asked: post-copy now
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False

    # ---- records ----
    def _row(self, session: Session, migration_id: str) -> MigrationRow:
        row = session.get(MigrationRow, migration_id)
        if row is None:
            raise NotFound("MIGRATION_NOT_FOUND", f"no migration {migration_id}",
                           "list them with `segue migration list`")
        return row

    @staticmethod
    def _queued(session: Session) -> list[MigrationRow]:
        """Every queued job, in request order (oldest first)."""
        return list(session.scalars(select(MigrationRow)
                                    .where(MigrationRow.phase == Phase.QUEUED.value)
                                    .order_by(MigrationRow.created_at, MigrationRow.id)))

    def _positions(self, session: Session) -> dict[str, int]:
        return {row.id: n for n, row in enumerate(self._queued(session), start=1)}

    @staticmethod
    def _running(session: Session) -> Running:
        """The slots held now: by every active job that is not queued."""
        rows = session.scalars(select(MigrationRow).where(
            MigrationRow.phase.in_([p.value for p in RUNNING])))
        return Running.of((r.source_host, r.dest_host) for r in rows)

    def get(self, migration_id: str) -> dict[str, Any]:
        with self.db.session() as session:
            row = self._row(session, migration_id)
            return migration_to_dict(row, queue_position=self._positions(session).get(row.id))

    def list_all(self, vm: str | None = None) -> list[dict[str, Any]]:
        with self.db.session() as session:
            positions = self._positions(session)
            query = select(MigrationRow).order_by(MigrationRow.created_at)
            if vm is not None:
                query = query.where(MigrationRow.vm_name == vm)
            return [migration_to_dict(r, with_transitions=False,
                                      queue_position=positions.get(r.id))
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
        """Check the request, then create the job and start it, or queue it when the per-host
        limits hold it back (module doc); raises before creating anything."""
        options.validate()
        source, target = self._check_inventory(vm_name, dest)
        self._refuse_unsafe_cap(options, source.host)
        warnings = await self._check_all(vm_name, dest)
        migration_id = str(uuid.uuid4())
        with self.db.session() as session:
            self._refuse_in_flight(session, vm_name)
            queue = [Waiting(r.id, r.source_host, r.dest_host) for r in self._queued(session)]
            queued = must_wait(Waiting(migration_id, source.host, target.host), queue,
                               self._running(session), self.limits)
            phase, at = (Phase.QUEUED if queued else Phase.CHECK), now_utc()
            session.add(MigrationRow(
                id=migration_id, vm_name=vm_name, source_host=source.host, dest_host=target.host,
                phase=phase.value, created_at=at, updated_at=at, options=asdict(options),
                summary={}, last_progress={}))
            session.add(MigrationTransitionRow(
                migration_id=migration_id, at=at, from_phase=None, to_phase=phase.value,
                message=self._accepted_message(warnings, queued)))
        if queued:
            self._kick()
        else:
            self._launch(JobSpec(migration_id, vm_name, options, source, target))
        return self.get(migration_id)

    def _accepted_message(self, warnings: list[str], queued: bool) -> str:
        message = "requested; pre-migration checks passed"
        if warnings:
            message += f" (warnings: {', '.join(warnings)})"
        if queued:
            message += (f"; queued behind the per-host limits (outgoing "
                        f"{self.limits.max_outgoing}, incoming {self.limits.max_incoming})")
        return message

    def _launch(self, spec: JobSpec, recheck: bool = False) -> None:
        """Run a job that is in ``check`` in its own task; ``recheck``: a queued job's checks
        run again first (a failure ends it ``failed`` with their reason)."""
        from segue.controller.migration_job import MigrationJob

        self.cancel_events[spec.id] = asyncio.Event()
        self.postcopy_requests[spec.id] = asyncio.Event()
        job = MigrationJob(self, spec.id, spec.vm, spec.source, spec.dest, spec.options)

        async def checks() -> None:
            await self._recheck(spec)

        self._spawn(job.run(checks if recheck else None), f"migration-{spec.id[:8]}")

    def _spawn(self, job: Coroutine[Any, Any, None], name: str) -> None:
        """Run a job in the controller's TaskGroup; its end makes the queue move."""
        task = self.tg.create_task(job, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._kick()

    async def _recheck(self, spec: JobSpec) -> None:
        """A queued job's checks at its start; raises as a request would, and
        ``MIGRATION_SOURCE_CHANGED`` when the VM left its source while the job waited."""
        with self.db.session() as session:
            host = inventory.get_vm(session, spec.vm).host
        if host != spec.source.host:
            raise Conflict("MIGRATION_SOURCE_CHANGED",
                           f"{spec.vm} moved to {host} while its migration from "
                           f"{spec.source.host} was queued", "request the migration again")
        warnings = await self._check_all(spec.vm, spec.dest.host, own=spec.id)
        self.note(spec.id, "pre-migration checks passed again at start"
                  + (f" (warnings: {', '.join(warnings)})" if warnings else ""))

    # ---- the queue ----
    def start_queued(self) -> list[str]:
        """Start the queued jobs the scheduler picks, oldest first; returns their ids. Each
        moves to ``check`` before anything awaits, so its slots count at once. Does nothing
        once the service is stopping (queued jobs wait for the next controller)."""
        if self.stopping:
            return []
        with self.db.session() as session:
            queued = self._queued(session)
            picks = set(next_to_start([Waiting(r.id, r.source_host, r.dest_host)
                                       for r in queued], self._running(session), self.limits))
            chosen = [_job_spec(session, r) for r in queued if r.id in picks]
        for spec in chosen:
            self.transition(spec.id, Phase.CHECK, "migration slots free on both hosts; "
                                                  "checking again before starting")
            self._launch(spec, recheck=True)
        return [spec.id for spec in chosen]

    def _kick(self) -> None:
        """``start_queued`` from an event (a job's end, a request, a cancel, the tick): a
        failure is logged, never raised, and the next event or tick tries again."""
        try:
            self.start_queued()
        except Exception:
            log.exception("starting queued migrations failed; the next event retries")

    async def _tick(self) -> None:
        """The safety net: look at the queue every QUEUE_TICK_S until cancelled."""
        while True:
            await asyncio.sleep(QUEUE_TICK_S)
            self._kick()

    # ---- controller start and stop ----
    def recover_all(self) -> int:
        """Reconcile every job a previous controller left running (each in its own task) and
        returns how many; then resume the queue. A dead controller's jobs would otherwise block
        their VMs forever. Queued jobs had nothing started: they stay queued, in order, and
        start as the scheduler allows."""
        from segue.controller.migration_job import MigrationJob

        with self.db.session() as session:
            rows = list(session.scalars(select(MigrationRow).where(
                MigrationRow.phase.in_([p.value for p in RUNNING]))))
            jobs = [(_job_spec(session, row), Phase(row.phase)) for row in rows]
        for spec, phase in jobs:
            self.cancel_events[spec.id] = asyncio.Event()
            job = MigrationJob(self, spec.id, spec.vm, spec.source, spec.dest, spec.options)
            self._spawn(job.recover(phase), f"recover-{spec.id[:8]}")
        ticker = self.tg.create_task(self._tick(), name="migration-queue")
        self.tasks.add(ticker)
        ticker.add_done_callback(self.tasks.discard)
        self._kick()
        return len(jobs)

    def stop_all(self) -> None:
        """Cancel every running job (each rolls its migration back before it ends); queued
        jobs stay queued."""
        self.stopping = True
        for task in self.tasks:
            task.cancel()

    def host_facts(self, host: str) -> HostFacts:
        """``host``'s last facts (parts it has not reported yet are empty)."""
        with self.db.session() as session:
            return host_facts_from_dict(host, inventory.get_host(session, host).facts or {})

    def _refuse_unsafe_cap(self, options: MigrationOptions, host: str) -> None:
        """QEMU before 8.0 under TCG loses pages the guest dirties while it rate-limits a
        migration (the guest checker shows it, and guests crash): refuse a cap there rather
        than corrupt the VM."""
        if not options.max_bandwidth_mibs or options.allow_postcopy:
            return  # with post-copy the policy leaves pre-copy early (segue.engine.policy)
        facts = self.host_facts(host)
        if policy.qemu_unsafe_for_multipass(facts.cpu.accel, facts.qemu.version):
            raise InvalidRequest(
                "BANDWIDTH_CAP_UNSAFE",
                f"{host} runs guests under TCG with QEMU {facts.qemu.version or '(unknown)'}, "
                "which loses guest memory "
                "when it rate-limits a migration",
                "migrate without --max-bandwidth, or allow post-copy")

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

    async def _check_all(self, vm_name: str, dest: str, own: str | None = None) -> list[str]:
        """Run every pre-migration check; the warnings' codes. Raises VM_NOT_RUNNING alone
        (as before the checks existed), else MIGRATION_CHECKS_FAILED with every result.
        ``own``: the job being checked, which is not "another migration of the VM"."""
        ctx = await self.prechecks.for_request(vm_name, dest)
        if own is not None and ctx.in_flight == own:
            ctx = replace(ctx, in_flight=None)
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

    def request_postcopy(self, migration_id: str) -> dict[str, Any]:
        """Switch a pre-copy to post-copy now (the user's call, like ``virsh
        migrate-postcopy``): the job asks QEMU at its next sample, and says so. Refused
        (``MIGRATION_POSTCOPY_NOT_POSSIBLE``) unless the job copies (start, monitor) with
        post-copy allowed."""
        with self.db.session() as session:
            row = self._row(session, migration_id)
            phase = Phase(row.phase)
            allowed = bool((row.options or {}).get("allow_postcopy", True))
        event = self.postcopy_requests.get(migration_id)
        if phase not in (Phase.START, Phase.MONITOR) or event is None:
            raise Conflict("MIGRATION_POSTCOPY_NOT_POSSIBLE",
                           f"migration {migration_id} is {phase.value}, not copying memory",
                           "switch to post-copy while it copies (phase start or monitor)")
        if not allowed:
            raise Conflict("MIGRATION_POSTCOPY_NOT_POSSIBLE",
                           f"migration {migration_id} was started with post-copy not allowed",
                           "cancel it and migrate again without --no-postcopy")
        event.set()
        self.note(migration_id, "post-copy requested by the user")
        return self.get(migration_id)

    def cancel(self, migration_id: str) -> dict[str, Any]:
        """Cancel a queued job at once (nothing had started), or ask a running job to cancel;
        refused (MIGRATION_NOT_CANCELLABLE) once the destination may be running."""
        with self.db.session() as session:
            row = self._row(session, migration_id)
            phase = Phase(row.phase)
            if phase not in CANCELLABLE:
                raise Conflict("MIGRATION_NOT_CANCELLABLE",
                               f"migration {migration_id} is {row.phase}; it cannot be cancelled",
                               "only a migration queued or still copying memory can be "
                               "cancelled")
            row.cancel_requested = True
        if phase == Phase.QUEUED:
            reason = "cancelled by the user while queued"
            self.transition(migration_id, Phase.CANCELLED, reason, reason=reason,
                            error_code="MIGRATION_CANCELLED")
            self._kick()  # it held its place on two slots
            return self.get(migration_id)
        event = self.cancel_events.get(migration_id)
        if event is not None:
            event.set()
        self.note(migration_id, "cancel requested by the user")
        return self.get(migration_id)
