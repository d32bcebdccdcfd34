"""Maintenance mode on the controller: the pre-flight of a host's evacuation and its
maintenance state (``segue.domain.maintenance``).

``preflight(host, max_parallel)`` gathers what the pure planner
(``segue.placement.evacuation``) needs: every VM of the host (a running one with its
migration question to every other host, as ``vm placement`` asks it, and the policies'
verdict on a move by the ``maintenance`` initiator), the hosts, rules, tags and the moves
in flight, and answers the plan; the VMs are asked about at once, so the pre-flight takes
about as long as its slowest VM's questions. Each running VM's predicted time comes from
the engine's own record of the host's last completed migrations (``MoveHistory``):
the fixed cost of a move (its time from the checks to the release, less QEMU's copy) and
the link the engine measured, and the VM's own last copy time. It is that fixed cost plus
the longer of the VM's last copy and the engine's pre-copy model
(``segue.engine.prediction.predict``) of its memory over its share of the link (the
measured link, else the speed the host reports, split among the moves run in parallel) at
the dirty rate QEMU measures now (``DIRTY_SAMPLE_MS``, every VM at once; none if it cannot).
With no record it is the model alone: a lower bound (no fixed cost). The longest moves
start first (``segue.placement.evacuation``), so the heavy dirtiers go first. The measured
link is what each job had while others ran beside it, so sharing it again errs long.

A stopped VM is planned too (placed as the creation checks and the policies' verdicts on a
maintenance move allow); the evacuation re-homes it (``segue.agent.rehome``: its
definition moves, no QEMU runs). A VM neither running nor stopped (paused, crashed,
missing, ...) is a blocker (``VM_STATE_BLOCKS``).

``enter``: the pre-flight; with ``dry_run`` nothing else. Otherwise an empty host becomes
``in-maintenance`` at once; a host with VMs becomes ``entering-maintenance``, its reason
naming what the evacuation must do, and its evacuation starts (``segue.controller.
evacuation``). ``exit``: the evacuation stops requesting moves, and the host is back to
``normal``; with ``return_vms`` the VMs the latest evacuation moved are requested back
(``Evacuations.begin_return``), listed in the answer.

Errors: ``NotFound`` (``HOST_NOT_FOUND``), ``Conflict`` (``MAINTENANCE_TRANSITION_INVALID``,
``EVACUATION_RUNNING``), those of ``Prechecker`` for an agent that cannot be asked.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from segue.api.maintenance import EvacueeView, MaintenanceAnswer
from segue.api.rules import ExcludedView, ReasonView
from segue.checks import HostRecord, MigrationContext, host_facts_from_dict
from segue.clients.agent import AgentClient
from segue.controller import inventory
from segue.controller.evacuation import VM_STATE_BLOCKS, Evacuations, state_blocks
from segue.controller.migration_models import MigrationRow
from segue.controller.placement_service import cluster_view
from segue.controller.policy_gate import check_results
from segue.controller.precheck import HostRow, Prechecker, bounded
from segue.controller.scheduler import HostLimits
from segue.domain.errors import SegueError
from segue.domain.maintenance import MaintenanceState
from segue.domain.vm import vm_spec_from_dict
from segue.engine.phases import Phase
from segue.engine.prediction import MiB, predict
from segue.placement import HostSlot
from segue.placement.evacuation import (
    Blocker,
    EvacuationPlan,
    EvacuationRequest,
    Evacuee,
    plan_evacuation,
    shared_link_bps,
)

DEFAULT_LINK_MBPS = 1000  # when the host reports no link speed
PREDICTION_DOWNTIME_MS = 300


HISTORY_JOBS = 10  # the host's last completed migrations the predictions learn from
DIRTY_SAMPLE_MS = 300  # QEMU's dirty-rate measurement per running VM in the pre-flight


@dataclass(frozen=True)
class MoveHistory:
    """What the engine recorded of a host's last completed migrations (medians; None: no
    record): ``overhead_s`` a move's time beyond QEMU's copy, ``link_mibs`` the link the
    engine measured; ``copy_s``: each VM's last copy time (QEMU's), by name."""

    overhead_s: float | None = None
    link_mibs: float | None = None
    copy_s: Mapping[str, float] = field(default_factory=dict)


def predicted_move_s(memory_mib: int, link_mbps: int | None, parallel: int,
                     history: MoveHistory = MoveHistory(), vm: str = "",
                     dirty_mibs: float = 0.0) -> float:
    """A move's predicted time (the module doc): the recorded fixed cost plus the longer of
    the VM's last copy and the model of its memory over its share of the link at
    ``dirty_mibs``."""
    link = history.link_mibs * MiB if history.link_mibs else \
        (link_mbps or DEFAULT_LINK_MBPS) * 1e6 / 8
    copy = predict(memory_mib * MiB, shared_link_bps(link, parallel), dirty_mibs * MiB,
                   PREDICTION_DOWNTIME_MS).total_s
    return round((history.overhead_s or 0.0) + max(copy, history.copy_s.get(vm, 0.0)), 1)


def _number(summary: Mapping[str, object], key: str) -> float | None:
    value = summary.get(key)
    return float(value) if isinstance(value, int | float) and value > 0 else None


def move_history(session: Session, host: str, vms: Sequence[str]) -> MoveHistory:
    """``MoveHistory`` from the host's last ``HISTORY_JOBS`` completed migrations (any
    host's if it has none) and each of ``vms``' last completed one."""
    done = select(MigrationRow).where(MigrationRow.phase == Phase.COMPLETED.value) \
        .order_by(MigrationRow.finished_at.desc())
    rows = session.scalars(done.where(MigrationRow.source_host == host)
                           .limit(HISTORY_JOBS)).all() \
        or session.scalars(done.limit(HISTORY_JOBS)).all()
    overheads, links = [], []
    for row in rows:
        total, copy_ms = _number(row.summary, "total_s"), _number(row.summary, "qemu_total_ms")
        if total is not None and copy_ms is not None and total > copy_ms / 1000:
            overheads.append(total - copy_ms / 1000)
        if (link := _number(row.summary, "link_measured_mibs")) is not None:
            links.append(link)
    copies = {}
    for vm in vms:
        last = session.scalars(done.where(MigrationRow.vm_name == vm).limit(1)).first()
        if last is not None and (ms := _number(last.summary, "qemu_total_ms")) is not None:
            copies[vm] = ms / 1000
    return MoveHistory(statistics.median(overheads) if overheads else None,
                       statistics.median(links) if links else None, copies)


def _vms_of(session: Session, host: str) -> list[tuple[str, dict[str, object], str]]:
    inventory.get_host(session, host)
    return [(vm.name, dict(vm.spec), vm.state) for vm in inventory.list_vms(session, host)]


def answer_of(plan: EvacuationPlan, state: str, reason: str | None, dry_run: bool,
              unmovable: Sequence[Blocker] = ()) -> MaintenanceAnswer:
    """The plan as the API shows it, each VM in plan order, then the blocked ones."""
    rows = [EvacueeView(vm=m.vm, running=m.running, dest=m.dest, predicted_s=m.predicted_s,
                        start_s=m.start_s, end_s=m.end_s,
                        warnings=[r.message for r in m.broken_should]) for m in plan.moves]
    for b in (*plan.blocked, *unmovable):
        rows.append(EvacueeView(
            vm=b.vm, running=b.running, blocker=b.code, message=b.message, hint=b.hint,
            excluded=[ExcludedView(host=e.host, reasons=[ReasonView.model_validate(r.to_dict())
                                                         for r in e.reasons])
                      for e in b.excluded]))
    return MaintenanceAnswer(host=plan.host, state=state,
                             reason=reason, dry_run=dry_run, parallel=plan.parallel,
                             predicted_s=plan.predicted_s, vms=rows)


def blocked_reason(plan: EvacuationPlan, unmovable: Sequence[Blocker]) -> str | None:
    """Why the host cannot be emptied (None: it can)."""
    blockers = [*plan.blocked, *unmovable]
    if not blockers:
        return None
    return "; ".join(f"{b.vm}: {b.code}" for b in blockers)


class MaintenanceService:
    """Pre-flight and maintenance state (see the module doc)."""

    def __init__(self, prechecker: Prechecker, limits: HostLimits,
                 evacuations: Evacuations) -> None:
        self.prechecks = prechecker
        self.db = prechecker.db
        self.limits = limits
        self.evacuations = evacuations

    async def _running(self, name: str, spec_memory: int, parallel: int,
                       history: MoveHistory) -> Evacuee:
        plan = await self.prechecks.plan(name, None)
        source = await self.prechecks.source(plan)
        async with asyncio.TaskGroup() as tg:
            tasks = {row.name: tg.create_task(self.prechecks.context(plan, source, row))
                     for row in plan.dests}
            dirty = tg.create_task(_dirty_mibs(source.client, name, plan.source.url))
        contexts: dict[str, MigrationContext] = {n: t.result() for n, t in tasks.items()}
        denials = await self.prechecks.policies.decide_many(
            "migrate", name, list(tasks), None, "maintenance")
        link = source.host.facts.migration.speed_mbps
        return Evacuee(source.vm, True, frozenset(),
                       predicted_move_s(spec_memory, link, parallel, history, name,
                                        dirty.result()),
                       contexts, {h: tuple(check_results(d)) for h, d in denials.items()
                                  if h is not None})

    async def _stopped(self, name: str, spec: dict[str, object]) -> Evacuee:
        plan = await self.prechecks.plan(name, None)
        denials = await self.prechecks.policies.decide_many(
            "migrate", name, [row.name for row in plan.dests], None, "maintenance")
        return Evacuee(vm_spec_from_dict(spec), False, frozenset(), 0.0, {},
                       {h: tuple(check_results(d)) for h, d in denials.items()
                        if h is not None})

    async def preflight(self, host: str, max_parallel: int
                        ) -> tuple[EvacuationPlan, list[Blocker]]:
        """The evacuation plan of ``host`` and the unmovable VMs it leaves (module doc)."""
        vms = await self.db.run(_vms_of, host)
        view = await self.db.run(cluster_view, self.prechecks)
        parallel = min(max_parallel, self.limits.max_outgoing)
        history = await self.db.run(move_history, host, [name for name, _, _ in vms])
        unmovable: list[Blocker] = []
        asked = []
        async with asyncio.TaskGroup() as tg:  # every VM's questions at once
            for name, spec, state in vms:
                if state == "running":
                    asked.append(tg.create_task(self._running(
                        name, int(str(spec.get("memory_mib") or 0)), parallel, history)))
                elif state == "stopped":
                    asked.append(tg.create_task(self._stopped(name, spec)))
                else:
                    unmovable.append(Blocker(
                        name, VM_STATE_BLOCKS, state_blocks(name, state),
                        f"start or stop it (segue vm show {name}), then enter again",
                        running=False))
        evacuees = [task.result() for task in asked]
        tags = {r.name: r.tags for r in view.residents}
        evacuees = [Evacuee(e.vm, e.running, tags.get(e.vm.name, frozenset()), e.predicted_s,
                            e.contexts, e.policy) for e in evacuees]
        fresh = {h: ctx.dest for e in evacuees for h, ctx in e.contexts.items()}
        slots = tuple(HostSlot(_record(row, fresh), view.host_tags.get(row.name, frozenset()),
                               view.reserved_mib.get(row.name, 0)) for row in view.hosts)
        unmovable_names = {b.vm for b in unmovable}
        request = EvacuationRequest(
            host, slots, tuple(evacuees),
            tuple(r for r in view.residents if r.name not in unmovable_names),
            tuple(view.rules), max_parallel, self.limits.max_outgoing,
            self.limits.max_incoming)
        return plan_evacuation(request), unmovable

    async def enter(self, host: str, max_parallel: int, dry_run: bool) -> MaintenanceAnswer:
        """The pre-flight, and unless ``dry_run`` the host's new state and its evacuation
        (module doc)."""
        if not dry_run:
            self.evacuations.refuse_running(host)
        plan, unmovable = await self.preflight(host, max_parallel)
        if dry_run:
            state = await self.db.run(_state_of, host)
            return answer_of(plan, state[0], state[1], True, unmovable)
        left = [*(m.vm for m in plan.moves), *(b.vm for b in (*plan.blocked, *unmovable))]
        if not left:
            await self.db.run(_set_state, host, MaintenanceState.IN, None, True)
            return answer_of(plan, MaintenanceState.IN.value, None, False, unmovable)
        blocked = blocked_reason(plan, unmovable)
        reason = f"evacuating: {len(plan.moves)} VM(s) to move" + (
            f"; blocked: {blocked}" if blocked else "")
        self.evacuations.refuse_running(host)  # the pre-flight awaited: look again
        await self.evacuations.begin(host, max_parallel, plan, unmovable, reason)
        return answer_of(plan, MaintenanceState.ENTERING.value, reason, False, unmovable)

    async def exit(self, host: str, return_vms: bool = False, max_parallel: int = 2
                   ) -> MaintenanceAnswer:
        """The evacuation stops requesting moves (those requested run on) and the host is
        back to ``normal``; ``return_vms``: the VMs its latest evacuation moved are requested
        back, at most ``max_parallel`` at once. Raises Conflict
        (``MAINTENANCE_TRANSITION_INVALID``) if the host is not in maintenance."""
        await self.db.run(_set_state, host, MaintenanceState.NORMAL, None)
        await self.evacuations.stop(host)
        if not return_vms:
            return MaintenanceAnswer(host=host, state="normal")
        moves = await self.evacuations.begin_return(host, max_parallel)
        return MaintenanceAnswer(
            host=host, state="normal", parallel=max_parallel,
            vms=[EvacueeView(vm=m.vm, running=True, dest=host) for m in moves])


async def _dirty_mibs(client: AgentClient, vm: str, where: str) -> float:
    """The VM's dirty rate as QEMU measures it (MiB/s); 0 when it cannot."""
    try:
        return (await bounded(client.dirty_rate(vm, DIRTY_SAMPLE_MS), where)).dirty_rate_mibs
    except SegueError:
        return 0.0


def _record(row: HostRow, fresh: dict[str, HostRecord]) -> HostRecord:
    """The host as the agents' fresh facts show it (asked for the running VMs' questions),
    else on its stored facts."""
    if row.name in fresh:
        return fresh[row.name]
    return HostRecord(row.name, row.connected, row.maintenance, row.migration_enabled,
                      host_facts_from_dict(row.name, row.facts))


def _state_of(session: Session, host: str) -> tuple[str, str | None]:
    row = inventory.get_host(session, host)
    return row.maintenance_state, row.maintenance_reason


def _set_state(session: Session, host: str, state: MaintenanceState,
               reason: str | None, through_entering: bool = False) -> None:
    """``host`` to ``state`` (``through_entering``: by way of entering-maintenance, in the
    same transaction: an empty host)."""
    row = inventory.get_host(session, host)
    if through_entering:
        inventory.set_maintenance(row, MaintenanceState.ENTERING)
    inventory.set_maintenance(row, state, reason)
