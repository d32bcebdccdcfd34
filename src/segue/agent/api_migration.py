"""HTTP routes of the agent side of a live migration (``segue.agent.incoming`` for the
destination, ``segue.agent.outgoing`` for the source).

Destination: ``POST /migrations/incoming``, ``POST /vms/{name}/incoming/claim``,
``POST /vms/{name}/incoming/abort``, ``POST /migrations/incoming/{name}/recover``.
Source: ``POST /vms/{name}/migrate``, ``POST /vms/{name}/migration/cancel``,
``POST /vms/{name}/release``, ``POST /vms/{name}/resume``, ``POST /vms/{name}/dirty-rate``,
``POST /vms/{name}/migration/parameters``, ``POST /vms/{name}/migration/postcopy``,
``POST /vms/{name}/migration/resume``. Either: ``GET /vms/{name}/migration``,
``POST /vms/{name}/migration/pause``. Re-homing a stopped VM (``segue.agent.rehome``):
``POST /vms/{name}/adopt`` on the new host, then ``POST /vms/{name}/release-definition``
on the old one. Bodies and answers are the wire models of
``segue.api.agent`` (what ``segue.clients.agent.AgentClient`` sends and decodes); errors map
to HTTP in ``segue.httpapi``. The source's ``migrate``, ``migration/cancel`` and ``resume``
take an optional ``generation`` query, the fencing token (``segue.agent.guards``); the
destination's calls take none (``segue.agent.incoming`` says why).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from segue.agent.api_params import CalcTimeMs, LeaseGeneration, VMName
from segue.agent.incoming import Incoming
from segue.agent.outgoing import Outgoing
from segue.agent.rehome import Rehoming
from segue.api.agent import (
    AdoptRequest,
    DirtyRateAnswer,
    IncomingAnswer,
    IncomingRequest,
    MigrateRequest,
    MigrationView,
    ParametersAnswer,
    ParametersRequest,
    RecoverAnswer,
    ResumeRequest,
)
from segue.api.vm import VMInfo

router = APIRouter()


def _incoming(request: Request) -> Incoming:
    incoming: Incoming = request.app.state.incoming
    return incoming


def _outgoing(request: Request) -> Outgoing:
    outgoing: Outgoing = request.app.state.outgoing
    return outgoing


# ---- destination ----
@router.post("/migrations/incoming", status_code=201, response_model=IncomingAnswer)
async def prepare_incoming(request: Request, body: IncomingRequest) -> IncomingAnswer:
    return await _incoming(request).prepare(body.spec.to_domain(), body.migration_id,
                                            body.capabilities, body.parameters,
                                            body.tls_peer)


@router.post("/vms/{name}/incoming/claim", response_model=VMInfo)
async def claim(request: Request, name: VMName) -> VMInfo:
    return await _incoming(request).claim(name)


@router.post("/vms/{name}/incoming/abort", status_code=204, response_model=None)
async def abort_incoming(request: Request, name: VMName) -> None:
    await _incoming(request).abort(name)


@router.post("/migrations/incoming/{name}/recover", response_model=RecoverAnswer)
async def recover_incoming(request: Request, name: VMName) -> RecoverAnswer:
    return await _incoming(request).recover(name)


# ---- re-homing a stopped VM ----
def _rehoming(request: Request) -> Rehoming:
    rehoming: Rehoming = request.app.state.rehoming
    return rehoming


@router.post("/vms/{name}/adopt", response_model=VMInfo)
async def adopt(request: Request, name: VMName, body: AdoptRequest) -> VMInfo:
    """Take up the stopped VM's definition from ``from_host`` (stopped here)."""
    return await _rehoming(request).adopt(name, body.datastore, body.from_host)


@router.post("/vms/{name}/release-definition", status_code=204, response_model=None)
async def release_definition(request: Request, name: VMName) -> None:
    """Forget this host's copy of a stopped VM another host adopted."""
    await _rehoming(request).release_definition(name)


# ---- source ----
@router.post("/vms/{name}/migrate", response_model=MigrationView)
async def start_migration(request: Request, name: VMName, body: MigrateRequest,
                          generation: LeaseGeneration = None) -> MigrationView:
    return await _outgoing(request).migrate(name, body.uri, body.capabilities, body.parameters,
                                            body.migration_id, body.destination,
                                            generation=generation, tls=body.tls)


@router.post("/vms/{name}/migration/cancel", response_model=MigrationView)
async def cancel_migration(request: Request, name: VMName,
                           generation: LeaseGeneration = None) -> MigrationView:
    return await _outgoing(request).cancel(name, generation=generation)


@router.post("/vms/{name}/release", status_code=204, response_model=None)
async def release(request: Request, name: VMName) -> None:
    await _outgoing(request).release(name)


@router.post("/vms/{name}/resume", response_model=VMInfo)
async def resume(request: Request, name: VMName, generation: LeaseGeneration = None
                 ) -> VMInfo:
    return await _outgoing(request).resume(name, generation=generation)


@router.post("/vms/{name}/dirty-rate", response_model=DirtyRateAnswer)
async def dirty_rate(request: Request, name: VMName, calc_time_ms: CalcTimeMs = 300
                     ) -> DirtyRateAnswer:
    return await _outgoing(request).dirty_rate(name, calc_time_ms)


@router.post("/vms/{name}/migration/parameters", response_model=ParametersAnswer)
async def set_parameters(request: Request, name: VMName, body: ParametersRequest
                         ) -> ParametersAnswer:
    return await _outgoing(request).set_parameters(name, body.parameters)


@router.post("/vms/{name}/migration/postcopy", response_model=MigrationView)
async def start_postcopy(request: Request, name: VMName) -> MigrationView:
    return await _outgoing(request).start_postcopy(name)


@router.post("/vms/{name}/migration/resume", response_model=MigrationView)
async def resume_migration(request: Request, name: VMName, body: ResumeRequest
                           ) -> MigrationView:
    return await _outgoing(request).resume_migration(name, body.uri)


# ---- either side ----
@router.get("/vms/{name}/migration", response_model=MigrationView)
async def migration_status(request: Request, name: VMName) -> MigrationView:
    return await _outgoing(request).status(name)


@router.post("/vms/{name}/migration/pause", response_model=MigrationView)
async def pause_migration(request: Request, name: VMName) -> MigrationView:
    return await _outgoing(request).pause(name)
