"""Join tokens in the controller's database (``controller.join_tokens``), on a SQLite file
with the real schema: stored hashed, checked without being used, redeemed once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from segue.controller import join_tokens
from segue.controller.access_models import JoinToken
from segue.controller.db import Database
from segue.security import pki, tokens
from segue.security.errors import JoinTokenRefused, JoinTokenWrongHost

NOW = datetime(2030, 1, 1, tzinfo=UTC)
CA = pki.create_ca("lab", NOW)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path}/c.db")
    database.upgrade(create=True)
    yield database
    database.dispose()


def made(db: Database, host: str | None = "h1", ttl: timedelta = timedelta(hours=1)) -> str:
    ticket, record = tokens.new_join_token(CA.cert, NOW, ttl, host=host)
    with db.session() as s:
        join_tokens.add(s, record)
    return ticket.token


def refusal(db: Database, token: str, host: str = "h1", now: datetime = NOW) -> str:
    with pytest.raises((JoinTokenRefused, JoinTokenWrongHost)) as err, db.session() as s:
        join_tokens.redeem(s, token, host, now)
    return str(err.value.code)


def test_the_secret_is_never_stored(db: Database) -> None:
    token = made(db)
    secret = token.rsplit(".", 1)[1]
    with db.session() as s:
        rows = s.execute(sa.text("SELECT * FROM join_tokens")).all()
    assert len(rows) == 1 and secret not in repr(rows)


def test_a_token_is_checked_without_being_used_then_redeemed_once(db: Database) -> None:
    token = made(db)
    with db.session() as s:
        assert join_tokens.check(s, token, "h1", NOW).used_at is None
    with db.session() as s:
        assert join_tokens.check(s, token, "h1", NOW).used_at is None  # check changes nothing
        record = join_tokens.redeem(s, token, "h1", NOW + timedelta(minutes=1))
    assert record.used_by == "h1"
    with db.session() as s:
        row = s.get(JoinToken, record.id)
        assert row is not None and (row.used_by, row.used_at) == ("h1", NOW + timedelta(
            minutes=1))
    assert refusal(db, token) == "JOIN_TOKEN_USED"


def test_refusals(db: Database) -> None:
    token = made(db)
    assert refusal(db, token, host="h2") == "JOIN_TOKEN_WRONG_HOST"
    assert refusal(db, token, now=NOW + timedelta(hours=2)) == "JOIN_TOKEN_EXPIRED"
    assert refusal(db, token[:-3] + "AAA") == "JOIN_TOKEN_INVALID"
    assert refusal(db, "segue-join.0123456789ab." + "A" * 43) == "JOIN_TOKEN_INVALID"
    assert refusal(db, "nonsense") == "JOIN_TOKEN_INVALID"
    # none of these used it
    with db.session() as s:
        assert join_tokens.redeem(s, token, "h1", NOW).used_by == "h1"


def test_a_token_for_any_host_admits_the_first_one(db: Database) -> None:
    token = made(db, host=None)
    with db.session() as s:
        assert join_tokens.redeem(s, token, "h7", NOW).used_by == "h7"
    assert refusal(db, token, host="h8") == "JOIN_TOKEN_USED"


def test_of_two_racing_redeems_only_one_wins(db: Database) -> None:
    """The update requires the token unused: a redeem whose check passed just before
    another join marked the token used still loses."""
    token = made(db)
    original = join_tokens.check

    def stale_check(session: sa.orm.Session, *args: object) -> tokens.JoinTokenRecord:
        record = original(session, *args)  # type: ignore[arg-type]
        session.execute(sa.update(JoinToken).values(used_at=NOW, used_by="other"))
        return record

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(join_tokens, "check", stale_check)
        assert refusal(db, token) == "JOIN_TOKEN_USED"
