"""The controller's inventory API: hosts (heartbeats, listing, migration switch) and VMs.

VM actions go to the VM's host agent first; the database changes only after the agent
succeeded, and every change is a VM event. Database sessions never stay open across a call
to an agent.

Routes: ``POST /hosts/heartbeat``, ``GET /hosts``, ``GET /hosts/{name}``,
``POST /hosts/{name}/enable-migration``, ``POST /hosts/{name}/disable-migration``,
``GET/POST /vms``, ``GET/DELETE /vms/{name}``, ``POST /vms/{name}/start``,
``POST /vms/{name}/stop``, ``GET /vms/{name}/events``.

Errors: those of ``segue.controller.inventory``, the agents' own (passed through with their
codes), ``Unavailable`` (``HOST_DISCONNECTED``) for an action on a silent host, ``Conflict``
(``HOST_BELOW_BASELINE``) for a heartbeat of a new host below the CPU baseline.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from segue.agent.client import AsyncAgentClient
from segue.controller import cluster, inventory
from segue.controller.agents import AgentPool
from segue.controller.config import ControllerConfig
from segue.controller.db import Database
from segue.controller.models import VM, Host, utcnow
from segue.domain.errors import NotFound, SegueError, Unavailable
from segue.domain.vm import VMSpec

router = APIRouter()


class Heartbeat(BaseModel):
    """What an agent reports every few seconds."""

    name: str
    url: str
    facts: dict[str, Any] = Field(default_factory=dict)
    vms: list[dict[str, Any]] = Field(default_factory=list)


class CreateVM(BaseModel):
    host: str
    spec: VMSpec
    start: bool = True


def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def _config(request: Request) -> ControllerConfig:
    config: ControllerConfig = request.app.state.config
    return config


def _agent_of(request: Request, host: Host) -> AsyncAgentClient:
    """The client of a host's agent; raises Unavailable (HOST_DISCONNECTED) if it is silent."""
    timeout = _config(request).heartbeat_timeout
    if not inventory.host_connected(host, utcnow(), timeout):
        raise Unavailable("HOST_DISCONNECTED",
                          f"host {host.name} has sent no heartbeat for over {timeout:g} s "
                          f"(last: {host.last_heartbeat})",
                          f"check the agent of {host.name} and its controller_url")
    pool: AgentPool = request.app.state.agents
    return pool.client(host.url)


# ---- hosts ----
@router.post("/hosts/heartbeat")
def heartbeat(request: Request, beat: Heartbeat) -> dict[str, Any]:
    """Store the heartbeat; a new host below the CPU baseline is refused (``cluster``)."""
    with _db(request).session() as s:
        cluster.admit_host(s, beat.name, beat.facts)
        host = inventory.record_heartbeat(s, beat.name, beat.url, beat.facts, beat.vms, utcnow())
        cluster.track_hosts(s, utcnow())
        return {"name": host.name, "state": host.state}


def _host_views(request: Request, hosts: list[Host], vms: Iterable[VM]) -> list[dict[str, Any]]:
    """The hosts' API views, each listing its VMs (from ``vms``)."""
    now, timeout = utcnow(), _config(request).heartbeat_timeout
    names: dict[str, list[str]] = {}
    for vm in vms:
        names.setdefault(vm.host, []).append(vm.name)
    return [inventory.host_view(h, names.get(h.name, []), now, timeout) for h in hosts]


@router.get("/hosts")
def list_hosts(request: Request) -> list[dict[str, Any]]:
    with _db(request).session() as s:
        return _host_views(request, inventory.list_hosts(s), inventory.list_vms(s))


@router.get("/hosts/{name}")
def show_host(request: Request, name: str) -> dict[str, Any]:
    """The host's summary and its full facts."""
    with _db(request).session() as s:
        host = inventory.get_host(s, name)
        view = _host_views(request, [host], inventory.list_vms(s, host=name))[0]
        return {**view, "facts": host.facts}


def _set_migration(request: Request, name: str, enabled: bool) -> dict[str, Any]:
    with _db(request).session() as s:
        host = inventory.get_host(s, name)
        inventory.set_migration_enabled(host, enabled)
        return _host_views(request, [host], inventory.list_vms(s, host=name))[0]


@router.post("/hosts/{name}/enable-migration")
def enable_migration(request: Request, name: str) -> dict[str, Any]:
    return _set_migration(request, name, True)


@router.post("/hosts/{name}/disable-migration")
def disable_migration(request: Request, name: str) -> dict[str, Any]:
    return _set_migration(request, name, False)


# ---- VMs ----
@router.get("/vms")
def list_vms(request: Request, host: str | None = None) -> list[dict[str, Any]]:
    with _db(request).session() as s:
        return [inventory.vm_view(vm) for vm in inventory.list_vms(s, host=host)]


@router.post("/vms", status_code=201)
async def create_vm(request: Request, body: CreateVM) -> dict[str, Any]:
    """Define (and by default start) a VM on the given host; refused if the name is taken.

    A ``cpu_model`` of ``baseline`` or ``qemu64`` becomes the cluster's CPU baseline."""
    with _db(request).session() as s:
        inventory.refuse_existing_vm(s, body.spec.name)
        host = inventory.get_host(s, body.host)
        agent = _agent_of(request, host)
        spec = body.spec.with_changes(
            cpu_model=cluster.resolve_cpu_model(s, body.spec.cpu_model))
    info = await agent.define_vm(spec.to_dict(), start=body.start)
    with _db(request).session() as s:
        vm = inventory.add_vm(s, info, inventory.get_host(s, body.host))
        if body.start:
            inventory.record_vm_event(s, vm.name, "started", {"pid": info.get("pid")})
        return {**inventory.vm_view(vm), "live": info}


def _agent_of_vm(request: Request, name: str) -> AsyncAgentClient:
    """The client of the agent of the VM's host (raises as ``get_vm`` and ``_agent_of``)."""
    with _db(request).session() as s:
        vm = inventory.get_vm(s, name)
        return _agent_of(request, inventory.get_host(s, vm.host))


def _store_live(request: Request, name: str, info: dict[str, Any], kind: str,
                detail: dict[str, Any]) -> dict[str, Any]:
    """Record an action's event and the state the agent answered; the VM's view + live info."""
    with _db(request).session() as s:
        vm = inventory.get_vm(s, name)
        inventory.record_vm_event(s, name, kind, {"host": vm.host, **detail})
        inventory.update_vm_state(s, vm, str(info["state"]), info.get("pid"))
        return {**inventory.vm_view(vm), "live": info}


@router.get("/vms/{name}")
async def show_vm(request: Request, name: str) -> dict[str, Any]:
    """The inventory's record plus the agent's live view (``live`` None, ``live_error`` set,
    when the agent cannot be asked)."""
    with _db(request).session() as s:
        vm = inventory.get_vm(s, name)
        view = inventory.vm_view(vm)
        host = inventory.get_host(s, vm.host)
    try:
        live: dict[str, Any] | None = await _agent_of(request, host).get_vm(name)
        error = None
    except SegueError as err:
        live, error = None, err.to_dict()
    return {**view, "live": live, "live_error": error}


@router.post("/vms/{name}/start")
async def start_vm(request: Request, name: str) -> dict[str, Any]:
    agent = _agent_of_vm(request, name)
    info = await agent.start_vm(name)
    return _store_live(request, name, info, "started", {"pid": info.get("pid")})


@router.post("/vms/{name}/stop")
async def stop_vm(request: Request, name: str, force: bool = False,
                  timeout: float = 30.0) -> dict[str, Any]:
    """ACPI power-off (hard after ``timeout`` s, or at once with ``force``)."""
    agent = _agent_of_vm(request, name)
    info = await agent.stop_vm(name, timeout=timeout, force=force)
    return _store_live(request, name, info, "stopped",
                       {"force": force, "last_exit": info.get("last_exit")})


@router.delete("/vms/{name}", status_code=204)
async def destroy_vm(request: Request, name: str) -> None:
    """Power off and undefine on the agent, then forget the VM (its events stay)."""
    agent = _agent_of_vm(request, name)
    try:
        await agent.destroy_vm(name)
    except NotFound as err:
        if err.code != "VM_NOT_FOUND":
            raise
        # the agent no longer has it: forgetting it is all that is left to do
    with _db(request).session() as s:
        inventory.remove_vm(s, name)


@router.get("/vms/{name}/events")
def vm_events(request: Request, name: str) -> list[dict[str, Any]]:
    with _db(request).session() as s:
        events = inventory.vm_events(s, name)
        if not events:
            inventory.get_vm(s, name)
        return [inventory.event_view(e) for e in events]
