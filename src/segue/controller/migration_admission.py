"""Whether a migration request is accepted: the checks that run before any job exists.

A request is refused at once when the VM or host is unknown, the destination is the VM's own
host, the VM already migrates (one active job per VM, queued ones included), a user-defined
policy refuses it (``segue.controller.policy_gate``: 403 ``POLICY_DENIED``), the destination
breaks a must placement rule (``segue.controller.placement_service``: 409 ``RULE_VIOLATION``
naming the rule; a broken should rule is accepted and its reason recorded among the
warnings, ``RULE_SHOULD_BROKEN``), a bandwidth cap
would corrupt the guest (``refuse_unsafe_cap``), an agent does not answer or the VM is not
running; then every pre-migration check runs (``segue.controller.precheck``,
``segue.checks``) and any error refuses it with ``MIGRATION_CHECKS_FAILED``, whose
``details["results"]`` holds every result (errors, warnings and passes). The options' bounds
are the request body's (``segue.api.migration.MigrationOptionsBody``). A queued job's checks
run again when it leaves the queue (``recheck``).

Errors: ``NotFound`` (``VM_NOT_FOUND``, ``HOST_NOT_FOUND``), ``PolicyDenied``
(``POLICY_DENIED``), ``Conflict``
(``RULE_VIOLATION``, ``MIGRATION_SAME_HOST``, ``MIGRATION_IN_PROGRESS``, ``VM_NOT_RUNNING``,
``MIGRATION_CHECKS_FAILED``, ``MIGRATION_SOURCE_CHANGED``), ``InvalidRequest``
(``BANDWIDTH_CAP_UNSAFE``), ``Unavailable`` (``AGENT_UNREACHABLE``).
"""

from __future__ import annotations

import uuid
from dataclasses import replace

from sqlalchemy.orm import Session

from segue.api.migration import MigrationOptionsBody
from segue.checks import errors_of, run_checks
from segue.controller import inventory
from segue.controller.db import Database
from segue.controller.migration_store import ActiveJob, InventoryFacts, SqlJobStore
from segue.controller.placement_service import PlacementService
from segue.controller.policy_gate import PolicyGate
from segue.controller.precheck import Prechecker
from segue.domain.errors import Conflict, InvalidRequest
from segue.engine import policy
from segue.engine.context import JobSpec
from segue.security.actors import Actor


class Admission:
    """Decides whether a request may become a job (see the module doc)."""

    def __init__(self, db: Database, store: SqlJobStore, facts: InventoryFacts,
                 prechecks: Prechecker) -> None:
        self.db = db
        self.store = store
        self.facts = facts
        self.prechecks = prechecks
        self.policies = PolicyGate(db)
        self.placement = PlacementService(prechecks)

    async def admit(self, vm: str, dest: str, options: MigrationOptionsBody,
                    actor: Actor | None = None, initiator: str = "user"
                    ) -> tuple[JobSpec, list[str]]:
        """The new job's spec (with the VM's lease generation on record, the fencing token
        of the job's calls to the source) and the checks' warning codes; raises to refuse
        (module doc). ``actor``: the user who asked (None: root or the controller's own
        automation); ``initiator``: user, maintenance, drs or ha. Nothing is stored."""
        source, generation = await self.check_inventory(vm, dest)
        await self.policies.require("migrate", vm, dest, actor, initiator,
                                    options.tls)
        should = await self.placement.require_rules(vm, dest)
        await self.refuse_unsafe_cap(options, source)
        warnings = await self.check_all(vm, dest, tls=options.tls) + [
            f"RULE_SHOULD_BROKEN ({why})" for why in should]
        return JobSpec(str(uuid.uuid4()), vm, source, dest, options, generation), warnings

    async def check_inventory(self, vm_name: str, dest: str) -> tuple[str, int | None]:
        """The VM's host and lease generation on record; raises unless the VM and ``dest``
        are known, differ, and the VM has no active migration."""
        active = await self.store.active_of(vm_name)
        return await self.db.run(self._source_of, vm_name, dest, active)

    def _source_of(self, session: Session, vm_name: str, dest: str,
                   active: ActiveJob | None) -> tuple[str, int | None]:
        vm = inventory.get_vm(session, vm_name)
        self.refuse_in_flight(vm_name, active)
        if vm.host == dest:
            raise Conflict("MIGRATION_SAME_HOST", f"{vm_name} already runs on {dest}",
                           "choose another destination host")
        inventory.get_host(session, dest)
        return inventory.get_host(session, vm.host).name, vm.generation

    @staticmethod
    def refuse_in_flight(vm: str, active: ActiveJob | None) -> None:
        """Raise Conflict (``MIGRATION_IN_PROGRESS``) if ``vm`` has an ``active`` job."""
        if active is not None:
            raise Conflict("MIGRATION_IN_PROGRESS",
                           f"{vm} is already migrating ({active.id}, {active.phase.value})",
                           f"wait for it, or cancel it: segue migration cancel {active.id}")

    async def refuse_unsafe_cap(self, options: MigrationOptionsBody, host: str) -> None:
        """QEMU before 8.0 under TCG loses pages the guest dirties while it rate-limits a
        migration (the guest checker shows it, and guests crash): refuse a cap there rather
        than corrupt the VM."""
        if not options.max_bandwidth_mibs or options.allow_postcopy:
            return  # with post-copy the policy leaves pre-copy early (segue.engine.policy)
        facts = await self.facts.host_facts(host)
        if policy.qemu_unsafe_for_multipass(facts.cpu.accel, facts.qemu.version):
            raise InvalidRequest(
                "BANDWIDTH_CAP_UNSAFE",
                f"{host} runs guests under TCG with QEMU {facts.qemu.version or '(unknown)'}, "
                "which loses guest memory "
                "when it rate-limits a migration",
                "migrate without --max-bandwidth, or allow post-copy")

    async def check_all(self, vm_name: str, dest: str, own: str | None = None,
                        tls: bool = True) -> list[str]:
        """Run every pre-migration check; the warnings' codes. Raises VM_NOT_RUNNING alone
        (as before the checks existed), else MIGRATION_CHECKS_FAILED with every result.
        ``own``: the job being checked, which is not "another migration of the VM";
        ``tls``: the migration is to be encrypted (both hosts need credentials)."""
        ctx = await self.prechecks.for_request(vm_name, dest, tls)
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

    async def recheck(self, spec: JobSpec) -> None:
        """A queued job's checks at its start; raises as a request would, and
        ``MIGRATION_SOURCE_CHANGED`` when the VM left its source, or was claimed again
        (its lease generation on record changed), while the job waited."""
        host, generation = await self.db.run(_host_of, spec.vm)
        if host != spec.source:
            raise Conflict("MIGRATION_SOURCE_CHANGED",
                           f"{spec.vm} moved to {host} while its migration from "
                           f"{spec.source} was queued", "request the migration again")
        if spec.generation is not None and generation != spec.generation:
            raise Conflict("MIGRATION_SOURCE_CHANGED",
                           f"{spec.vm} was claimed again on {host} (lease generation "
                           f"{spec.generation}, now {generation}) while its migration was "
                           "queued", "request the migration again")
        await self.placement.require_rules(spec.vm, spec.dest)
        warnings = await self.check_all(spec.vm, spec.dest, own=spec.id,
                                        tls=spec.options.tls)
        await self.store.note(spec.id, "pre-migration checks passed again at start"
                              + (f" (warnings: {', '.join(warnings)})" if warnings else ""))


def _host_of(session: Session, vm: str) -> tuple[str, int | None]:
    row = inventory.get_vm(session, vm)
    return row.host, row.generation
