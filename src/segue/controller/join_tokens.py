"""Hosts' one-time join tokens in the controller's database: functions of a session, run
through ``Database.run`` (each returns plain values, never rows).

A row keeps what ``segue.security.tokens.JoinTokenRecord`` holds: the salted hash of the
secret, never the secret. A join checks its token (``check``: read only) before the
controller issues anything, then redeems it (``redeem``), which marks it used with a
compare-and-set: the update requires the token still unused, so that of two hosts racing
with one token only one joins. A join that fails for another reason than its token (a
signing request that cannot be certified, a controller without a CA) leaves it unused.

Errors (``segue.security.errors``): ``JoinTokenRefused`` (``JOIN_TOKEN_INVALID`` for a
malformed or unknown token or a wrong secret, ``JOIN_TOKEN_USED``, ``JOIN_TOKEN_EXPIRED``),
``JoinTokenWrongHost`` (``JOIN_TOKEN_WRONG_HOST``), ``CertificateInvalid``
(``CERT_NAME_INVALID`` for a host name that cannot be certified).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from segue.controller.access_models import JoinToken
from segue.security import tokens
from segue.security.errors import JOIN_TOKEN_INVALID, JOIN_TOKEN_USED, JoinTokenRefused
from segue.security.tokens import JoinTokenRecord

_NEW_TOKEN_HINT = "ask the cluster's operator for a new token (segue host token)"


def add(session: Session, record: JoinTokenRecord) -> None:
    """Store a new token's record."""
    session.add(JoinToken(id=record.id, host=record.host, salt=record.salt,
                          digest=record.digest, created_at=record.created_at,
                          expires_at=record.expires_at))
    session.flush()


def check(session: Session, token: str, host: str, now: datetime) -> JoinTokenRecord:
    """The record of ``token`` if it admits ``host`` at ``now``; raises as the module doc
    says, and changes nothing."""
    row = session.get(JoinToken, tokens.token_id(token))
    if row is None:
        raise JoinTokenRefused(JOIN_TOKEN_INVALID, "the join token is not valid",
                               _NEW_TOKEN_HINT)
    record = _record(row)
    tokens.check_join_token(record, token, host, now)
    return record


def redeem(session: Session, token: str, host: str, now: datetime) -> JoinTokenRecord:
    """Mark ``token`` used by ``host`` at ``now``, once it admits it (``check``); raises
    JoinTokenRefused (``JOIN_TOKEN_USED``) if another join used it in between."""
    record = tokens.redeem_join_token(check(session, token, host, now), token, host, now)
    done = session.execute(update(JoinToken).where(JoinToken.id == record.id,
                                                   JoinToken.used_at.is_(None))
                           .values(used_at=now, used_by=host))
    if getattr(done, "rowcount", 0) != 1:
        raise JoinTokenRefused(JOIN_TOKEN_USED, f"join token {record.id} was used by "
                               "another join at the same time",
                               "a token admits one host only: " + _NEW_TOKEN_HINT,
                               token=record.id)
    return record


def _record(row: JoinToken) -> JoinTokenRecord:
    return JoinTokenRecord(id=row.id, salt=row.salt, digest=row.digest,
                           created_at=row.created_at, expires_at=row.expires_at,
                           host=row.host, used_at=row.used_at, used_by=row.used_by)
