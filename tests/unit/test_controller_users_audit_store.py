"""Users, API tokens and the audit log in the controller's database (``controller.users``,
``controller.audit``), on a SQLite file with the real schema."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from segue.controller import audit, users
from segue.controller.access_models import ApiToken
from segue.controller.audit import AuditQuery, AuditRecord
from segue.controller.db import Database
from segue.domain.errors import Conflict, NotFound
from segue.security import apitokens
from segue.security.actors import ActorKind
from segue.security.errors import ApiTokenRefused

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/c.db")
    database.upgrade(create=True)
    yield database
    database.dispose()


def refusal(db: Database, token: str, now: datetime = NOW) -> str:
    with pytest.raises(ApiTokenRefused) as err, db.session() as s:
        users.authenticate(s, token, now)
    return err.value.code


def test_users_are_created_listed_changed_and_deleted(db: Database) -> None:
    with db.session() as s:
        assert users.create_user(s, "alice", "admin", NOW).role == "admin"
        users.create_user(s, "bob", "viewer", NOW)
    with pytest.raises(Conflict) as exists, db.session() as s:
        users.create_user(s, "alice", "viewer", NOW)
    assert exists.value.code == "USER_EXISTS"
    with db.session() as s:
        assert [u.name for u in users.list_users(s, NOW)] == ["alice", "bob"]
        changed = users.update_user(s, "bob", NOW, role="operator", disabled=True)
        assert (changed.role, changed.disabled) == ("operator", True)
        users.delete_user(s, "bob")
    with pytest.raises(NotFound) as gone, db.session() as s:
        users.get_user(s, "bob", NOW)
    assert gone.value.code == "USER_NOT_FOUND"


def test_a_token_proves_its_user_and_notes_its_use(db: Database) -> None:
    token, record = apitokens.new_api_token("alice", NOW, role="viewer")
    with db.session() as s:
        users.create_user(s, "alice", "operator", NOW)
        view = users.add_token(s, record, NOW)
        assert (view.state, view.role, view.last_used_at) == ("active", "viewer", None)
        assert users.get_user(s, "alice", NOW).tokens == 1
    with db.session() as s:
        actor = users.authenticate(s, token, NOW)
    assert (actor.kind, actor.name, actor.role) == (ActorKind.USER, "alice", "operator")
    assert (actor.token_id, actor.token_role) == (record.id, "viewer")
    with db.session() as s:
        stored = s.get(ApiToken, record.id)
        assert stored is not None and stored.last_used_at == NOW
        assert record.digest == stored.digest and token[-43:] not in str(stored.__dict__)
    with db.session() as s:  # within a minute: not written again
        users.authenticate(s, token, NOW + timedelta(seconds=30))
        assert users.list_tokens(s, NOW)[0].last_used_at == NOW


def test_revoked_expired_disabled_and_deleted_users_tokens_are_refused(db: Database) -> None:
    token, record = apitokens.new_api_token("alice", NOW, ttl=timedelta(hours=1))
    other, other_record = apitokens.new_api_token("alice", NOW)
    with db.session() as s:
        users.create_user(s, "alice", "admin", NOW)
        users.add_token(s, record, NOW)
        users.add_token(s, other_record, NOW)
    assert refusal(db, token, NOW + timedelta(hours=2)) == "TOKEN_EXPIRED"
    with db.session() as s:
        assert users.list_tokens(s, NOW + timedelta(hours=2))[0].state == "expired"
        users.update_user(s, "alice", NOW, disabled=True)
    assert refusal(db, other) == "USER_DISABLED"
    with db.session() as s:
        users.update_user(s, "alice", NOW, disabled=False)
        first = users.revoke_token(s, other_record.id, NOW)
        again = users.revoke_token(s, other_record.id, NOW + timedelta(hours=1))
        assert first.state == again.state == "revoked" and again.revoked_at == NOW
    assert refusal(db, other) == "TOKEN_REVOKED"
    with db.session() as s:
        users.delete_user(s, "alice")
        assert s.scalar(sa.select(sa.func.count()).select_from(ApiToken)) == 0
    assert refusal(db, other) == "TOKEN_INVALID"
    assert refusal(db, "segue_nonsense") == "TOKEN_INVALID"
    with pytest.raises(NotFound) as err, db.session() as s:
        users.revoke_token(s, "0123456789ab", NOW)
    assert err.value.code == "TOKEN_NOT_FOUND"


def entry(at: datetime, actor: str = "alice", target: str | None = "vm:web1",
          status: int = 200) -> AuditRecord:
    return AuditRecord(at=at, actor=actor, actor_kind="user", role="admin", token_id=None,
                       method="POST", route="POST /vms/{name}/start", path="/vms/web1/start",
                       target=target, status=status, error_code=None, duration_ms=1.5,
                       params={"query": {}})


def test_audit_queries_filter_by_actor_time_and_target(db: Database) -> None:
    with db.session() as s:
        for i in range(5):
            audit.record(s, entry(NOW + timedelta(minutes=i)))
        audit.record(s, entry(NOW, actor="bob", target="host:web1"))
        audit.record(s, entry(NOW, actor="bob", target="migration:m1"))
    with db.session() as s:
        everything = audit.query(s, AuditQuery())
        assert len(everything) == 7 and everything[0].at == NOW + timedelta(minutes=4)
        assert len(audit.query(s, AuditQuery(actor="bob"))) == 2
        assert len(audit.query(s, AuditQuery(since=NOW + timedelta(minutes=3)))) == 2
        assert len(audit.query(s, AuditQuery(until=NOW + timedelta(minutes=1)))) == 3
        assert len(audit.query(s, AuditQuery(target="vm:web1"))) == 5
        assert len(audit.query(s, AuditQuery(target="web1"))) == 6
        assert len(audit.query(s, AuditQuery(target="eb1"))) == 0  # whole names only
        assert len(audit.query(s, AuditQuery(limit=2))) == 2


def test_retention_drops_old_entries_then_the_oldest_beyond_the_count(db: Database) -> None:
    with db.session() as s:
        for days in (40, 20, 3, 2, 1, 0):
            audit.record(s, entry(NOW - timedelta(days=days)))
    with db.session() as s:
        assert audit.prune(s, NOW, timedelta(days=30), 3) == 3
        left = audit.query(s, AuditQuery())
        assert [e.at for e in left] == [NOW - timedelta(days=d) for d in (0, 1, 2)]
        assert audit.prune(s, NOW, timedelta(days=30), 3) == 0
