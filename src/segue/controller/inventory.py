"""The inventory: hosts and VMs as the controller knows them, and each VM's event log.

Store functions over an SQLAlchemy ``Session`` (the caller owns the transaction: from async
code, ``Database.run``, which runs them in the database's thread; elsewhere
``Database.session()``). They return rows: a caller turns them into views before its
transaction ends. Used by the inventory service (``segue.controller.inventory_service``) and
by the migration store; none of them talks to an agent. Every change of a VM's state or
host is stored as a ``VMEvent``. The views (``host_view``, ``vm_view``, ``event_view``) are
the API's answers (``segue.api.inventory``).

Times are timezone-aware UTC datetimes (``segue.controller.models.utcnow``).

Errors: ``NotFound`` (``HOST_NOT_FOUND``, ``VM_NOT_FOUND``), ``Conflict`` (``VM_EXISTS``).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from segue.api.inventory import (
    MISSING,
    HostConnection,
    HostDetail,
    HostView,
    InventoryState,
    VMEventView,
    VMReport,
    VMView,
)
from segue.api.vm import VMInfo, VMSpecBody
from segue.checks.context import host_facts_from_dict
from segue.controller import reconcile
from segue.controller.migration_models import MigrationRow
from segue.controller.models import VM, Host, HostState, VMEvent, VMInstance, utcnow
from segue.domain.errors import Conflict, NotFound
from segue.domain.host import HostFacts
from segue.domain.maintenance import MaintenanceState, in_maintenance, require_transition
from segue.domain.vm import VMState
from segue.engine.phases import TERMINAL

log = logging.getLogger(__name__)


def migration_address(facts: HostFacts) -> str | None:
    """The first IPv4 address of the host's migration interface (``facts.migration``).

    Addresses may carry a prefix length (``10.0.0.1/24``); None when there is none.
    """
    for text in facts.migration.addresses:
        try:
            address = ipaddress.ip_interface(str(text)).ip
        except ValueError:
            continue
        if address.version == 4:
            return str(address)
    return None


# ---- hosts ----
def list_hosts(session: Session) -> list[Host]:
    return list(session.scalars(select(Host).order_by(Host.name)))


def find_host(session: Session, name: str) -> Host | None:
    return session.scalars(select(Host).where(Host.name == name)).first()


def get_host(session: Session, name: str) -> Host:
    """The host named ``name``; raises NotFound (HOST_NOT_FOUND) naming the known hosts."""
    host = find_host(session, name)
    if host is None:
        known = [h.name for h in list_hosts(session)]
        hint = (f"known hosts: {', '.join(known)}" if known else
                "no agent has sent a heartbeat yet: set controller_url in the agents' config")
        raise NotFound("HOST_NOT_FOUND", f"no host named {name}", hint)
    return host


def host_connected(host: Host, now: datetime, timeout: float) -> bool:
    """Whether the host's last heartbeat is at most ``timeout`` seconds old at ``now``."""
    if host.state != HostState.CONNECTED or host.last_heartbeat is None:
        return False
    return (now - host.last_heartbeat).total_seconds() <= timeout


def mark_stale_hosts(session: Session, now: datetime, timeout: float) -> list[str]:
    """Mark disconnected every connected host silent for over ``timeout`` s; their names."""
    stale = []
    for host in session.scalars(select(Host).where(Host.state == HostState.CONNECTED)):
        if not host_connected(host, now, timeout):
            host.state = HostState.DISCONNECTED
            stale.append(host.name)
            log.warning("host %s: no heartbeat since %s; disconnected", host.name,
                        host.last_heartbeat)
    return stale


def set_migration_enabled(host: Host, enabled: bool) -> None:
    """Allow (or forbid) live migrations to this host."""
    host.migration_enabled = enabled


# ---- heartbeats ----
def set_maintenance(host: Host, state: MaintenanceState, reason: str | None = None) -> None:
    """Move ``host`` to maintenance ``state`` (with why it is stuck, for
    ``entering-maintenance``); raises Conflict (``MAINTENANCE_TRANSITION_INVALID``) on a
    transition ``segue.domain.maintenance`` does not allow."""
    require_transition(host.name, host.maintenance_state, state)
    host.maintenance_state = state.value
    host.maintenance = in_maintenance(state)
    host.maintenance_reason = reason


def refuse_maintenance(host: Host, what: str) -> None:
    """Raise Conflict (``HOST_IN_MAINTENANCE``) if ``host`` is in either maintenance state:
    it takes no new VM (``what``: the refused action, for the message)."""
    if in_maintenance(host.maintenance_state):
        raise Conflict("HOST_IN_MAINTENANCE",
                       f"host {host.name} is {host.maintenance_state}: {what} refused",
                       f"choose another host, or take {host.name} out of maintenance "
                       f"(segue host maintenance exit {host.name})", host=host.name,
                       state=host.maintenance_state)


def record_heartbeat(session: Session, name: str, url: str, facts: HostFacts,
                     vms: list[VMReport], now: datetime) -> Host:
    """Store an agent's heartbeat: upsert its host (connected) and reconcile its VMs.

    ``vms`` are the agent's VMs. A VM this host owns gets its state and pid updated (a
    state change is an event); a VM unknown to the inventory is added (``discovered``); a VM
    owned by another host is left alone (an incoming migration); a VM this host owns but no
    longer reports becomes ``missing``.
    """
    host = session.scalars(select(Host).where(Host.name == name)).first()
    if host is None:
        host = Host(name=name, created_at=now, facts={})
        session.add(host)
        log.info("host %s joined (%s)", name, url)
    elif host.state != HostState.CONNECTED:
        log.info("host %s reconnected", name)
    host.url, host.facts, host.last_heartbeat = url, facts.to_dict(), now
    host.state = HostState.CONNECTED
    host.migration_address = migration_address(facts)
    session.flush()
    _reconcile_vms(session, host, vms, now)
    return host


def _reconcile_vms(session: Session, host: Host, reported: list[VMReport],
                   now: datetime) -> None:
    """The host's VMs into the inventory, then who owns each one it mentions decided from
    every host's instances (``segue.controller.reconcile``)."""
    by_name = {info.name: info for info in reported}
    changed = reconcile.record_instances(session, host.name, reported, now)
    known = {vm.name: vm for vm in session.scalars(select(VM).where(VM.name.in_(by_name)))}
    for name, info in by_name.items():
        vm = known.get(name)
        if vm is None:
            vm = add_vm(session, info, host, now, kind="discovered")
        elif vm.host == host.name:
            update_vm_state(session, vm, info.state, info.pid, now)
            if info.generation is not None and info.role != "source":
                vm.generation = info.generation
    owned = session.scalars(select(VM).where(VM.host == host.name, VM.name.not_in(by_name),
                                             VM.state != MISSING))
    for vm in owned:
        update_vm_state(session, vm, MISSING, None, now)
    session.flush()
    _reconcile_owners(session, host.name, set(by_name) | changed, changed, by_name, now)


def _reconcile_owners(session: Session, reporter: str, names: set[str], changed: set[str],
                      by_name: dict[str, VMReport], now: datetime) -> None:
    """``reconcile.decide`` for each VM of ``names``: the owner the hosts' leases say, and
    the events of what changed in ``reporter``'s heartbeat."""
    connected = {h.name for h in session.scalars(
        select(Host).where(Host.state == HostState.CONNECTED))} | {reporter}
    active = set(session.scalars(select(MigrationRow.vm_name).where(
        MigrationRow.phase.not_in([p.value for p in TERMINAL]))))
    for name in sorted(names):
        vm = find_vm(session, name)
        if vm is None:
            continue
        seen = reconcile.instances_of(session, name, connected)
        decision = reconcile.decide(vm.host, vm.generation, seen,
                                    {reporter} if name in changed else set(), name in active)
        if decision.owner is not None:
            vm.host, vm.generation = decision.owner
            info = by_name.get(name) if vm.host == reporter else None
            state = next(s.state for s in seen if s.host == vm.host)
            update_vm_state(session, vm, VMState(state), info.pid if info else None, now)
        for kind, data in decision.events:
            record_vm_event(session, name, kind, data, now)
            log.warning("VM %s: %s %s", name, kind, data)


# ---- VMs ----
def list_vms(session: Session, host: str | None = None) -> list[VM]:
    """All VMs, or those of one host, by name."""
    query = select(VM).order_by(VM.name)
    if host is not None:
        query = query.where(VM.host == host)
    return list(session.scalars(query))


def find_vm(session: Session, name: str) -> VM | None:
    return session.scalars(select(VM).where(VM.name == name)).first()


def get_vm(session: Session, name: str) -> VM:
    """The VM named ``name``; raises NotFound (VM_NOT_FOUND)."""
    vm = find_vm(session, name)
    if vm is None:
        raise NotFound("VM_NOT_FOUND", f"no VM named {name} in the inventory",
                       "list VMs with: segue vm list")
    return vm


def refuse_existing_vm(session: Session, name: str) -> None:
    """Raise Conflict (VM_EXISTS) if the inventory has a VM named ``name``."""
    vm = find_vm(session, name)
    if vm is not None:
        raise Conflict("VM_EXISTS", f"a VM named {name} already exists (on {vm.host})",
                       "choose another name, or destroy the existing VM first")


def add_vm(session: Session, info: VMInfo | VMReport, host: Host,
           now: datetime | None = None, kind: str = "defined") -> VM:
    """Insert a VM from an agent's answer or report.

    Records a ``kind`` event. If a heartbeat already added the same VM (same uuid on the same
    host) it is returned as is; any other VM of that name raises Conflict (VM_EXISTS).
    """
    now = now or utcnow()
    name = info.name
    existing = find_vm(session, name)
    if existing is not None:
        if existing.host == host.name and existing.uuid == info.uuid:
            return existing
        refuse_existing_vm(session, name)
    vm = VM(name=name, uuid=info.uuid, host=host.name,
            spec=info.spec.model_dump(mode="json"), state=info.state.value, pid=info.pid,
            updated_at=now, generation=info.generation)
    session.add(vm)
    record_vm_event(session, name, kind, {"host": host.name, "uuid": vm.uuid,
                                          "state": vm.state}, now)
    session.flush()
    return vm


def vm_state(vm: VM) -> InventoryState:
    """The VM's stored state: a ``VMState``, or ``missing``."""
    return MISSING if vm.state == MISSING else VMState(vm.state)


def update_vm_state(session: Session, vm: VM, state: InventoryState, pid: int | None,
                    now: datetime | None = None) -> bool:
    """Set the VM's state and pid; a state change is recorded as a ``state`` event.

    Returns whether the state changed.
    """
    now = now or utcnow()
    old = vm_state(vm)
    changed = old != state
    if changed:
        record_vm_event(session, vm.name, "state", {"from": str(old), "to": str(state),
                                                    "host": vm.host}, now)
        vm.state = str(state)
    if changed or vm.pid != pid:
        vm.pid, vm.updated_at = pid, now
    return changed


def move_vm(session: Session, name: str, new_host: str, now: datetime | None = None, *,
            generation: int | None = None) -> VM:
    """Record that ``new_host`` now owns the VM at lease ``generation`` (None: unknown until
    its heartbeat reports it; the old host's is never kept for the new one), with a
    ``moved`` event; raises NotFound."""
    now = now or utcnow()
    vm = get_vm(session, name)
    get_host(session, new_host)
    old_host, vm.host, vm.updated_at = vm.host, new_host, now
    vm.generation = generation
    record_vm_event(session, name, "moved", {"from": old_host, "to": new_host,
                                             "generation": generation}, now)
    return vm


def remove_vm(session: Session, name: str, now: datetime | None = None) -> None:
    """Delete the VM from the inventory (its events stay, plus a ``destroyed`` one)."""
    vm = get_vm(session, name)
    record_vm_event(session, name, "destroyed", {"host": vm.host}, now)
    reconcile.forget_instances(session, name)
    session.delete(vm)


def vms_left_behind(session: Session) -> list[str]:
    """The VMs some host reports in ``postmigrate`` (a migration's source, maybe done) or
    as an unclaimed incoming QEMU (a migration's destination, maybe abandoned)."""
    return sorted(set(session.scalars(select(VMInstance.vm_name).where(
        (VMInstance.state == VMState.POSTMIGRATE.value) | (VMInstance.role == "incoming")))))


def has_active_job(session: Session, vm_name: str) -> bool:
    return session.scalars(select(MigrationRow.id).where(
        MigrationRow.vm_name == vm_name,
        MigrationRow.phase.not_in([p.value for p in TERMINAL]))).first() is not None


def record_vm_event(session: Session, vm_name: str, kind: str, detail: dict[str, Any],
                    now: datetime | None = None) -> VMEvent:
    """Append an event to the VM's log (kinds: defined, discovered, started, stopped, state,
    moved, destroyed, and whatever the migration engine adds)."""
    event = VMEvent(vm_name=vm_name, at=now or utcnow(), kind=kind, detail=detail)
    session.add(event)
    return event


def vm_events(session: Session, vm_name: str) -> list[VMEvent]:
    """The VM's events, oldest first (also those of a destroyed VM of that name)."""
    return list(session.scalars(select(VMEvent).where(VMEvent.vm_name == vm_name)
                                .order_by(VMEvent.id)))


# ---- views (the API's answers) ----
def host_state(host: Host, now: datetime, timeout: float) -> HostConnection:
    """``connected`` if its heartbeat is fresh at ``now``, else ``disconnected``."""
    return "connected" if host_connected(host, now, timeout) else "disconnected"


def host_view(host: Host, vms: Iterable[str], now: datetime, timeout: float) -> HostView:
    """The host as the API shows it; ``state`` is fresh (not only the last stored one)."""
    facts = host_facts_from_dict(host.name, host.facts or {})
    known = bool(host.facts)
    return HostView(
        name=host.name, url=host.url, state=host_state(host, now, timeout),
        migration_address=host.migration_address, maintenance=host.maintenance,
        maintenance_state=MaintenanceState(host.maintenance_state).value,
        maintenance_reason=host.maintenance_reason,
        migration_enabled=host.migration_enabled, last_heartbeat=host.last_heartbeat,
        created_at=host.created_at,
        cpus=facts.cpu.logical_cpus if known else None,
        accel=facts.cpu.accel if known else None,
        memory_total_mib=facts.memory.total_mib if known else None,
        memory_available_mib=facts.memory.available_mib if known else None,
        vms=sorted(vms))


def host_detail(host: Host, vms: Iterable[str], now: datetime, timeout: float) -> HostDetail:
    """The host's view with the facts of its last heartbeat."""
    view = host_view(host, vms, now, timeout)
    facts = host_facts_from_dict(host.name, host.facts) if host.facts else None
    return HostDetail(**dict(view), facts=facts)


def vm_view(vm: VM) -> VMView:
    return VMView(name=vm.name, uuid=vm.uuid, host=vm.host, state=vm_state(vm), pid=vm.pid,
                  updated_at=vm.updated_at, spec=VMSpecBody.model_validate(vm.spec, strict=False))


def event_view(event: VMEvent) -> VMEventView:
    return VMEventView(id=event.id, vm=event.vm_name, at=event.at, kind=event.kind,
                       detail=event.detail)
