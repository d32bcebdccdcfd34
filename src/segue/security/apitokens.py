"""API tokens: how a user (a person, or a service such as CI) proves who it is to the
controller's API over TCP.

A token reads ``segue_<id>_<secret>``: ``id`` is 12 lowercase hex digits and names the token
(it is listed, logged and recorded in the audit log); ``secret`` is 43 URL-safe base64
characters (256 random bits), shown once when the token is made and never stored nor
logged. The prefix makes a leaked token easy to recognise (secret scanners, logs). A client
sends it as ``Authorization: Bearer segue_<id>_<secret>``.

The controller keeps an ``ApiTokenRecord`` per token: its id, its user, a random salt and
the HMAC-SHA256 of the secret under that salt (compared in constant time), when it was made,
when it expires (never, unless asked), when it was last used and, once revoked, when. A
secret of 256 random bits needs no slow password hash: no dictionary can guess it, and a
fast one lets every request be checked cheaply. A token may carry a ``role`` that narrows
its user's (``segue.security.roles``: both must allow a request); without one it acts with
its user's role, whatever that is at the time.

Everything here is a pure function of records and times; the controller stores the records.

Errors (``segue.security.errors``): ``ApiTokenRefused`` (``TOKEN_INVALID``: malformed, or
an unknown id or a wrong secret, both reported alike; then ``TOKEN_REVOKED`` and
``TOKEN_EXPIRED``, which only a caller who knows the secret learns). A naive ``datetime`` or
a lifetime that is not positive is a programming error and raises ``ValueError``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from segue.security.errors import (
    TOKEN_EXPIRED,
    TOKEN_INVALID,
    TOKEN_REVOKED,
    ApiTokenRefused,
)
from segue.security.pki import require_aware

TOKEN_PREFIX = "segue"
TOUCH_INTERVAL = timedelta(minutes=1)  # last_used is written at most this often per token
_TOKEN = re.compile(rf"{TOKEN_PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{43}})")
_ID = re.compile(r"[0-9a-f]{12}")
_NEW_TOKEN_HINT = "ask an admin for a new token (segue token create --user NAME)"


@dataclass(frozen=True)
class ApiTokenRecord:
    """What the controller keeps of an API token: never its secret (see the module doc).
    ``salt`` and ``digest`` are hex; times are timezone-aware; ``role`` None: the user's."""

    id: str
    user: str
    salt: str
    digest: str
    created_at: datetime
    expires_at: datetime | None = None
    role: str | None = None
    note: str | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def new_api_token(user: str, now: datetime, ttl: timedelta | None = None,
                  role: str | None = None, note: str | None = None
                  ) -> tuple[str, ApiTokenRecord]:
    """A new token of ``user``, valid from ``now`` for ``ttl`` (None: until revoked): the
    token to show once and the record to store. ``role`` (checked by the caller against the
    user's, ``roles.require_within``) narrows the user's role."""
    require_aware(now)
    if ttl is not None and ttl <= timedelta(0):
        raise ValueError(f"an API token's lifetime must be positive, not {ttl}")
    token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    record = ApiTokenRecord(id=token_id, user=user, salt=salt.hex(),
                            digest=_digest(salt, secret), created_at=now,
                            expires_at=now + ttl if ttl is not None else None,
                            role=role, note=note)
    return f"{TOKEN_PREFIX}_{token_id}_{secret}", record


def token_id(token: str) -> str:
    """The id of ``token``, to find its record. Raises ApiTokenRefused (``TOKEN_INVALID``)
    for a string that is not an API token."""
    return _parse(token)[0]


def token_id_or_none(token: str) -> str | None:
    """The id of ``token`` if it is shaped like one (to name it in the audit log), else
    None; never raises."""
    match = _TOKEN.fullmatch(token.strip())
    return match[1] if match else None


def is_token_id(text: str) -> bool:
    """True if ``text`` could be a token's id (12 lowercase hex digits)."""
    return _ID.fullmatch(text) is not None


def check_api_token(record: ApiTokenRecord | None, token: str, now: datetime) -> None:
    """Raise unless ``token`` is the one ``record`` was made for and admits its user at
    ``now`` (``record`` None: no token has the id): ApiTokenRefused (``TOKEN_INVALID`` for
    an unknown id or a wrong secret, alike; then ``TOKEN_REVOKED``, then ``TOKEN_EXPIRED``).
    """
    require_aware(now)
    given_id, secret = _parse(token)
    # an unknown id costs the same HMAC as a wrong secret, so timing tells neither apart
    salt = bytes.fromhex(record.salt) if record is not None else b"\0" * 16
    expected = record.digest if record is not None else "0" * 64
    good = hmac.compare_digest(_digest(salt, secret), expected)
    if record is None or given_id != record.id or not good:
        raise ApiTokenRefused(TOKEN_INVALID, "the API token is not valid", _NEW_TOKEN_HINT)
    if record.revoked:
        raise ApiTokenRefused(TOKEN_REVOKED, f"API token {record.id} was revoked at "
                              f"{_iso(record.revoked_at)}", _NEW_TOKEN_HINT, token=record.id)
    if record.expired(now):
        raise ApiTokenRefused(TOKEN_EXPIRED, f"API token {record.id} expired at "
                              f"{_iso(record.expires_at)}", _NEW_TOKEN_HINT, token=record.id)


def needs_touch(record: ApiTokenRecord, now: datetime) -> bool:
    """True if ``last_used_at`` should be written now: never written, or older than
    ``TOUCH_INTERVAL`` (so that every request does not write to the database)."""
    return record.last_used_at is None or now - record.last_used_at >= TOUCH_INTERVAL


def bearer_token(authorization: str) -> str:
    """The token of an ``Authorization`` header's value (``Bearer <token>``, the scheme in
    any case). Raises ApiTokenRefused (``TOKEN_INVALID``) for another scheme or no token."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise ApiTokenRefused(TOKEN_INVALID, "the Authorization header is not "
                              "'Bearer <token>'",
                              "send Authorization: Bearer segue_<id>_<secret>")
    return value.strip()


def _parse(token: str) -> tuple[str, str]:
    match = _TOKEN.fullmatch(token.strip())
    if match is None:
        raise ApiTokenRefused(TOKEN_INVALID, "this is not a Segue API token",
                              f"give the whole token ({TOKEN_PREFIX}_<id>_<secret>)")
    return match[1], match[2]


def _digest(salt: bytes, secret: str) -> str:
    return hmac.new(salt, secret.encode(), hashlib.sha256).hexdigest()


def _iso(at: datetime | None) -> str:
    return at.isoformat() if at is not None else "?"
