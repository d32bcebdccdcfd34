"""One-time join tokens and the CA pin (``segue.security.tokens``)."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta

import pytest

from segue.domain.errors import SegueError
from segue.security import pki, tokens
from segue.security.errors import (
    CertificateInvalid,
    CertificateUntrusted,
    JoinTokenRefused,
    JoinTokenWrongHost,
)
from segue.security.pki import CertificateAuthority
from segue.security.tokens import JoinTokenRecord

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return pki.create_ca("lab", NOW)


def code(err: pytest.ExceptionInfo[SegueError]) -> str:
    return err.value.code


def test_a_token_is_shown_once_and_only_its_hash_is_kept(ca: CertificateAuthority) -> None:
    ticket, record = tokens.new_join_token(ca.cert, NOW)
    match = re.fullmatch(r"segue-join\.([0-9a-f]{12})\.([A-Za-z0-9_-]{43})", ticket.token)
    assert match is not None and match[1] == record.id == tokens.token_id(ticket.token)
    secret = match[2]
    assert all(secret not in str(value) for value in dataclasses.astuple(record))
    assert len(bytes.fromhex(record.salt)) == 16 and len(record.digest) == 64
    assert record.expires_at - record.created_at == tokens.DEFAULT_TTL == timedelta(hours=1)
    assert ticket.ca_pin == tokens.ca_pin(ca.cert)


def test_tokens_are_unique(ca: CertificateAuthority) -> None:
    made = [tokens.new_join_token(ca.cert, NOW) for _ in range(20)]
    assert len({t.token for t, _ in made}) == len({r.id for _, r in made}) == 20
    assert len({r.salt for _, r in made}) == 20


def test_a_token_admits_one_host_once(ca: CertificateAuthority) -> None:
    ticket, record = tokens.new_join_token(ca.cert, NOW)
    used = tokens.redeem_join_token(record, ticket.token, "host1", NOW + timedelta(minutes=5))
    assert used.used and used.used_by == "host1"
    assert used.used_at == NOW + timedelta(minutes=5)
    assert not record.used  # records are values: the caller stores the new one
    for host in ("host1", "host2"):
        with pytest.raises(JoinTokenRefused) as err:
            tokens.redeem_join_token(used, ticket.token, host, NOW + timedelta(minutes=6))
        assert code(err) == "JOIN_TOKEN_USED" and err.value.kind == "unauthenticated"


def test_a_token_expires(ca: CertificateAuthority) -> None:
    ticket, record = tokens.new_join_token(ca.cert, NOW, ttl=timedelta(minutes=10))
    tokens.check_join_token(record, ticket.token, "host1", NOW + timedelta(minutes=9))
    with pytest.raises(JoinTokenRefused) as err:
        tokens.redeem_join_token(record, ticket.token, "host1", NOW + timedelta(minutes=10))
    assert code(err) == "JOIN_TOKEN_EXPIRED"


def test_a_wrong_secret_or_another_tokens_id_is_invalid(ca: CertificateAuthority) -> None:
    ticket, record = tokens.new_join_token(ca.cert, NOW)
    other, _ = tokens.new_join_token(ca.cert, NOW)
    prefix, token_id, secret = ticket.token.split(".")
    flipped = ("B" if secret[0] == "A" else "A") + secret[1:]
    for token in (f"{prefix}.{token_id}.{flipped}", other.token,
                  f"{prefix}.{tokens.token_id(other.token)}.{secret}"):
        with pytest.raises(JoinTokenRefused) as err:
            tokens.check_join_token(record, token, "host1", NOW)
        assert code(err) == "JOIN_TOKEN_INVALID"


def test_an_unproven_caller_learns_nothing_of_the_tokens_state(
        ca: CertificateAuthority) -> None:
    ticket, record = tokens.new_join_token(ca.cert, NOW, host="host1")
    used = tokens.redeem_join_token(record, ticket.token, "host1", NOW)
    guess = ticket.token[:-1] + ("a" if ticket.token[-1] != "a" else "b")
    for rec, at in ((used, NOW), (record, NOW + timedelta(days=1)), (record, NOW)):
        with pytest.raises(JoinTokenRefused) as err:
            tokens.check_join_token(rec, guess, "host2", at)
        assert code(err) == "JOIN_TOKEN_INVALID"


@pytest.mark.parametrize("token", ["", "segue-join", "segue-join.abc.def",
                                   "segue-join.ABCDEF123456." + "a" * 43,
                                   "other.0123456789ab." + "a" * 43,
                                   "segue-join.0123456789ab." + "a" * 42,
                                   "segue-join.0123456789ab." + "a" * 42 + "."])
def test_a_malformed_token_is_invalid(token: str) -> None:
    with pytest.raises(JoinTokenRefused) as err:
        tokens.token_id(token)
    assert code(err) == "JOIN_TOKEN_INVALID"


def test_a_token_bound_to_a_host_admits_that_host_only(ca: CertificateAuthority) -> None:
    ticket, record = tokens.new_join_token(ca.cert, NOW, host="host1")
    assert record.host == "host1"
    with pytest.raises(JoinTokenWrongHost) as err:
        tokens.redeem_join_token(record, ticket.token, "host2", NOW)
    assert code(err) == "JOIN_TOKEN_WRONG_HOST" and err.value.kind == "forbidden"
    assert tokens.redeem_join_token(record, ticket.token, "host1", NOW).used_by == "host1"


def test_a_host_name_that_cannot_be_certified_spends_no_token(
        ca: CertificateAuthority) -> None:
    ticket, record = tokens.new_join_token(ca.cert, NOW)
    for host in ("bad_name", "segue-controller"):
        with pytest.raises(CertificateInvalid) as err:
            tokens.redeem_join_token(record, ticket.token, host, NOW)
        assert code(err) == "CERT_NAME_INVALID"
    with pytest.raises(CertificateInvalid):
        tokens.new_join_token(ca.cert, NOW, host="bad_name")


def test_a_token_lives_a_positive_time_in_aware_times(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="positive"):
        tokens.new_join_token(ca.cert, NOW, ttl=timedelta(0))
    with pytest.raises(ValueError, match="naive"):
        tokens.new_join_token(ca.cert, datetime(2030, 1, 1))


def test_the_pin_names_the_cas_key(ca: CertificateAuthority) -> None:
    pin = tokens.ca_pin(ca.cert)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", pin)
    tokens.check_ca_pin(ca.cert, pin)
    tokens.check_ca_pin(ca.cert, f" {pin.upper().replace('SHA256', 'sha256')} ")
    renewed = pki.create_ca("lab", NOW + timedelta(days=3000), key=ca.key)
    tokens.check_ca_pin(renewed.cert, pin)  # a CA renewed with its key keeps its pin


def test_another_ca_does_not_match_the_pin(ca: CertificateAuthority) -> None:
    impostor = pki.create_ca("lab", NOW)  # the same name, another key
    with pytest.raises(CertificateUntrusted) as err:
        tokens.check_ca_pin(impostor.cert, tokens.ca_pin(ca.cert))
    assert code(err) == "CA_PIN_MISMATCH"


@pytest.mark.parametrize("pin", ["", "sha256:", "sha256:" + "0" * 63, "md5:" + "0" * 64,
                                 "0" * 64, "sha256:" + "g" * 64])
def test_a_malformed_pin_is_refused(ca: CertificateAuthority, pin: str) -> None:
    with pytest.raises(CertificateInvalid) as err:
        tokens.check_ca_pin(ca.cert, pin)
    assert code(err) == "CA_PIN_INVALID"


def test_records_are_plain_values_for_the_database() -> None:
    fields = {f.name for f in dataclasses.fields(JoinTokenRecord)}
    assert fields == {"id", "salt", "digest", "created_at", "expires_at", "host", "used_at",
                      "used_by"}
