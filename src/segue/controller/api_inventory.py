"""The controller's inventory API: hosts (heartbeats, listing, migration switch) and VMs.

Routes: ``POST /hosts/heartbeat``, ``GET /hosts``, ``GET /hosts/{name}``,
``POST /hosts/{name}/enable-migration``, ``POST /hosts/{name}/disable-migration``,
``GET/POST /vms``, ``GET/DELETE /vms/{name}``, ``POST /vms/{name}/start``,
``POST /vms/{name}/stop``, ``GET /vms/{name}/events``. Bodies: ``segue.api.inventory``.

The routes parse and answer (on the event loop: the service runs its database work in the
database's thread); ``segue.controller.inventory_service.InventoryService`` does the work and
documents the errors. A name in a path that no host or VM could have (not ASCII, too long) is
refused with 400 ``REQUEST_INVALID`` like any other bad input.

Each route declares what it requires (``segue.controller.authz``: reading hosts and VMs,
``host maintenance`` for the migration switch, ``vm create/start/stop/delete``); a heartbeat
needs a host's certificate (or root) and speaks for that host only (403 ``CERT_WRONG_HOST``).
User-defined policies may refuse a create, start or stop (403 ``POLICY_DENIED``); a create
on a host that breaks a must placement rule is refused (409 ``RULE_VIOLATION``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

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
from segue.controller.agents import AgentPool
from segue.controller.authz import requires
from segue.controller.config import ControllerConfig
from segue.controller.inventory_service import InventoryService
from segue.controller.migrations import MigrationService
from segue.security.actors import Actor, require_self

router = APIRouter()
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # segue.api.base.Name
NamePath = Annotated[str, Path(min_length=1, max_length=64, pattern=NAME_PATTERN)]
NameQuery = Annotated[str | None, Query(min_length=1, max_length=64, pattern=NAME_PATTERN)]
StopTimeout = Annotated[float, Query(gt=0, le=3600, allow_inf_nan=False,
                                     description="Seconds to wait for an ACPI shutdown.")]


def service(request: Request) -> InventoryService:
    """The inventory service over the app's database and agents."""
    config: ControllerConfig = request.app.state.config
    pool: AgentPool = request.app.state.agents
    return InventoryService(request.app.state.db, pool.typed, config.heartbeat_timeout)


# ---- hosts ----
@router.post("/hosts/heartbeat", response_model=HeartbeatAnswer)
async def heartbeat(
    request: Request, beat: Heartbeat,
    actor: Annotated[Actor, requires("host", "heartbeat", audited=False)],
) -> HeartbeatAnswer:
    """A host's heartbeat; a host's certificate speaks for that host only."""
    require_self(actor, beat.name)
    return await service(request).heartbeat(beat)


@router.get("/hosts", response_model=list[HostView],
            dependencies=[requires("host", "read")])
async def list_hosts(request: Request) -> list[HostView]:
    return await service(request).list_hosts()


@router.get("/hosts/{name}", response_model=HostDetail,
            dependencies=[requires("host", "read")])
async def show_host(request: Request, name: NamePath) -> HostDetail:
    """The host's summary and its full facts."""
    return await service(request).show_host(name)


@router.post("/hosts/{name}/enable-migration", response_model=HostView,
             dependencies=[requires("host", "maintenance")])
async def enable_migration(request: Request, name: NamePath) -> HostView:
    return await service(request).set_migration_enabled(name, True)


@router.post("/hosts/{name}/disable-migration", response_model=HostView,
             dependencies=[requires("host", "maintenance")])
async def disable_migration(request: Request, name: NamePath) -> HostView:
    return await service(request).set_migration_enabled(name, False)


# ---- VMs ----
@router.get("/vms", response_model=list[VMView],
            dependencies=[requires("vm", "read")])
async def list_vms(request: Request, host: NameQuery = None) -> list[VMView]:
    return await service(request).list_vms(host)


@router.post("/vms", status_code=201, response_model=VMDetail)
async def create_vm(request: Request, body: CreateVMBody, actor: Annotated[
        Actor, requires("vm", "create", target="vm:spec.name")]) -> VMDetail:
    """Define (and by default start) a VM on the given host; refused if the name is taken.

    A ``cpu_model`` of ``baseline`` or ``qemu64`` becomes the cluster's CPU baseline. A host
    that breaks a must placement rule is refused (409 ``RULE_VIOLATION``)."""
    migrations: MigrationService = request.app.state.migrations
    await migrations.placement.require_rules(body.spec.name, body.host, body.tags)
    return await service(request).create_vm(body, actor)


@router.get("/vms/{name}", response_model=VMDetail,
            dependencies=[requires("vm", "read")])
async def show_vm(request: Request, name: NamePath) -> VMDetail:
    """The inventory's record plus the agent's live view (``live`` None, ``live_error`` set,
    when the agent cannot be asked)."""
    return await service(request).show_vm(name)


@router.post("/vms/{name}/start", response_model=VMDetail)
async def start_vm(request: Request, name: NamePath,
                   actor: Annotated[Actor, requires("vm", "start")]) -> VMDetail:
    return await service(request).start_vm(name, actor)


@router.post("/vms/{name}/stop", response_model=VMDetail)
async def stop_vm(request: Request, name: NamePath,
                  actor: Annotated[Actor, requires("vm", "stop")], force: bool = False,
                  timeout: StopTimeout = 30.0) -> VMDetail:
    """ACPI power-off (hard after ``timeout`` s, or at once with ``force``)."""
    return await service(request).stop_vm(name, force=force, timeout=timeout, actor=actor)


@router.delete("/vms/{name}", status_code=204,
               dependencies=[requires("vm", "delete")])
async def destroy_vm(request: Request, name: NamePath) -> None:
    """Power off and undefine on the agent, then forget the VM (its events stay)."""
    await service(request).destroy_vm(name)


@router.get("/vms/{name}/events", response_model=list[VMEventView],
            dependencies=[requires("vm", "read")])
async def vm_events(request: Request, name: NamePath) -> list[VMEventView]:
    return await service(request).vm_events(name)
