"""The inventory service: what the inventory routes do (``segue.controller.api_inventory``).

It orchestrates the hosts' agents and the inventory's store (``segue.controller.inventory``):
a VM action goes to the VM's host agent first, and the database changes only after the agent
succeeded; every change is a VM event. Database work runs in the database's thread
(``Database.run``), one transaction at a time that never spans a call to an agent. The routes
only parse and answer.

Errors: those of ``segue.controller.inventory`` and ``segue.controller.cluster``; the
agents' own (passed through with their codes); ``Unavailable`` (``HOST_DISCONNECTED``) for an
action on a host whose heartbeats stopped; ``InvalidRequest`` (``VM_SPEC_INVALID``, ``field``
naming the spec's field) for a spec no host could run, refused before any agent is asked;
``Conflict`` (``HOST_BELOW_BASELINE``) for the heartbeat of a new host below the CPU baseline,
(``HOST_IN_MAINTENANCE``) for creating or starting a VM on a host in either maintenance state;
``PolicyDenied`` (``POLICY_DENIED``, 403) when a user-defined policy refuses a create, start
or stop (``segue.controller.policy_gate``). Views carry the objects' tags.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from segue.api.base import error_detail
from segue.api.inventory import (
    CreateVMBody,
    Heartbeat,
    HeartbeatAnswer,
    HostDetail,
    HostView,
    VMDetail,
    VMEventView,
    VMView,
)
from segue.api.vm import VMInfo, VMSpecBody
from segue.controller import cluster, inventory, policy_store, reconcile
from segue.controller.db import Database
from segue.controller.models import VM, Host, utcnow
from segue.controller.policy_gate import PolicyGate
from segue.domain.errors import InvalidRequest, NotFound, SegueError, Unavailable
from segue.domain.vm import validate_vm_spec
from segue.security.actors import Actor


class InventoryAgent(Protocol):
    """What the inventory asks a host agent (``segue.clients.agent.AgentClient`` does it)."""

    async def get_vm(self, name: str) -> VMInfo: ...
    async def define_vm(self, spec: VMSpecBody, start: bool = False) -> VMInfo: ...
    async def start_vm(self, name: str, generation: int | None = None) -> VMInfo: ...
    async def stop_vm(self, name: str, timeout: float = 30.0, force: bool = False,
                      generation: int | None = None) -> VMInfo: ...
    async def destroy_vm(self, name: str) -> None: ...
    async def release(self, name: str) -> None: ...
    async def abort_incoming(self, name: str) -> None: ...


AgentFor = Callable[[str, str], InventoryAgent]  # the agent at a URL, of a host


def checked_spec(spec: VMSpecBody) -> None:
    """Raise ``validate_vm_spec``'s InvalidRequest with its field as the request's
    (``disks[0].path`` -> ``spec.disks.0.path``)."""
    try:
        validate_vm_spec(spec.to_domain())
    except InvalidRequest as err:
        field = re.sub(r"\[(\d+)\]", r".\1", str(err.details.get("field", "")))
        raise InvalidRequest(err.code, err.message, err.hint,
                             **{**err.details, "field": f"spec.{field}" if field else "spec"}
                             ) from err


@dataclass(frozen=True)
class HostAgent:
    """A host's agent as the inventory knows it: read in a transaction, used after it."""

    name: str
    url: str
    connected: bool
    last_heartbeat: datetime | None

    def require_connected(self, timeout: float) -> None:
        """Raise Unavailable (HOST_DISCONNECTED) if the host's heartbeats stopped."""
        if not self.connected:
            raise Unavailable("HOST_DISCONNECTED",
                              f"host {self.name} has sent no heartbeat for over {timeout:g} s "
                              f"(last: {self.last_heartbeat})",
                              f"check the agent of {self.name} and its controller_url")


class InventoryService:
    """Hosts and VMs of the cluster: heartbeats in, views out, VM actions through agents.
    Every method is awaited; its database work is one ``Database.run`` transaction (the
    private methods taking a session run in the database's thread and return no row)."""

    def __init__(self, db: Database, agents: AgentFor, heartbeat_timeout: float,
                 now: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.agents = agents
        self.heartbeat_timeout = heartbeat_timeout
        self.now = now
        self.policies = PolicyGate(db, now)

    # ---- hosts ----
    async def heartbeat(self, beat: Heartbeat) -> HeartbeatAnswer:
        """Store the heartbeat; a new host below the CPU baseline is refused (``cluster``)."""
        return await self.db.run(self._heartbeat, beat)

    def _heartbeat(self, s: Session, beat: Heartbeat) -> HeartbeatAnswer:
        facts = beat.facts.to_domain()
        cluster.admit_host(s, beat.name, facts)
        host = inventory.record_heartbeat(s, beat.name, beat.url, facts, beat.vms, self.now())
        cluster.track_hosts(s, self.now())
        return HeartbeatAnswer(name=host.name,
                               state=inventory.host_state(host, self.now(),
                                                          self.heartbeat_timeout))

    def _host_views(self, s: Session, hosts: list[Host], vms: Iterable[VM]) -> list[HostView]:
        """The hosts' views, each listing its VMs (from ``vms``) and its tags."""
        names: dict[str, list[str]] = {}
        for vm in vms:
            names.setdefault(vm.host, []).append(vm.name)
        tags = policy_store.tags_of(s, policy_store.HOST, [h.name for h in hosts])
        return [inventory.host_view(h, names.get(h.name, []), self.now(),
                                    self.heartbeat_timeout).model_copy(
                                        update={"tags": tags.get(h.name, [])}) for h in hosts]

    async def list_hosts(self) -> list[HostView]:
        return await self.db.run(self._list_hosts)

    def _list_hosts(self, s: Session) -> list[HostView]:
        return self._host_views(s, inventory.list_hosts(s), inventory.list_vms(s))

    async def show_host(self, name: str) -> HostDetail:
        """The host's view and its last facts; raises NotFound (HOST_NOT_FOUND)."""
        return await self.db.run(self._show_host, name)

    def _show_host(self, s: Session, name: str) -> HostDetail:
        host = inventory.get_host(s, name)
        vms = [vm.name for vm in inventory.list_vms(s, host=name)]
        tags = policy_store.tags_of(s, policy_store.HOST, [name]).get(name, [])
        return inventory.host_detail(host, vms, self.now(), self.heartbeat_timeout
                                     ).model_copy(update={"tags": tags})

    async def set_migration_enabled(self, name: str, enabled: bool) -> HostView:
        """Allow (or forbid) migrations to the host; raises NotFound (HOST_NOT_FOUND)."""
        return await self.db.run(self._set_migration_enabled, name, enabled)

    def _set_migration_enabled(self, s: Session, name: str, enabled: bool) -> HostView:
        host = inventory.get_host(s, name)
        inventory.set_migration_enabled(host, enabled)
        return self._host_views(s, [host], inventory.list_vms(s, host=name))[0]

    # ---- VMs ----
    async def list_vms(self, host: str | None = None) -> list[VMView]:
        return await self.db.run(_list_vms, host)

    async def vm_events(self, name: str) -> list[VMEventView]:
        """The VM's events, oldest first (also a destroyed VM's); NotFound (VM_NOT_FOUND)
        for a name that never had one."""
        return await self.db.run(_vm_events, name)

    def _host_agent(self, host: Host) -> HostAgent:
        return HostAgent(host.name, host.url,
                         inventory.host_connected(host, self.now(), self.heartbeat_timeout),
                         host.last_heartbeat)

    def _agent_of(self, host: HostAgent) -> InventoryAgent:
        """The host's agent; raises Unavailable (HOST_DISCONNECTED) if it is silent."""
        host.require_connected(self.heartbeat_timeout)
        return self.agents(host.url, host.name)

    async def _agent_of_vm(self, name: str) -> InventoryAgent:
        """The agent of the VM's host (raises as ``get_vm`` and ``_agent_of``)."""
        return self._agent_of(await self.db.run(self._vm_host, name))

    def _startable_host(self, s: Session, name: str) -> HostAgent:
        """The VM's host; refused (HOST_IN_MAINTENANCE) while it is in maintenance."""
        row = inventory.get_host(s, inventory.get_vm(s, name).host)
        inventory.refuse_maintenance(row, f"starting {name} there is")
        return self._host_agent(row)

    def _vm_host(self, s: Session, name: str) -> HostAgent:
        return self._host_agent(inventory.get_host(s, inventory.get_vm(s, name).host))

    async def create_vm(self, body: CreateVMBody, actor: Actor | None = None) -> VMDetail:
        """Define (and with ``body.start``, start) a VM on the host, with ``body.tags``;
        refused (VM_EXISTS) if the name is taken, (POLICY_DENIED) if a policy refuses it
        there. A ``cpu_model`` of ``baseline`` or ``qemu64`` becomes the cluster's CPU
        baseline."""
        host, cpu_model = await self.db.run(self._creation, body)
        await self.policies.require("create", body.spec.name, body.host, actor,
                                    vm_tags=body.tags)
        spec = body.spec.model_copy(update={"cpu_model": cpu_model})
        checked_spec(spec)
        info = await self._agent_of(host).define_vm(spec, start=body.start)
        try:
            return await self.db.run(self._record_created, body, info)
        except IntegrityError:
            # the host's heartbeat reported the new VM and added it in between: the same VM
            # (name, host and uuid), which add_vm now finds
            return await self.db.run(self._record_created, body, info)

    def _creation(self, s: Session, body: CreateVMBody) -> tuple[HostAgent, str]:
        """The host to define the VM on and its CPU model; refused as ``create_vm`` says."""
        inventory.refuse_existing_vm(s, body.spec.name)
        row = inventory.get_host(s, body.host)
        inventory.refuse_maintenance(row, f"creating {body.spec.name} there is")
        host = self._host_agent(row)
        host.require_connected(self.heartbeat_timeout)
        return host, cluster.resolve_cpu_model(s, body.spec.cpu_model)

    def _record_created(self, s: Session, body: CreateVMBody, info: VMInfo) -> VMDetail:
        vm = inventory.add_vm(s, info, inventory.get_host(s, body.host), self.now())
        # a heartbeat taken before the start may have added the VM first, stopped: the
        # agent's answer to this very call is the newer word on its state
        inventory.update_vm_state(s, vm, info.state, info.pid, self.now())
        if body.start:
            inventory.record_vm_event(s, vm.name, "started", {"pid": info.pid})
        if body.tags:
            policy_store.set_tags(s, policy_store.VM, vm.name, body.tags)
        return VMDetail(**dict(_vm_view(s, vm)), live=info)

    async def show_vm(self, name: str) -> VMDetail:
        """The inventory's record plus the agent's live view (``live`` None, ``live_error``
        set, when the agent cannot be asked); raises NotFound (VM_NOT_FOUND)."""
        view, host = await self.db.run(self._vm_and_host, name)
        try:
            live = await self._agent_of(host).get_vm(name)
        except SegueError as err:
            return VMDetail(**dict(view), live=None, live_error=error_detail(err))
        return VMDetail(**dict(view), live=live)

    def _vm_and_host(self, s: Session, name: str) -> tuple[VMView, HostAgent]:
        vm = inventory.get_vm(s, name)
        return _vm_view(s, vm), self._host_agent(inventory.get_host(s, vm.host))

    async def _store_live(self, name: str, info: VMInfo, kind: str,
                          detail: dict[str, str | int | bool | None]) -> VMDetail:
        """Record an action's event and the state the agent answered; the VM with ``live``."""
        return await self.db.run(_store_live, name, info, kind, detail)

    async def start_vm(self, name: str, actor: Actor | None = None) -> VMDetail:
        """Start the VM on its host, with the lease generation the inventory knows as the
        fencing token (``VM_NOT_OWNED`` if the VM was claimed elsewhere since); refused
        (POLICY_DENIED) if a policy refuses it."""
        generation = await self.db.run(_generation, name)
        host = await self.db.run(self._startable_host, name)
        await self.policies.require("start", name, host.name, actor)
        info = await self._agent_of(host).start_vm(name, generation=generation)
        return await self._store_live(name, info, "started", {"pid": info.pid})

    async def stop_vm(self, name: str, force: bool = False, timeout: float = 30.0,
                      actor: Actor | None = None) -> VMDetail:
        """ACPI power-off (hard after ``timeout`` s, or at once with ``force``), with the
        lease generation on record as the fencing token (``VM_NOT_OWNED`` if the host holds
        the VM at another: it was claimed since); refused (POLICY_DENIED) if a policy
        refuses it."""
        generation = await self.db.run(_generation, name)
        await self.policies.require("stop", name, None, actor)
        agent = await self._agent_of_vm(name)
        info = await agent.stop_vm(name, timeout=timeout, force=force, generation=generation)
        return await self._store_live(name, info, "stopped",
                                      {"force": force, "last_exit": info.last_exit})

    async def destroy_vm(self, name: str) -> None:
        """Power off and undefine on the agent, then forget the VM (its events stay)."""
        agent = await self._agent_of_vm(name)
        try:
            await agent.destroy_vm(name)
        except NotFound as err:
            if err.code != "VM_NOT_FOUND":
                raise
            # the agent no longer has it: forgetting it is all that is left to do
        await self.db.run(_forget_vm, name)

    # ---- reconciliation (``segue.controller.reconcile``) ----
    async def pending_releases(self) -> list[tuple[str, str, str, str]]:
        """(action, vm, host, agent url) of what reconciliation may finish now
        (``reconcile.decide``): ``release`` a migrated-away source (``postmigrate`` on a
        connected host that is not the owner, the owner running the VM), ``abort`` an
        unclaimed incoming QEMU that never took the VM over; never while a job of the VM
        is under way."""
        return await self.db.run(self._pending_releases)

    def _pending_releases(self, s: Session) -> list[tuple[str, str, str, str]]:
        out = []
        hosts = {h.name: h for h in inventory.list_hosts(s)
                 if inventory.host_connected(h, self.now(), self.heartbeat_timeout)}
        for vm_name in inventory.vms_left_behind(s):
            vm = inventory.find_vm(s, vm_name)
            if vm is None:
                continue
            seen = reconcile.instances_of(s, vm_name, set(hosts))
            decision = reconcile.decide(vm.host, vm.generation, seen, set(),
                                        inventory.has_active_job(s, vm_name))
            out += [("release", vm_name, host, hosts[host].url) for host in decision.release]
            out += [("abort", vm_name, host, hosts[host].url) for host in decision.abort]
        return out

    def agent(self, url: str, host: str) -> reconcile.Releaser:
        return self.agents(url, host)

    async def released(self, vm: str, host: str, action: str, error: str | None) -> None:
        """Record the outcome of a reconciliation's release or abort."""
        await self.db.run(_released, vm, host, action, error)


# ---- transactions that need nothing of the service (each in the database's thread) ----
def _vm_view(s: Session, vm: VM) -> VMView:
    tags = policy_store.tags_of(s, policy_store.VM, [vm.name]).get(vm.name, [])
    return inventory.vm_view(vm).model_copy(update={"tags": tags})


def _list_vms(s: Session, host: str | None) -> list[VMView]:
    tags = policy_store.tags_of(s, policy_store.VM)
    return [inventory.vm_view(vm).model_copy(update={"tags": tags.get(vm.name, [])})
            for vm in inventory.list_vms(s, host=host)]


def _forget_vm(s: Session, name: str) -> None:
    inventory.remove_vm(s, name)
    policy_store.drop_tags(s, policy_store.VM, name)


def _vm_events(s: Session, name: str) -> list[VMEventView]:
    events = inventory.vm_events(s, name)
    if not events:
        inventory.get_vm(s, name)
    return [inventory.event_view(e) for e in events]


def _generation(s: Session, name: str) -> int | None:
    return inventory.get_vm(s, name).generation


def _store_live(s: Session, name: str, info: VMInfo, kind: str,
                detail: dict[str, str | int | bool | None]) -> VMDetail:
    vm = inventory.get_vm(s, name)
    inventory.record_vm_event(s, name, kind, {"host": vm.host, **detail})
    inventory.update_vm_state(s, vm, info.state, info.pid)
    if info.generation is not None:
        vm.generation = info.generation
    return VMDetail(**dict(_vm_view(s, vm)), live=info)


def _released(s: Session, vm: str, host: str, action: str, error: str | None) -> None:
    inventory.record_vm_event(
        s, vm, "released-source" if action == "release" else "aborted-incoming",
        {"host": host, "error": error})
