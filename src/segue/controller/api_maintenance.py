"""Maintenance mode's routes: ``POST /hosts/{name}/maintenance/enter`` (body
``segue.api.maintenance.EnterMaintenanceBody``: the pre-flight, and unless ``dry_run`` the
host's new state and its evacuation), ``POST /hosts/{name}/maintenance/exit`` (back to
normal) and ``GET /hosts/{name}/maintenance`` (the state and the latest evacuation, each VM's
phase; ``host read``). The first two need ``host maintenance`` (operators);
``segue.controller.maintenance`` and ``segue.controller.evacuation`` do the work and
document the errors. ``exit`` with ``return`` requests the evacuated VMs back; the status
route follows that run (``kind`` return).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from segue.api.maintenance import (
    EnterMaintenanceBody,
    ExitMaintenanceBody,
    MaintenanceAnswer,
    MaintenanceStatus,
)
from segue.controller.api_inventory import NamePath
from segue.controller.authz import requires
from segue.controller.evacuation import Evacuations
from segue.controller.maintenance import MaintenanceService
from segue.controller.migrations import MigrationService

router = APIRouter()


def service(request: Request) -> MaintenanceService:
    migrations: MigrationService = request.app.state.migrations
    return MaintenanceService(migrations.prechecks, request.app.state.config.limits,
                              request.app.state.evacuations)


@router.get("/hosts/{name}/maintenance", response_model=MaintenanceStatus,
            dependencies=[requires("host", "read")])
async def maintenance_status(request: Request, name: NamePath) -> MaintenanceStatus:
    """The host's maintenance state and its latest evacuation: each VM's phase, job,
    destination or blocker, and the ETA."""
    evacuations: Evacuations = request.app.state.evacuations
    return await evacuations.status(name)


@router.post("/hosts/{name}/maintenance/enter", response_model=MaintenanceAnswer,
             dependencies=[requires("host", "maintenance")])
async def enter_maintenance(request: Request, name: NamePath,
                            body: EnterMaintenanceBody) -> MaintenanceAnswer:
    """The evacuation's pre-flight (each VM's destination or blocker, the predicted
    duration); unless ``dry_run``, the host enters maintenance."""
    return await service(request).enter(name, body.max_parallel, body.dry_run)


@router.post("/hosts/{name}/maintenance/exit", response_model=MaintenanceAnswer,
             dependencies=[requires("host", "maintenance")])
async def exit_maintenance(request: Request, name: NamePath,
                           body: ExitMaintenanceBody) -> MaintenanceAnswer:
    """The host back to normal; with ``return``, the VMs its latest evacuation moved are
    requested back (listed in the answer)."""
    return await service(request).exit(name, body.return_vms, body.max_parallel)
