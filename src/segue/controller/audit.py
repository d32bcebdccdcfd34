"""The audit log in the controller's database: write an entry, query entries, prune old ones.
Functions of a session, run through ``Database.run``; ``AuditRecord`` is what the access
gate (``segue.controller.gate``) hands over for each state-changing request.

Queries filter by actor (its name, exactly), time (``since`` inclusive, ``until``
exclusive) and target (``vm:web1`` exactly, or a bare name such as ``web1`` for any kind of
target of that name), newest first, at most ``limit``. Retention (``prune``) drops entries
older than a maximum age, then the oldest beyond a maximum count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from segue.api.access import AuditEntryView
from segue.controller.access_models import AuditEntry

MAX_QUERY_LIMIT = 10_000


@dataclass(frozen=True)
class AuditRecord:
    """One request as the audit log keeps it (see ``AuditEntryView`` for the fields)."""

    at: datetime
    actor: str
    actor_kind: str
    role: str | None
    token_id: str | None
    method: str
    route: str
    path: str
    target: str | None
    status: int
    error_code: str | None
    duration_ms: float
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditQuery:
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    target: str | None = None
    limit: int = 100


def record(session: Session, entry: AuditRecord) -> int:
    """Write ``entry``; its id."""
    row = AuditEntry(at=entry.at, actor=entry.actor[:128], actor_kind=entry.actor_kind,
                     role=entry.role, token_id=entry.token_id, method=entry.method,
                     route=entry.route[:255], path=entry.path[:1024],
                     target=entry.target[:160] if entry.target else None,
                     params=entry.params, status=entry.status,
                     error_code=entry.error_code, duration_ms=entry.duration_ms)
    session.add(row)
    session.flush()
    return row.id


def query(session: Session, q: AuditQuery) -> list[AuditEntryView]:
    """The entries ``q`` selects, newest first."""
    stmt = select(AuditEntry).order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
    if q.actor is not None:
        stmt = stmt.where(AuditEntry.actor == q.actor)
    if q.since is not None:
        stmt = stmt.where(AuditEntry.at >= q.since)
    if q.until is not None:
        stmt = stmt.where(AuditEntry.at < q.until)
    if q.target is not None:
        stmt = stmt.where(AuditEntry.target == q.target if ":" in q.target
                          else AuditEntry.target.endswith(f":{q.target}", autoescape=True))
    rows = session.scalars(stmt.limit(min(q.limit, MAX_QUERY_LIMIT))).all()
    return [_view(r) for r in rows]


def prune(session: Session, now: datetime, max_age: timedelta, max_entries: int) -> int:
    """Delete entries older than ``max_age``, then the oldest beyond ``max_entries``; how
    many were deleted."""
    deleted = session.execute(delete(AuditEntry).where(AuditEntry.at < now - max_age))
    count = int(getattr(deleted, "rowcount", 0) or 0)
    cutoff = session.scalar(select(AuditEntry.id).order_by(AuditEntry.id.desc())
                            .offset(max_entries).limit(1))
    if cutoff is not None:
        extra = session.execute(delete(AuditEntry).where(AuditEntry.id <= cutoff))
        count += int(getattr(extra, "rowcount", 0) or 0)
    return count


def _view(row: AuditEntry) -> AuditEntryView:
    return AuditEntryView(id=row.id, at=row.at, actor=row.actor, actor_kind=row.actor_kind,
                          role=row.role, token_id=row.token_id, method=row.method,
                          route=row.route, path=row.path, target=row.target,
                          params=row.params or {}, status=row.status,
                          error_code=row.error_code, duration_ms=row.duration_ms)
