"""Placement on the controller API (answers: ``segue.api.rules.PlacementAnswer``; the work:
``controller.placement_service``; the decision: ``segue.placement``).

``GET /vms/{name}/placement``: every host for moving a VM, scored (best first) or excluded
with its reasons; ``POST /placement`` (``PlacementBody``): the same for a VM not defined yet.
Both are queries: nothing changes. They read what ``where`` reads (``vm read``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from segue.api.rules import PlacementAnswer, PlacementBody
from segue.controller.authz import requires
from segue.controller.inventory_service import checked_spec
from segue.controller.migrations import MigrationService
from segue.controller.placement_service import PlacementService
from segue.security.actors import Actor

router = APIRouter()
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # segue.api.base.Name
NamePath = Annotated[str, Path(min_length=1, max_length=64, pattern=NAME_PATTERN)]


def placement_of(request: Request) -> PlacementService:
    service: MigrationService = request.app.state.migrations
    return service.placement


@router.get("/vms/{name}/placement", response_model=PlacementAnswer)
async def vm_placement(request: Request, name: NamePath,
                       actor: Annotated[Actor, requires("vm", "read")]) -> PlacementAnswer:
    """Every host for moving the VM: candidates best first, the others with why not."""
    return await placement_of(request).for_migration(name, actor)


@router.post("/placement", response_model=PlacementAnswer)
async def new_vm_placement(request: Request, body: PlacementBody,
                           actor: Annotated[Actor, requires("vm", "read", audited=False)]
                           ) -> PlacementAnswer:
    """Every host for a VM not defined yet (a query: nothing is stored)."""
    checked_spec(body.spec)
    return await placement_of(request).for_creation(body.spec.to_domain(), body.tags, actor)
