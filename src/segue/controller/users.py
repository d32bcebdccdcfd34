"""Users and API tokens in the controller's database: functions of a session, run through
``Database.run`` (each returns wire models or plain values, never rows).

A user has a name and one role (``segue.security.roles.USER_ROLES``); disabling a user
stops its tokens without revoking them; deleting it deletes its tokens. A token row keeps
its salted hash only (``segue.security.apitokens``); ``authenticate`` is the one place that
checks a token: its record, then its user, and notes when it was last used (at most once a
minute per token, so that reads do not turn into writes).

Errors: ``NotFound`` (``USER_NOT_FOUND``, ``TOKEN_NOT_FOUND``), ``Conflict``
(``USER_EXISTS``), and ``segue.security.errors.ApiTokenRefused`` from ``authenticate``
(``TOKEN_INVALID``, ``TOKEN_REVOKED``, ``TOKEN_EXPIRED``, ``USER_DISABLED``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from segue.api.access import TokenView, UserView
from segue.controller.access_models import ApiToken, User
from segue.controller.policy_models import Tag
from segue.domain.errors import Conflict, NotFound
from segue.security import apitokens
from segue.security.actors import Actor, user_actor
from segue.security.apitokens import ApiTokenRecord
from segue.security.errors import USER_DISABLED, ApiTokenRefused


def create_user(session: Session, name: str, role: str, now: datetime) -> UserView:
    """A new user; raises Conflict (``USER_EXISTS``)."""
    if _find_user(session, name) is not None:
        raise Conflict("USER_EXISTS", f"a user named {name} already exists",
                       "choose another name, or change its role (segue user set-role)")
    user = User(name=name, role=role, created_at=now, disabled=False)
    session.add(user)
    session.flush()
    return _user_view(session, user, now)


def list_users(session: Session, now: datetime) -> list[UserView]:
    users = session.scalars(select(User).order_by(User.name)).all()
    return [_user_view(session, u, now) for u in users]


def get_user(session: Session, name: str, now: datetime) -> UserView:
    """The user ``name``; raises NotFound (``USER_NOT_FOUND``)."""
    return _user_view(session, _get_user(session, name), now)


def user_role(session: Session, name: str) -> str:
    """The role of user ``name``; raises NotFound (``USER_NOT_FOUND``)."""
    return _get_user(session, name).role


def update_user(session: Session, name: str, now: datetime, role: str | None = None,
                disabled: bool | None = None) -> UserView:
    """Change the role and/or the disabled flag of user ``name``; raises NotFound."""
    user = _get_user(session, name)
    if role is not None:
        user.role = role
    if disabled is not None:
        user.disabled = disabled
    return _user_view(session, user, now)


def delete_user(session: Session, name: str) -> None:
    """Delete user ``name``, its tokens and tags; raises NotFound (``USER_NOT_FOUND``)."""
    user = _get_user(session, name)
    session.execute(delete(ApiToken).where(ApiToken.user_name == name))
    session.execute(delete(Tag).where(Tag.kind == "user", Tag.name == name))
    session.delete(user)


def add_token(session: Session, record: ApiTokenRecord, now: datetime) -> TokenView:
    """Store a new token's record (its user must exist: NotFound ``USER_NOT_FOUND``)."""
    _get_user(session, record.user)
    row = ApiToken(id=record.id, user_name=record.user, role=record.role, note=record.note,
                   salt=record.salt, digest=record.digest, created_at=record.created_at,
                   expires_at=record.expires_at)
    session.add(row)
    session.flush()
    return _token_view(row, now)


def list_tokens(session: Session, now: datetime, user: str | None = None) -> list[TokenView]:
    """Every token (of ``user`` only, if given: NotFound ``USER_NOT_FOUND`` if unknown)."""
    query = select(ApiToken).order_by(ApiToken.user_name, ApiToken.created_at)
    if user is not None:
        _get_user(session, user)
        query = query.where(ApiToken.user_name == user)
    return [_token_view(t, now) for t in session.scalars(query).all()]


def revoke_token(session: Session, token_id: str, now: datetime) -> TokenView:
    """Revoke a token (idempotent: the first revocation's time stays); raises NotFound
    (``TOKEN_NOT_FOUND``)."""
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound("TOKEN_NOT_FOUND", f"no API token with id {token_id}",
                       "list the tokens with segue token list")
    if row.revoked_at is None:
        row.revoked_at = now
    return _token_view(row, now)


def authenticate(session: Session, token: str, now: datetime) -> Actor:
    """The actor ``token`` proves at ``now`` (its user, the user's role, the token's role),
    noting the token's use; raises ApiTokenRefused (see the module doc)."""
    row = session.get(ApiToken, apitokens.token_id(token))
    record = _record(row) if row is not None else None
    apitokens.check_api_token(record, token, now)
    assert row is not None and record is not None  # check_api_token refused otherwise
    user = _get_user(session, row.user_name)
    if user.disabled:
        raise ApiTokenRefused(USER_DISABLED, f"user {user.name} is disabled",
                              "ask an admin to enable the user (segue user enable)",
                              token=row.id)
    if apitokens.needs_touch(record, now):
        row.last_used_at = now
    return user_actor(user.name, user.role, row.id, row.role)


def _find_user(session: Session, name: str) -> User | None:
    return session.scalars(select(User).where(User.name == name)).one_or_none()


def _get_user(session: Session, name: str) -> User:
    user = _find_user(session, name)
    if user is None:
        raise NotFound("USER_NOT_FOUND", f"no user named {name}",
                       "list the users with segue user list")
    return user


def _user_view(session: Session, user: User, now: datetime) -> UserView:
    live = session.scalar(select(func.count()).select_from(ApiToken).where(
        ApiToken.user_name == user.name, ApiToken.revoked_at.is_(None),
        (ApiToken.expires_at.is_(None)) | (ApiToken.expires_at > now)))
    tags = session.scalars(select(Tag.tag).where(Tag.kind == "user", Tag.name == user.name)
                           .order_by(Tag.tag)).all()
    return UserView(name=user.name, role=user.role, created_at=user.created_at,
                    disabled=user.disabled, tokens=live or 0, tags=list(tags))


def _record(row: ApiToken) -> ApiTokenRecord:
    return ApiTokenRecord(id=row.id, user=row.user_name, salt=row.salt, digest=row.digest,
                          created_at=row.created_at, expires_at=row.expires_at,
                          role=row.role, note=row.note, last_used_at=row.last_used_at,
                          revoked_at=row.revoked_at)


def _token_view(row: ApiToken, now: datetime) -> TokenView:
    record = _record(row)
    state = "revoked" if record.revoked else "expired" if record.expired(now) else "active"
    return TokenView(id=row.id, user=row.user_name, role=row.role, note=row.note,
                     created_at=row.created_at, expires_at=row.expires_at,
                     last_used_at=row.last_used_at, revoked_at=row.revoked_at, state=state)
