"""Migration routes of the controller API (bodies and answers: ``segue.api.migration``,
``segue.api.checks``).

``POST /vms/{name}/migrations`` (``MigrationRequestBody``; 202: the job, already past every
pre-migration check, in phase ``check`` or, beyond the per-host limits, ``queued``; 409
``MIGRATION_CHECKS_FAILED`` with ``details.results`` otherwise),
``POST /vms/{name}/migrations/check`` (``CheckRequestBody``: ``CheckAnswer``),
``GET /vms/{name}/where`` (``WhereAnswer``: every other host, the worst severity per check),
``GET /migrations``, ``GET /migrations/{id}``, ``GET /migrations/{id}/samples``,
``POST /migrations/{id}/cancel`` (a queued job ends ``cancelled`` at once),
``POST /migrations/{id}/postcopy`` (switch a copying job to post-copy now; 409
``MIGRATION_POSTCOPY_NOT_POSSIBLE`` when it does not copy or post-copy is not allowed).
Every job carries ``queue_position`` (1: next to start; None when not queued).
Permissions (``segue.controller.authz``): ``vm migrate`` to ask for a migration,
``migration read`` to check and list, ``migration cancel``, ``migration migrate`` for
post-copy, ``vm read`` for ``where``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from segue.api.checks import CheckAnswer, WhereAnswer
from segue.api.migration import (
    CheckRequestBody,
    MigrationJobView,
    MigrationOptionsBody,
    MigrationRequestBody,
    ProgressSample,
)
from segue.controller.authz import requires
from segue.controller.migrations import MigrationService

router = APIRouter()


def _service(request: Request) -> MigrationService:
    service: MigrationService = request.app.state.migrations
    return service


@router.post("/vms/{name}/migrations", status_code=202, response_model=MigrationJobView,
             dependencies=[requires("vm", "migrate")])
async def migrate_vm(request: Request, name: str, body: MigrationRequestBody
                     ) -> MigrationJobView:
    options = MigrationOptionsBody.model_validate(body.model_dump(exclude={"to"}))
    return await _service(request).request(name, body.to, options)


@router.post("/vms/{name}/migrations/check", response_model=CheckAnswer,
             dependencies=[requires("migration", "read")])
async def check_migration(request: Request, name: str, body: CheckRequestBody) -> CheckAnswer:
    """Every pre-migration check for one destination; nothing starts."""
    return await _service(request).check(name, body.to, body.tls)


@router.get("/vms/{name}/where", response_model=WhereAnswer,
            dependencies=[requires("vm", "read")])
async def where_vm_can_go(request: Request, name: str) -> WhereAnswer:
    """Every other host with its check results: where the VM can go."""
    return await _service(request).where(name)


@router.get("/migrations", response_model=list[MigrationJobView],
            dependencies=[requires("migration", "read")])
async def list_migrations(request: Request, vm: str | None = None) -> list[MigrationJobView]:
    return await _service(request).list_all(vm)


@router.get("/migrations/{migration_id}", response_model=MigrationJobView,
            dependencies=[requires("migration", "read")])
async def show_migration(request: Request, migration_id: str) -> MigrationJobView:
    return await _service(request).get(migration_id)


@router.get("/migrations/{migration_id}/samples", response_model=list[ProgressSample],
            dependencies=[requires("migration", "read")])
async def migration_samples(request: Request, migration_id: str) -> list[ProgressSample]:
    return await _service(request).samples(migration_id)


# These two reach running jobs and may start queued ones: they run on the event loop (async);
# their database work runs in the database's thread like every route's.
@router.post("/migrations/{migration_id}/postcopy", response_model=MigrationJobView,
             dependencies=[requires("migration", "migrate")])
async def start_postcopy(request: Request, migration_id: str) -> MigrationJobView:
    return await _service(request).request_postcopy(migration_id)


@router.post("/migrations/{migration_id}/cancel", response_model=MigrationJobView,
             dependencies=[requires("migration", "cancel")])
async def cancel_migration(request: Request, migration_id: str) -> MigrationJobView:
    return await _service(request).cancel(migration_id)
