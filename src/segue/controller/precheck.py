"""Pre-migration checks on the controller: gather a ``MigrationContext``, run the pure checks.

The database gives the VM, both hosts' records (connected, maintenance, migration enabled),
another active migration of the VM (``in_flight``) and the memory that active migrations into
the destination hold (``reserved_mib``: each VM's memory plus QEMU overhead). The agents give
fresh facts of both hosts, the VM's run state and the CPU features its QEMU exposes (source),
and a test of the migration path: a one-shot listener on the destination's migration address,
connected to from the source's (only when both migration interfaces are usable). Every agent
call is bounded by ``AGENT_CALL_TIMEOUT_S``.

User-defined policies (``segue.controller.policy_gate``) add the results of a ``policy``
check to ``check`` and ``where``: ``POLICY_DENIED`` per refusing policy, else ``POLICY_OK``.

A destination whose agent does not answer is checked on its last heartbeat's facts, with an
``AGENT_UNREACHABLE`` result; with ``strict`` (a migration request) that raises instead.

Errors: ``NotFound`` (``VM_NOT_FOUND``, ``HOST_NOT_FOUND``), ``Unavailable``
(``AGENT_UNREACHABLE``) when the source's agent (or, strict, the destination's) does not
answer, the agents' own errors about the VM (e.g. ``VM_NOT_FOUND`` from the source).

Answers are ``segue.api.checks`` models (``CheckAnswer``, ``WhereAnswer``); agents are asked
through the typed client (``AgentPool.typed``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from segue.api.agent import FileRef
from segue.api.checks import CheckAnswer, CheckResultView, WhereAnswer, WhereRow
from segue.checks import (
    CHECKS,
    CheckResult,
    HostRecord,
    MigrationContext,
    PathProbe,
    errors_of,
    host_facts_from_dict,
    run_checks,
    worst,
)
from segue.checks.network import nic_usable
from segue.checks.resources import memory_needed_mib
from segue.clients.agent import AgentClient
from segue.controller import inventory
from segue.controller.agents import AgentPool
from segue.controller.db import Database
from segue.controller.migration_models import MigrationRow
from segue.controller.models import Host, utcnow
from segue.controller.policy_gate import POLICY_CHECK, PolicyGate, check_results
from segue.domain.errors import SegueError, Unavailable
from segue.domain.host import HostFacts
from segue.domain.vm import VMSpec, vm_spec_from_dict
from segue.engine.phases import ACTIVE, RUNNING, Phase
from segue.security.actors import Actor

AGENT_CALL_TIMEOUT_S = 10.0
COLUMNS = (*CHECKS, POLICY_CHECK)  # every check of where's matrix: the pure ones, policies
T = TypeVar("T")


@dataclass(frozen=True)
class HostRow:
    """A host's record read from the database (usable after the session ends)."""

    name: str
    url: str
    connected: bool
    maintenance: bool
    migration_enabled: bool
    facts: dict[str, Any]  # the inventory's JSON column, as the last heartbeat stored it

    def record(self, facts: HostFacts | None = None, reason: str = "") -> HostRecord:
        """The checks' view, on fresh ``facts`` or (None) on the stored ones, unreachable."""
        return HostRecord(self.name, self.connected, self.maintenance, self.migration_enabled,
                          host_facts_from_dict(self.name, self.facts) if facts is None
                          else facts,
                          reachable=facts is not None, unreachable_reason=reason)


@dataclass(frozen=True)
class Source:
    """What the source side contributes to every destination's context."""

    vm: VMSpec
    state: str
    cpu_features: frozenset[str] | None
    host: HostRecord
    client: AgentClient


@dataclass(frozen=True)
class Plan:
    """The database's part of the question: the VM, its host, destinations, migrations."""

    vm_name: str
    spec: dict[str, Any]
    source: HostRow
    dests: list[HostRow]
    in_flight: str | None
    reserved_mib: dict[str, int]


async def bounded(call: Awaitable[T], where: str) -> T:
    """Await an agent call for at most AGENT_CALL_TIMEOUT_S; Unavailable AGENT_UNREACHABLE
    when it takes longer."""
    try:
        async with asyncio.timeout(AGENT_CALL_TIMEOUT_S):
            return await call
    except TimeoutError as err:
        raise Unavailable("AGENT_UNREACHABLE", f"agent at {where} did not answer within "
                          f"{AGENT_CALL_TIMEOUT_S:g} s", "check that the agent runs") from err


def result_views(results: list[CheckResult]) -> list[CheckResultView]:
    """Every result, as the API shows them."""
    return [CheckResultView.model_validate(r.to_dict()) for r in results]


def matrix_row(host: str, results: list[CheckResult]) -> WhereRow:
    """One destination of ``where``: the worst severity per check, and every result."""
    per_check = {check: worst(r for r in results if r.check == check) for check in COLUMNS}
    return WhereRow(host=host, checks=per_check, ok=not errors_of(results),
                    results=result_views(results))


class Prechecker:
    """Answers "can this VM go there, and if not, why" for one or every destination."""

    def __init__(self, db: Database, agents: AgentPool, heartbeat_timeout: float) -> None:
        self.db = db
        self.agents = agents
        self.heartbeat_timeout = heartbeat_timeout
        self.policies = PolicyGate(db)

    # ---- the database's part ----
    def host_row(self, host: Host) -> HostRow:
        """The host's record, read in a transaction, usable after it."""
        return self._row(host)

    def _row(self, host: Host) -> HostRow:
        return HostRow(host.name, host.url,
                       inventory.host_connected(host, utcnow(), self.heartbeat_timeout),
                       host.maintenance, host.migration_enabled, dict(host.facts or {}))

    async def plan(self, vm_name: str, dest: str | None) -> Plan:
        """The VM and its destination (``dest``, or every other host when None), read in the
        database's thread; raises NotFound (VM_NOT_FOUND, HOST_NOT_FOUND)."""
        return await self.db.run(self._plan, vm_name, dest)

    def _plan(self, session: Session, vm_name: str, dest: str | None) -> Plan:
        vm = inventory.get_vm(session, vm_name)
        source = self._row(inventory.get_host(session, vm.host))
        hosts = ([inventory.get_host(session, dest)] if dest is not None else
                 [h for h in inventory.list_hosts(session) if h.name != vm.host])
        in_flight, reserved = self._migrations(session, vm_name)
        return Plan(vm_name, dict(vm.spec), source, [self._row(h) for h in hosts],
                    in_flight, reserved)

    @staticmethod
    def _migrations(session: Session, vm_name: str) -> tuple[str | None, dict[str, int]]:
        """The VM's own active migration, and memory held per destination by the others that
        run (queued ones hold nothing yet: each is checked again when it leaves the queue,
        and one must not be refused for the memory of those queued behind it)."""
        active = session.scalars(select(MigrationRow).where(
            MigrationRow.phase.in_([p.value for p in ACTIVE]))).all()
        own = next((m.id for m in active if m.vm_name == vm_name), None)
        reserved: dict[str, int] = {}
        for m in active:
            if Phase(m.phase) not in RUNNING:
                continue
            vm = inventory.find_vm(session, m.vm_name)
            if m.vm_name != vm_name and vm is not None:
                need = memory_needed_mib(int(vm.spec.get("memory_mib") or 0))
                reserved[m.dest_host] = reserved.get(m.dest_host, 0) + need
        return own, reserved

    # ---- the agents' part ----
    async def source(self, plan: Plan) -> Source:
        """Fresh facts of the source, the VM's run state and CPU features (None if its QEMU
        cannot say); raises Unavailable (AGENT_UNREACHABLE) and the agent's own errors."""
        row = plan.source
        client = self.agents.typed(row.url, row.name)
        facts = await bounded(client.facts(), row.url)
        live = await bounded(client.get_vm(plan.vm_name), row.url)
        try:
            cpu = await bounded(client.vm_cpu(plan.vm_name), row.url)
            features: frozenset[str] | None = frozenset(cpu.features)
        except SegueError:
            features = None
        return Source(vm_spec_from_dict(plan.spec), live.state.value, features,
                      row.record(facts), client)

    async def dest(self, row: HostRow, strict: bool) -> tuple[HostRecord, AgentClient]:
        """The destination on fresh facts; on its stored ones, unreachable, when its agent does
        not answer (raised instead with ``strict``)."""
        client = self.agents.typed(row.url, row.name)
        try:
            return row.record(await bounded(client.facts(), row.url)), client
        except SegueError as err:
            if strict:
                raise
            return row.record(None, f"{err.code}: {err.message}"), client

    @staticmethod
    async def probe(source: Source, dest: HostRecord, client: AgentClient
                    ) -> PathProbe | None:
        """Test the migration path; None when it is not worth trying (same host, destination
        unreachable, or a migration interface unusable: the checks report those)."""
        if (source.host.name == dest.name or not dest.reachable
                or not nic_usable(source.host.facts) or not nic_usable(dest.facts)):
            return None
        address, port = dest.facts.migration.addresses[0].split("/")[0], 0
        try:
            listener = await bounded(client.open_probe_listener(), dest.name)
            address, port = listener.address, listener.port
            answer = await bounded(source.client.probe_migration_path(address, port),
                                   source.host.name)
        except SegueError as err:
            return PathProbe(ok=False, dest_address=address, port=port,
                             error=f"{err.code}: {err.message}")
        return PathProbe(ok=answer.ok, dest_address=address, port=port,
                         source_address=answer.source_address, rtt_ms=answer.rtt_ms,
                         error=answer.error)

    # ---- questions ----
    async def context(self, plan: Plan, source: Source, row: HostRow, strict: bool = False,
                      tls: bool = True) -> MigrationContext:
        """The full context for one destination (see the module doc for ``strict``);
        ``tls``: the migration is to be encrypted."""
        dest, client = await self.dest(row, strict)
        return MigrationContext(
            vm=source.vm, vm_state=source.state, vm_cpu_features=source.cpu_features,
            source=source.host, dest=dest, reserved_mib=plan.reserved_mib.get(row.name, 0),
            probe=await self.probe(source, dest, client), in_flight=plan.in_flight,
            files_visible=await self.files(source.vm, dest, client), tls=tls)

    @staticmethod
    async def files(vm: VMSpec, dest: HostRecord, client: AgentClient
                    ) -> dict[str, bool] | None:
        """Which of the VM's files the destination sees (None if it cannot be asked)."""
        if not dest.reachable:
            return None
        refs = [FileRef(datastore=vm.datastore, path=f"{vm.name}/vm.json"),
                *(FileRef(datastore=d.datastore, path=d.path) for d in vm.disks)]
        try:
            answer = await bounded(client.files_visible(refs), dest.name)
        except SegueError:
            return None
        return {f"{f.datastore}:{f.path}": f.visible for f in answer}

    async def for_request(self, vm_name: str, dest: str, tls: bool = True
                          ) -> MigrationContext:
        """The context of a migration request: both agents must answer (strict)."""
        plan = await self.plan(vm_name, dest)
        return await self.context(plan, await self.source(plan), plan.dests[0], strict=True,
                                  tls=tls)

    async def check(self, vm_name: str, dest: str, actor: Actor | None = None,
                    encrypted: bool = True) -> CheckAnswer:
        """Every check for one destination, and the policies' verdict on ``actor``'s
        migration (``policy`` results)."""
        plan = await self.plan(vm_name, dest)
        ctx = await self.context(plan, await self.source(plan), plan.dests[0],
                                 tls=encrypted)
        denials = await self.policies.decide("migrate", vm_name, dest, actor,
                                             encrypted=encrypted)
        results = run_checks(ctx) + check_results(denials)
        return CheckAnswer(vm=vm_name, source=plan.source.name, destination=dest,
                           ok=not errors_of(results), results=result_views(results))

    async def where(self, vm_name: str, actor: Actor | None = None) -> WhereAnswer:
        """Every other host of the cluster with its results (checked concurrently) and
        the policies' verdict on ``actor`` moving the VM there."""
        plan = await self.plan(vm_name, None)
        source = await self.source(plan)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self.context(plan, source, row)) for row in plan.dests]
        denials = await self.policies.decide_many("migrate", vm_name,
                                                  [row.name for row in plan.dests], actor)
        rows = [matrix_row(t.result().dest.name, run_checks(t.result())
                           + check_results(denials[t.result().dest.name])) for t in tasks]
        return WhereAnswer(vm=vm_name, source=plan.source.name, checks=list(COLUMNS),
                           hosts=rows)
