"""HTTP routes the controller's pre-migration checks ask a host agent.

``GET /vms/{name}/cpu`` (``segue.agent.cpu``): the CPU features the running VM's QEMU exposes.
``POST /migration-network/listen`` and ``POST /migration-network/probe``
(``segue.agent.migpath``): a one-shot listener on this host's migration address, and a TCP
connect to a peer's listener from this host's migration address. Bodies and answers are those
of ``segue.agent.client.AsyncAgentClient``; errors map to HTTP in ``segue.httpapi``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from segue.agent.cpu import vm_cpu
from segue.agent.migpath import ProbeListeners, probe_path
from segue.agent.migration import migration_address
from segue.agent.vms import VMManager

router = APIRouter()


class ProbeRequest(BaseModel):
    address: str
    port: int = Field(ge=1, le=65535)


def _manager(request: Request) -> VMManager:
    manager: VMManager = request.app.state.manager
    return manager


@router.get("/vms/{name}/cpu")
async def cpu_of_vm(request: Request, name: str) -> dict[str, Any]:
    return await vm_cpu(_manager(request), name)


@router.post("/migration-network/listen", status_code=201)
async def open_listener(request: Request) -> dict[str, Any]:
    address = await migration_address(_manager(request).config)
    listeners: ProbeListeners = request.app.state.probe_listeners
    return await listeners.open(address)


@router.post("/migration-network/probe")
async def probe(request: Request, body: ProbeRequest) -> dict[str, Any]:
    source = await migration_address(_manager(request).config)
    return await probe_path(source, body.address, body.port)
