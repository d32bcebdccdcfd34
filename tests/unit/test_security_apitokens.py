"""API tokens (``segue.security.apitokens``): shown once, kept as a salted hash, checked in
constant time, with expiry, revocation and a throttled last-used time."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta

import pytest

from segue.security import apitokens
from segue.security.apitokens import ApiTokenRecord
from segue.security.errors import ApiTokenRefused

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def refused(record: ApiTokenRecord | None, token: str, now: datetime = NOW) -> str:
    with pytest.raises(ApiTokenRefused) as err:
        apitokens.check_api_token(record, token, now)
    assert err.value.kind == "unauthenticated"
    return err.value.code


def test_a_token_is_shown_once_and_only_its_salted_hash_is_kept() -> None:
    token, record = apitokens.new_api_token("alice", NOW, role="viewer", note="ci")
    match = re.fullmatch(r"segue_([0-9a-f]{12})_([A-Za-z0-9_-]{43})", token)
    assert match is not None and match[1] == record.id == apitokens.token_id(token)
    assert all(match[2] not in str(v) for v in dataclasses.astuple(record))
    assert len(bytes.fromhex(record.salt)) == 16 and len(record.digest) == 64
    assert (record.user, record.role, record.note) == ("alice", "viewer", "ci")
    assert record.expires_at is None and record.last_used_at is None and not record.revoked
    apitokens.check_api_token(record, token, NOW + timedelta(days=3650))  # no expiry


def test_tokens_are_unique_and_salted_apart() -> None:
    made = [apitokens.new_api_token("alice", NOW) for _ in range(20)]
    assert len({t for t, _ in made}) == len({r.id for _, r in made}) == 20
    assert len({r.salt for _, r in made}) == len({r.digest for _, r in made}) == 20


def test_a_wrong_secret_an_unknown_id_and_garbage_are_alike_invalid() -> None:
    token, record = apitokens.new_api_token("alice", NOW)
    other, _ = apitokens.new_api_token("alice", NOW)
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert refused(record, forged) == "TOKEN_INVALID"
    assert refused(record, other) == "TOKEN_INVALID"  # another token's id and secret
    assert refused(None, token) == "TOKEN_INVALID"  # no record has the id
    for garbage in ("", "segue_", "Bearer " + token, token + "x", token.upper(),
                    f"segue-join.{record.id}.{token[-43:]}"):
        assert refused(record, garbage) == "TOKEN_INVALID", garbage
    assert apitokens.token_id_or_none("nonsense") is None
    assert apitokens.token_id_or_none(token) == record.id


def test_expiry_and_revocation_are_told_only_to_the_secrets_holder() -> None:
    token, record = apitokens.new_api_token("alice", NOW, ttl=timedelta(hours=1))
    apitokens.check_api_token(record, token, NOW + timedelta(minutes=59))
    assert refused(record, token, NOW + timedelta(hours=1)) == "TOKEN_EXPIRED"
    revoked = dataclasses.replace(record, revoked_at=NOW)
    assert refused(revoked, token) == "TOKEN_REVOKED"
    other, _ = apitokens.new_api_token("alice", NOW)
    assert refused(revoked, f"segue_{record.id}_{other[-43:]}") == "TOKEN_INVALID"


def test_last_used_is_written_at_most_once_a_minute() -> None:
    _, record = apitokens.new_api_token("alice", NOW)
    assert apitokens.needs_touch(record, NOW)
    used = dataclasses.replace(record, last_used_at=NOW)
    assert not apitokens.needs_touch(used, NOW + timedelta(seconds=59))
    assert apitokens.needs_touch(used, NOW + apitokens.TOUCH_INTERVAL)


@pytest.mark.parametrize("header", ["Bearer T", "bearer T", "BEARER  T "])
def test_bearer_header(header: str) -> None:
    assert apitokens.bearer_token(header) == "T"


@pytest.mark.parametrize("header", ["Basic dXNlcjpwdw==", "Bearer", "Bearer   ", "T"])
def test_other_authorization_schemes_are_refused(header: str) -> None:
    with pytest.raises(ApiTokenRefused) as err:
        apitokens.bearer_token(header)
    assert err.value.code == "TOKEN_INVALID"


def test_naive_times_and_bad_lifetimes_are_programming_errors() -> None:
    with pytest.raises(ValueError):
        apitokens.new_api_token("alice", datetime(2030, 1, 1))
    with pytest.raises(ValueError):
        apitokens.new_api_token("alice", NOW, ttl=timedelta(0))
