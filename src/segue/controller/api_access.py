"""Users, API tokens, the audit log and ``/whoami`` on the controller API (bodies:
``segue.api.access``; store: ``controller.users``, ``controller.audit``).

``GET /users``, ``POST /users`` (201), ``GET /users/{name}``, ``PATCH /users/{name}``
(role, disabled), ``DELETE /users/{name}`` (204; its tokens go too),
``GET /users/{name}/tokens``, ``POST /users/{name}/tokens`` (201, ``TokenCreated``: the
secret, shown once), ``GET /tokens`` (every user's), ``POST /tokens/{token_id}/revoke``,
``GET /audit?actor=&since=&until=&target=&limit=`` (newest first),
``GET /whoami`` (the caller and what it may do).

A token's ``role``, if given, must be its user's or a narrower one (400
``TOKEN_ROLE_EXCEEDS_USER``). Errors: ``USER_EXISTS`` (409), ``USER_NOT_FOUND``,
``TOKEN_NOT_FOUND`` (404), and the access errors of every route (401, 403).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from segue.api.access import (
    AuditEntryView,
    CreateTokenBody,
    CreateUserBody,
    TokenCreated,
    TokenView,
    UpdateUserBody,
    UserView,
    WhoAmI,
)
from segue.controller import audit, users
from segue.controller.audit import MAX_QUERY_LIMIT, AuditQuery
from segue.controller.authz import requires
from segue.controller.db import Database
from segue.controller.models import utcnow
from segue.security.actors import Actor
from segue.security.apitokens import new_api_token
from segue.security.roles import default_authorizer

router = APIRouter()
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # segue.api.base.Name
UserPath = Annotated[str, Path(min_length=1, max_length=64, pattern=NAME_PATTERN)]
TokenIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{12}$")]
ShortQuery = Annotated[str | None, Query(min_length=1, max_length=160)]


def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


# ---- users ----
@router.get("/users", response_model=list[UserView], dependencies=[requires("user", "read")])
async def list_users(request: Request) -> list[UserView]:
    return await _db(request).run(users.list_users, utcnow())


@router.post("/users", status_code=201, response_model=UserView,
             dependencies=[requires("user", "create", target="user:name")])
async def create_user(request: Request, body: CreateUserBody) -> UserView:
    return await _db(request).run(users.create_user, body.name, body.role, utcnow())


@router.get("/users/{name}", response_model=UserView, dependencies=[requires("user", "read")])
async def show_user(request: Request, name: UserPath) -> UserView:
    return await _db(request).run(users.get_user, name, utcnow())


@router.patch("/users/{name}", response_model=UserView,
              dependencies=[requires("user", "update")])
async def update_user(request: Request, name: UserPath, body: UpdateUserBody) -> UserView:
    """Change a user's role or disable (enable) it; its tokens follow at once."""
    return await _db(request).run(users.update_user, name, utcnow(), role=body.role,
                                  disabled=body.disabled)


@router.delete("/users/{name}", status_code=204, dependencies=[requires("user", "delete")])
async def delete_user(request: Request, name: UserPath) -> None:
    await _db(request).run(users.delete_user, name)


# ---- tokens ----
@router.get("/users/{name}/tokens", response_model=list[TokenView],
            dependencies=[requires("token", "read")])
async def list_user_tokens(request: Request, name: UserPath) -> list[TokenView]:
    return await _db(request).run(users.list_tokens, utcnow(), name)


@router.post("/users/{name}/tokens", status_code=201, response_model=TokenCreated,
             dependencies=[requires("token", "create")])
async def create_token(request: Request, name: UserPath, body: CreateTokenBody
                       ) -> TokenCreated:
    """A new token of the user; its secret is in this answer only."""
    db = _db(request)
    if body.role is not None:
        default_authorizer().require_within(body.role, await db.run(users.user_role, name))
    now = utcnow()
    ttl = timedelta(seconds=body.ttl_s) if body.ttl_s is not None else None
    token, record = new_api_token(name, now, ttl, role=body.role, note=body.note)
    view = await db.run(users.add_token, record, now)
    return TokenCreated(**view.model_dump(), token=token)


@router.get("/tokens", response_model=list[TokenView], dependencies=[requires("token", "read")])
async def list_tokens(request: Request) -> list[TokenView]:
    return await _db(request).run(users.list_tokens, utcnow())


@router.post("/tokens/{token_id}/revoke", response_model=TokenView,
             dependencies=[requires("token", "revoke")])
async def revoke_token(request: Request, token_id: TokenIdPath) -> TokenView:
    return await _db(request).run(users.revoke_token, token_id, utcnow())


# ---- the audit log ----
@router.get("/audit", response_model=list[AuditEntryView],
            dependencies=[requires("audit", "read")])
async def audit_log(
    request: Request, actor: ShortQuery = None, target: ShortQuery = None,
    since: Annotated[datetime | None, Query(description="ISO 8601, inclusive")] = None,
    until: Annotated[datetime | None, Query(description="ISO 8601, exclusive")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_QUERY_LIMIT)] = 100,
) -> list[AuditEntryView]:
    """State-changing requests, newest first (times without a zone are UTC)."""
    q = AuditQuery(actor=actor, since=_aware(since), until=_aware(until), target=target,
                   limit=limit)
    return await _db(request).run(audit.query, q)


# ---- the caller ----
@router.get("/whoami", response_model=WhoAmI)
async def whoami(actor: Annotated[Actor, requires("self", "read")]) -> WhoAmI:
    authz = default_authorizer()
    allowed = [p for p in authz.universe() if authz.allows_all(actor.roles, p)]
    return WhoAmI(kind=actor.kind.value, name=actor.name, role=actor.role,
                  token_id=actor.token_id, token_role=actor.token_role,
                  permissions=[str(p) for p in allowed])


def _aware(at: datetime | None) -> datetime | None:
    return at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at
