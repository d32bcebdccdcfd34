"""Migration routes of the controller API.

``POST /vms/{name}/migrations`` (202: the job, already past every pre-migration check, in
phase ``check`` or, beyond the per-host limits, ``queued``; 409 ``MIGRATION_CHECKS_FAILED``
with ``details.results`` otherwise),
``POST /vms/{name}/migrations/check`` (body ``{"to": HOST}``: ``{vm, source, destination, ok,
results}``), ``GET /vms/{name}/where`` (``{vm, source, checks, hosts: [{host, ok, checks:
{check: ok|warning|error}, results}]}``, every other host), ``GET /migrations``,
``GET /migrations/{id}``, ``GET /migrations/{id}/samples``,
``POST /migrations/{id}/cancel`` (a queued job ends ``cancelled`` at once),
``POST /migrations/{id}/postcopy`` (switch a copying job to post-copy now; 409
``MIGRATION_POSTCOPY_NOT_POSSIBLE`` when it does not copy or post-copy is not allowed). Every
job carries
``queue_position`` (1: next to start; None when not queued).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request

from segue.controller.migrations import MigrationOptions, MigrationService

router = APIRouter()


@dataclass(frozen=True)
class MigrationRequest:
    """Body of a migration request: the destination host and optional settings."""

    to: str
    downtime_limit_ms: int | None = None  # None: chosen from the measured link
    max_bandwidth_mibs: int | None = None
    deadline_s: float = 600.0
    stall_timeout_s: float = 15.0
    allow_postcopy: bool = True
    max_downtime_ms: int = 2000


@dataclass(frozen=True)
class CheckRequest:
    """Body of a check: the destination host."""

    to: str


def _service(request: Request) -> MigrationService:
    service: MigrationService = request.app.state.migrations
    return service


@router.post("/vms/{name}/migrations", status_code=202)
async def migrate_vm(request: Request, name: str, body: MigrationRequest) -> dict[str, Any]:
    options = MigrationOptions(downtime_limit_ms=body.downtime_limit_ms,
                               max_bandwidth_mibs=body.max_bandwidth_mibs,
                               deadline_s=body.deadline_s, stall_timeout_s=body.stall_timeout_s,
                               allow_postcopy=body.allow_postcopy,
                               max_downtime_ms=body.max_downtime_ms)
    return await _service(request).request(name, body.to, options)


@router.post("/vms/{name}/migrations/check")
async def check_migration(request: Request, name: str, body: CheckRequest) -> dict[str, Any]:
    """Every pre-migration check for one destination; nothing starts."""
    return await _service(request).prechecks.check(name, body.to)


@router.get("/vms/{name}/where")
async def where_vm_can_go(request: Request, name: str) -> dict[str, Any]:
    """Every other host with its check results: where the VM can go."""
    return await _service(request).prechecks.where(name)


@router.get("/migrations")
def list_migrations(request: Request, vm: str | None = None) -> list[dict[str, Any]]:
    return _service(request).list_all(vm)


@router.get("/migrations/{migration_id}")
def show_migration(request: Request, migration_id: str) -> dict[str, Any]:
    return _service(request).get(migration_id)


@router.get("/migrations/{migration_id}/samples")
def migration_samples(request: Request, migration_id: str) -> list[dict[str, Any]]:
    return _service(request).samples(migration_id)


@router.post("/migrations/{migration_id}/postcopy")
def start_postcopy(request: Request, migration_id: str) -> dict[str, Any]:
    return _service(request).request_postcopy(migration_id)


@router.post("/migrations/{migration_id}/cancel")
def cancel_migration(request: Request, migration_id: str) -> dict[str, Any]:
    return _service(request).cancel(migration_id)
