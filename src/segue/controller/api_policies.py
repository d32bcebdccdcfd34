"""Tags and user-defined policies on the controller API (bodies: ``segue.api.policies``;
store: ``controller.policy_store``; decisions: ``segue.security.policies``).

``POST /vms/{name}/tags``, ``POST /hosts/{name}/tags`` (``TagsBody``: add and remove),
``PUT /users/{name}/tags`` (``SetTagsBody``: replace), ``GET /policies``,
``PUT /policies`` (``PolicySetBody``: the whole set, checked first: 400 ``POLICY_INVALID``
naming the entry and field, and nothing changes).

Tags and policies decide who may do what, so changing them is an admin's
(``vm tag``, ``host tag``, ``user update``, ``policy update``); reading the policies is
anyone's who may read the inventory (``policy read``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from segue.api.policies import PolicySetBody, PolicySetView, SetTagsBody, TagsBody, TagsView
from segue.controller import policy_store
from segue.controller.authz import requires
from segue.controller.db import Database
from segue.controller.models import utcnow
from segue.security.actors import Actor
from segue.security.policy_file import check_entries

router = APIRouter()
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # segue.api.base.Name
NamePath = Annotated[str, Path(min_length=1, max_length=64, pattern=NAME_PATTERN)]


def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


@router.post("/vms/{name}/tags", response_model=TagsView, dependencies=[requires("vm", "tag")])
async def tag_vm(request: Request, name: NamePath, body: TagsBody) -> TagsView:
    return await _db(request).run(policy_store.change_tags, policy_store.VM, name, body.add,
                                  body.remove)


@router.post("/hosts/{name}/tags", response_model=TagsView,
             dependencies=[requires("host", "tag")])
async def tag_host(request: Request, name: NamePath, body: TagsBody) -> TagsView:
    return await _db(request).run(policy_store.change_tags, policy_store.HOST, name,
                                  body.add, body.remove)


@router.put("/users/{name}/tags", response_model=TagsView,
            dependencies=[requires("user", "update")])
async def set_user_tags(request: Request, name: NamePath, body: SetTagsBody) -> TagsView:
    return await _db(request).run(policy_store.set_tags, policy_store.USER, name, body.tags)


@router.get("/policies", response_model=PolicySetView,
            dependencies=[requires("policy", "read")])
async def list_policies(request: Request) -> PolicySetView:
    return await _db(request).run(policy_store.policy_set)


@router.put("/policies", response_model=PolicySetView)
async def apply_policies(request: Request, body: PolicySetBody,
                         actor: Annotated[Actor, requires("policy", "update")]
                         ) -> PolicySetView:
    """Replace every policy at once; a set with any bad entry is refused whole."""
    policies = check_entries(body.policies)
    return await _db(request).run(policy_store.replace_policies, policies, utcnow(),
                                  actor.label)
