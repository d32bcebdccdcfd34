"""Placement rules on the controller API (bodies: ``segue.api.rules``; store:
``controller.rule_store``; rules and their feasibility: ``segue.placement``).

``GET /rules`` (every rule, by name), ``POST /rules`` (``RuleBody``; 201 the rule; 400
``RULE_INVALID`` naming the field; 409 ``RULE_EXISTS`` or the conflict that makes the set
impossible, ``RULES_CONTRADICT``, ``RULE_HOST_TAG_UNKNOWN``, ... with ``details.conflict``;
nothing changes when refused), ``DELETE /rules/{name}`` (204; 404 ``RULE_NOT_FOUND``).

Rules decide where VMs may run, so creating and deleting them is an admin's
(``rule create``, ``rule delete``); reading them is a viewer's (``rule read``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from segue.api.rules import RuleBody, RuleView
from segue.controller import rule_store
from segue.controller.authz import requires
from segue.controller.db import Database
from segue.controller.models import utcnow
from segue.security.actors import Actor

router = APIRouter()
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # segue.api.base.Name
NamePath = Annotated[str, Path(min_length=1, max_length=64, pattern=NAME_PATTERN)]


def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


@router.get("/rules", response_model=list[RuleView], dependencies=[requires("rule", "read")])
async def list_rules(request: Request) -> list[RuleView]:
    return await _db(request).run(rule_store.list_rules)


@router.post("/rules", status_code=201, response_model=RuleView)
async def create_rule(request: Request, body: RuleBody,
                      actor: Annotated[Actor, requires("rule", "create", target="rule:name")]
                      ) -> RuleView:
    """Add a rule, refused (and nothing changed) if the set with it cannot be met."""
    return await _db(request).run(rule_store.create_rule, body, utcnow(), actor.label)


@router.delete("/rules/{name}", status_code=204, dependencies=[requires("rule", "delete")])
async def delete_rule(request: Request, name: NamePath) -> None:
    await _db(request).run(rule_store.delete_rule, name)
