"""Placement on the controller: gathers the cluster, asks the pure planner
(``segue.placement.place``), and enforces must rules on the actions users ask for.

``for_migration(vm)``: every host for a running VM: the pre-migration checks' contexts of
every other host (fresh facts, the migration path probed, the VM's files; as ``where``
gathers them, ``segue.controller.precheck``), the policies' verdicts on moving it there, the
rules, tags, the VMs of the cluster and the moves in flight (memory reserved per
destination, vCPUs counted there). ``for_creation(spec, tags)``: every host for a VM not
defined yet (fresh facts; the policies' verdicts on creating it there).

``require_rules(vm, host)``: raises ``Conflict`` ``RULE_VIOLATION`` naming the must rule the
VM on ``host`` breaks (a user's explicit destination too: must rules are never broken),
and answers the should rules it breaks (their reasons, for the job's record).

Errors: those of ``Prechecker`` (``NotFound``, ``Unavailable``), ``Conflict``
(``RULE_VIOLATION``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from segue.api.rules import CandidateView, ExcludedView, PlacementAnswer, ReasonView
from segue.checks import HostRecord
from segue.checks.resources import memory_needed_mib
from segue.controller import inventory, policy_store, rule_store
from segue.controller.migration_models import MigrationRow
from segue.controller.policy_gate import check_results
from segue.controller.precheck import HostRow, Prechecker
from segue.domain.errors import Conflict
from segue.domain.vm import VMSpec
from segue.engine.phases import ACTIVE, RUNNING, Phase
from segue.placement import (
    HostSlot,
    Placement,
    PlacementRequest,
    Reason,
    Resident,
    Rule,
    place,
)
from segue.placement.rules import breach
from segue.security.actors import Actor


@dataclass(frozen=True)
class ClusterView:
    """What placement reads of the database in one transaction."""

    hosts: list[HostRow]
    rules: list[Rule]
    host_tags: dict[str, frozenset[str]]
    residents: list[Resident]
    reserved_mib: dict[str, int]


def cluster_view(session: Session, prechecker: Prechecker) -> ClusterView:
    """Hosts, rules, tags, every VM (where it runs, and where it moves) and the memory
    that running migrations hold at their destinations."""
    vm_tags = policy_store.tags_of(session, policy_store.VM)
    host_tags = policy_store.tags_of(session, policy_store.HOST)
    active = session.scalars(select(MigrationRow).where(
        MigrationRow.phase.in_([p.value for p in ACTIVE]))).all()
    moving = {m.vm_name: m.dest_host for m in active}
    vms = inventory.list_vms(session)
    reserved: dict[str, int] = {}
    sizes = {vm.name: memory_needed_mib(int(vm.spec.get("memory_mib") or 0)) for vm in vms}
    for m in active:
        if Phase(m.phase) in RUNNING:
            reserved[m.dest_host] = reserved.get(m.dest_host, 0) + sizes.get(m.vm_name, 0)
    residents = [Resident(vm.name, vm.host, int(vm.spec.get("vcpus") or 1),
                          frozenset(vm_tags.get(vm.name, [])), moving.get(vm.name))
                 for vm in vms]
    hosts = [prechecker.host_row(h) for h in inventory.list_hosts(session)]
    return ClusterView(hosts, rule_store.rules(session),
                       {h.name: frozenset(host_tags.get(h.name, [])) for h in hosts},
                       residents, reserved)


def answer_of(placement: Placement, source: str | None) -> PlacementAnswer:
    """The planner's answer as the API shows it."""
    def reasons(items: Iterable[Reason]) -> list[ReasonView]:
        return [ReasonView.model_validate(r.to_dict()) for r in items]
    return PlacementAnswer(
        vm=placement.vm, source=source,
        choice=placement.choice.host if placement.choice else None,
        candidates=[CandidateView(host=c.host, score=c.score, memory_use=c.memory_use,
                                  vcpu_use=c.vcpu_use, broken_should=reasons(c.broken_should),
                                  warnings=list(c.warnings)) for c in placement.candidates],
        excluded=[ExcludedView(host=e.host, reasons=reasons(e.reasons))
                  for e in placement.excluded])


class PlacementService:
    """Placement over the database and the agents (see the module doc)."""

    def __init__(self, prechecker: Prechecker) -> None:
        self.prechecks = prechecker
        self.db = prechecker.db

    async def _view(self) -> ClusterView:
        return await self.db.run(cluster_view, self.prechecks)

    async def for_migration(self, vm_name: str, actor: Actor | None = None,
                            initiator: str = "user") -> PlacementAnswer:
        """Every host for moving ``vm_name`` (see the module doc)."""
        plan = await self.prechecks.plan(vm_name, None)
        source = await self.prechecks.source(plan)
        view = await self._view()
        async with asyncio.TaskGroup() as tg:
            tasks = {row.name: tg.create_task(self.prechecks.context(plan, source, row))
                     for row in plan.dests}
        denials = await self.prechecks.policies.decide_many(
            "migrate", vm_name, list(tasks), actor, initiator)
        slots = [HostSlot(source.host, view.host_tags.get(source.host.name, frozenset()))]
        for name, task in tasks.items():
            ctx = task.result()
            slots.append(HostSlot(ctx.dest, view.host_tags.get(name, frozenset()),
                                  view.reserved_mib.get(name, 0), ctx,
                                  tuple(check_results(denials[name]))))
        me = next((r for r in view.residents if r.name == vm_name), None)
        request = PlacementRequest(source.vm, tuple(slots), me.tags if me else frozenset(),
                                   plan.source.name, tuple(view.residents), tuple(view.rules))
        return answer_of(place(request), plan.source.name)

    async def for_creation(self, spec: VMSpec, tags: Iterable[str],
                           actor: Actor | None = None) -> PlacementAnswer:
        """Every host for a new VM ``spec`` tagged ``tags``."""
        tags = frozenset(tags)
        view = await self._view()
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self.prechecks.dest(row, strict=False))
                     for row in view.hosts]
        records: list[HostRecord] = [t.result()[0] for t in tasks]
        denials = await self.prechecks.policies.decide_many(
            "create", spec.name, [r.name for r in records], actor, vm_tags=tags)
        slots = tuple(HostSlot(r, view.host_tags.get(r.name, frozenset()),
                               view.reserved_mib.get(r.name, 0), None,
                               tuple(check_results(denials[r.name]))) for r in records)
        residents = tuple(r for r in view.residents if r.name != spec.name)
        request = PlacementRequest(spec, slots, tags, None, residents, tuple(view.rules))
        return answer_of(place(request), None)

    async def require_rules(self, vm_name: str, host: str,
                            vm_tags: Iterable[str] | None = None) -> list[str]:
        """Raise Conflict ``RULE_VIOLATION`` if ``vm_name`` on ``host`` breaks a must rule;
        the reasons of the should rules it breaks. ``vm_tags``: for a VM not defined yet."""
        view = await self._view()
        tags = {r.name: r.tags for r in view.residents}
        if vm_tags is not None:
            tags[vm_name] = frozenset(vm_tags)
        where = {r.name: (r.host,) if r.moving_to is None else (r.host, r.moving_to)
                 for r in view.residents if r.name != vm_name}
        at_dest = {vm: hosts[-1:] for vm, hosts in where.items()}
        should: list[str] = []
        for rule in view.rules:
            why = breach(rule, vm_name, host, view.host_tags.get(host, frozenset()),
                         at_dest if rule.kind == "affinity" else where, tags)
            if why is None:
                continue
            if rule.must:
                raise Conflict("RULE_VIOLATION", f"{vm_name} on {host} breaks rule "
                               f"{rule.name}: {why}",
                               f"choose another host (segue vm placement {vm_name}), or "
                               f"delete the rule (segue rule delete {rule.name})",
                               rule=rule.name)
            should.append(f"breaks should rule {rule.name}: {why}")
        return should
