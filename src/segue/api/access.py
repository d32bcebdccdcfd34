"""Wire models of the controller's users, API tokens, audit log and ``/whoami``.

``UserRole`` is the roles users may have (``segue.security.roles.USER_ROLES``; a unit test
keeps the two equal). A token's secret appears in one answer only, ``TokenCreated``, when
the token is made.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, JsonValue

from segue.api.base import Name, RequestModel, ResponseModel, ShortText

UserRole = Literal["viewer", "operator", "admin"]
TokenState = Literal["active", "expired", "revoked"]
MAX_TOKEN_TTL_S = 10 * 366 * 86400  # ten years
TokenTTL = Annotated[int, Field(ge=60, le=MAX_TOKEN_TTL_S, description=(
    "seconds the token is valid, 60 to ten years; none: until revoked"))]


class CreateUserBody(RequestModel):
    """``POST /users``: a new user with a role."""

    name: Name
    role: UserRole


class UpdateUserBody(RequestModel):
    """``PATCH /users/{name}``: a new role, or disabled (its tokens stop working) or enabled
    again; a field left out is not changed."""

    role: UserRole | None = None
    disabled: bool | None = None


class UserView(ResponseModel):
    name: str
    role: str
    created_at: datetime
    disabled: bool
    tokens: int = 0  # its tokens that are neither revoked nor expired
    tags: list[str] = []  # what role-tags policies let it act on


class CreateTokenBody(RequestModel):
    """``POST /users/{name}/tokens``: a token of the user, for ``ttl_s`` seconds (none:
    until revoked), acting with ``role`` (none: the user's role, whatever it is when the
    token is used; a role given must be the user's or a narrower one)."""

    role: UserRole | None = None
    ttl_s: TokenTTL | None = None
    note: ShortText | None = None


class TokenView(ResponseModel):
    """An API token, without its secret."""

    id: str
    user: str
    role: str | None = None
    note: str | None = None
    created_at: datetime
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    state: TokenState


class TokenCreated(TokenView):
    """A new token: ``token`` is its secret, shown here once and never again."""

    token: str


class AuditEntryView(ResponseModel):
    """One entry of the audit log: a state-changing request, whoever made it and however it
    ended. ``actor_kind``: local, user, host, controller or anonymous; ``route``: the
    method and route template (``POST /vms/{name}/start``); ``target``: ``vm:web1``,
    ``host:h1``, ``migration:<id>``, ``user:alice``, ``token:<id>``; ``params``: the body
    (secrets redacted) and query; ``status``: the HTTP status answered; ``error_code``:
    the error's code when it failed."""

    id: int
    at: datetime
    actor: str
    actor_kind: str
    role: str | None = None
    token_id: str | None = None
    method: str
    route: str
    path: str
    target: str | None = None
    params: dict[str, JsonValue] = {}
    status: int
    error_code: str | None = None
    duration_ms: float = 0.0


class WhoAmI(ResponseModel):
    """``GET /whoami``: who the controller takes the caller for, and what it may do
    (``action object`` pairs)."""

    kind: str
    name: str
    role: str
    token_id: str | None = None
    token_role: str | None = None
    permissions: list[str] = []
