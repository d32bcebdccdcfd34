"""HTTP routes of the agent side of a live migration (``segue.agent.migration``).

Destination: ``POST /migrations/incoming``, ``POST /vms/{name}/incoming/claim``,
``POST /vms/{name}/incoming/abort``. Source: ``POST /vms/{name}/migrate``,
``POST /vms/{name}/migration/cancel``, ``POST /vms/{name}/release``,
``POST /vms/{name}/resume``, ``POST /vms/{name}/dirty-rate``,
``POST /vms/{name}/migration/parameters``, ``POST /vms/{name}/migration/postcopy``,
``POST /vms/{name}/migration/resume``; destination: ``POST /migrations/incoming/{name}/recover``.
Either: ``GET /vms/{name}/migration``, ``POST /vms/{name}/migration/pause``. Bodies and answers are
those of ``segue.agent.client.AsyncAgentClient``; errors map to HTTP in ``segue.httpapi``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from segue.agent.migration import Migrations
from segue.domain.vm import VMSpec

router = APIRouter()


class IncomingRequest(BaseModel):
    spec: VMSpec
    migration_id: str
    capabilities: dict[str, bool] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)


class MigrateRequest(BaseModel):
    uri: str
    capabilities: dict[str, bool] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)


class ParametersRequest(BaseModel):
    parameters: dict[str, Any]


class ResumeRequest(BaseModel):
    uri: str


def _migrations(request: Request) -> Migrations:
    return Migrations(request.app.state.manager)


@router.post("/migrations/incoming", status_code=201)
async def prepare_incoming(request: Request, body: IncomingRequest) -> dict[str, Any]:
    return await _migrations(request).prepare_incoming(
        body.spec, body.migration_id, body.capabilities, body.parameters)


@router.post("/vms/{name}/migrate")
async def start_migration(request: Request, name: str, body: MigrateRequest) -> dict[str, Any]:
    return await _migrations(request).start(name, body.uri, body.capabilities, body.parameters)


@router.get("/vms/{name}/migration")
async def migration_status(request: Request, name: str) -> dict[str, Any]:
    return await _migrations(request).status(name)


@router.post("/vms/{name}/migration/cancel")
async def cancel_migration(request: Request, name: str) -> dict[str, Any]:
    return await _migrations(request).cancel(name)


@router.post("/vms/{name}/incoming/abort", status_code=204)
async def abort_incoming(request: Request, name: str) -> None:
    await _migrations(request).abort_incoming(name)


@router.post("/vms/{name}/incoming/claim")
async def claim(request: Request, name: str) -> dict[str, Any]:
    return await _migrations(request).claim(name)


@router.post("/vms/{name}/release", status_code=204)
async def release(request: Request, name: str) -> None:
    await _migrations(request).release(name)


@router.post("/vms/{name}/resume")
async def resume(request: Request, name: str) -> dict[str, Any]:
    return await _migrations(request).resume(name)


@router.post("/vms/{name}/dirty-rate")
async def dirty_rate(request: Request, name: str,
                     calc_time_ms: int = Query(300, ge=50, le=60_000)) -> dict[str, Any]:
    return await _migrations(request).dirty_rate(name, calc_time_ms)


@router.post("/vms/{name}/migration/parameters")
async def set_parameters(request: Request, name: str, body: ParametersRequest
                         ) -> dict[str, Any]:
    return await _migrations(request).set_parameters(name, body.parameters)


@router.post("/vms/{name}/migration/postcopy")
async def start_postcopy(request: Request, name: str) -> dict[str, Any]:
    return await _migrations(request).start_postcopy(name)


@router.post("/vms/{name}/migration/pause")
async def pause_migration(request: Request, name: str) -> dict[str, Any]:
    return await _migrations(request).pause(name)


@router.post("/migrations/incoming/{name}/recover")
async def recover_incoming(request: Request, name: str) -> dict[str, Any]:
    return await _migrations(request).recover_incoming(name)


@router.post("/vms/{name}/migration/resume")
async def resume_migration(request: Request, name: str, body: ResumeRequest
                           ) -> dict[str, Any]:
    return await _migrations(request).resume_migration(name, body.uri)
