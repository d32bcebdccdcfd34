"""One-time join tokens: how a new host proves it may join the cluster, and how it knows the
cluster it joins is the one it was meant to join.

A token reads ``segue-join.<id>.<secret>``: ``id`` is 12 lowercase hex digits and names the
token (it may be logged and listed); ``secret`` is 43 URL-safe base64 characters (256 random
bits), shown once when the token is made and never stored nor logged. The controller keeps a
``JoinTokenRecord`` per token: its id, a random salt and the HMAC-SHA256 of the secret under
that salt (compared in constant time), when it was made and expires (``DEFAULT_TTL``, one
hour, unless asked otherwise), the host name it is bound to (if any) and, once redeemed,
when and by which host. Everything here is a pure function of records and times; the
controller stores the records (redeeming is a compare-and-set: its update must require
``used_at`` still empty, so that two hosts racing with one token cannot both join).

A joining host also gets the CA pin (``ca_pin``): ``sha256:<hex>`` of the cluster CA
certificate's SubjectPublicKeyInfo, as kubeadm's ``discovery-token-ca-cert-hash``. The
operator hands the host a ``JoinTicket``, the token and the pin together. The join, end to
end (the wiring lives in the controller, the agent and the CLI):

1. ``segue host token [--host NAME] [--ttl]``: the controller makes a token
   (``new_join_token``), stores the record and shows the ticket once.
2. ``segue agent join``: the host fetches the CA certificate from the controller over TLS
   without trusting it yet, checks it against the pin (``check_ca_pin``) and from then on
   speaks to the controller only over TLS verified by that CA (the controller's certificate,
   ``segue-controller``): only then does it send the token, its host name and a signing
   request for a key it made and keeps (``pki.create_request``).
3. The controller finds the record by the token's id (``token_id``), redeems it
   (``redeem_join_token``: the secret, then unused, then unexpired, then the host binding)
   and issues the host's certificate (``pki.issue_host_certificate``).
4. The host checks what it got (``pki.verify_certificate``, ``pki.require_host``,
   ``pki.check_key_matches``) and installs it (``segue.security.store``).

Errors (``segue.security.errors``): ``JoinTokenRefused`` (``JOIN_TOKEN_INVALID``: malformed,
unknown id or wrong secret; ``JOIN_TOKEN_USED``; ``JOIN_TOKEN_EXPIRED``), ``JoinTokenWrongHost``
(``JOIN_TOKEN_WRONG_HOST``), ``CertificateInvalid`` (``CERT_NAME_INVALID`` for a host name
that cannot be certified, ``CA_PIN_INVALID`` for a malformed pin), ``CertificateUntrusted``
(``CA_PIN_MISMATCH``). A naive ``datetime`` or a TTL that is not positive is a programming
error and raises ``ValueError``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from segue.security.errors import (
    CA_PIN_INVALID,
    CA_PIN_MISMATCH,
    JOIN_TOKEN_EXPIRED,
    JOIN_TOKEN_INVALID,
    JOIN_TOKEN_USED,
    JOIN_TOKEN_WRONG_HOST,
    CertificateInvalid,
    CertificateUntrusted,
    JoinTokenRefused,
    JoinTokenWrongHost,
)
from segue.security.pki import check_host_name, require_aware

TOKEN_PREFIX = "segue-join"
DEFAULT_TTL = timedelta(hours=1)
PIN_PREFIX = "sha256:"
_TOKEN = re.compile(rf"{TOKEN_PREFIX}\.([0-9a-f]{{12}})\.([A-Za-z0-9_-]{{43}})")
_PIN = re.compile(rf"{PIN_PREFIX}([0-9a-f]{{64}})")
_NEW_TOKEN_HINT = "ask the cluster's operator for a new token (segue host token)"


@dataclass(frozen=True)
class JoinTokenRecord:
    """What the controller keeps of a join token: never its secret (see the module doc).
    ``salt`` and ``digest`` are hex; times are timezone-aware."""

    id: str
    salt: str
    digest: str
    created_at: datetime
    expires_at: datetime
    host: str | None = None
    used_at: datetime | None = None
    used_by: str | None = None

    @property
    def used(self) -> bool:
        return self.used_at is not None


@dataclass(frozen=True)
class JoinTicket:
    """What the operator hands a joining host: the token and the pin of the cluster's CA."""

    token: str
    ca_pin: str


def new_join_token(ca_cert: x509.Certificate, now: datetime, ttl: timedelta = DEFAULT_TTL,
                   host: str | None = None) -> tuple[JoinTicket, JoinTokenRecord]:
    """A new token, valid from ``now`` for ``ttl``, for any host or only for ``host``: the
    ticket to show once and the record to store. Raises CertificateInvalid
    (``CERT_NAME_INVALID``) for a host name that cannot be certified."""
    require_aware(now)
    if ttl <= timedelta(0):
        raise ValueError(f"a join token's lifetime must be positive, not {ttl}")
    if host is not None:
        check_host_name(host)
    token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    record = JoinTokenRecord(id=token_id, salt=salt.hex(), digest=_digest(salt, secret),
                             created_at=now, expires_at=now + ttl, host=host)
    ticket = JoinTicket(token=f"{TOKEN_PREFIX}.{token_id}.{secret}", ca_pin=ca_pin(ca_cert))
    return ticket, record


def token_id(token: str) -> str:
    """The id of ``token``, to find its record. Raises JoinTokenRefused
    (``JOIN_TOKEN_INVALID``) for a string that is not a join token."""
    return _parse(token)[0]


def check_join_token(record: JoinTokenRecord, token: str, host: str, now: datetime) -> None:
    """Raise unless ``token`` admits host ``host`` at ``now`` by ``record``: JoinTokenRefused
    (``JOIN_TOKEN_INVALID`` for another token or a wrong secret, then ``JOIN_TOKEN_USED``,
    then ``JOIN_TOKEN_EXPIRED``), JoinTokenWrongHost (``JOIN_TOKEN_WRONG_HOST``),
    CertificateInvalid (``CERT_NAME_INVALID``). Only a caller who knows the secret learns
    whether the token was used, expired or bound to another host."""
    require_aware(now)
    given_id, secret = _parse(token)
    expected = _digest(bytes.fromhex(record.salt), secret)
    if given_id != record.id or not hmac.compare_digest(expected, record.digest):
        raise JoinTokenRefused(JOIN_TOKEN_INVALID, "the join token is not valid",
                               _NEW_TOKEN_HINT)
    if record.used:
        raise JoinTokenRefused(JOIN_TOKEN_USED, f"join token {record.id} was used by "
                               f"{record.used_by} at {_iso(record.used_at)}",
                               "a token admits one host only: " + _NEW_TOKEN_HINT,
                               token=record.id)
    if now >= record.expires_at:
        raise JoinTokenRefused(JOIN_TOKEN_EXPIRED, f"join token {record.id} expired at "
                               f"{_iso(record.expires_at)}", _NEW_TOKEN_HINT, token=record.id)
    check_host_name(host)
    if record.host is not None and host != record.host:
        raise JoinTokenWrongHost(JOIN_TOKEN_WRONG_HOST,
                                 f"join token {record.id} is for host {record.host!r}, "
                                 f"not {host!r}",
                                 f"join as {record.host!r}, or ask for a token for {host!r}",
                                 token=record.id, host=host)


def redeem_join_token(record: JoinTokenRecord, token: str, host: str,
                      now: datetime) -> JoinTokenRecord:
    """``record`` used by ``host`` at ``now``, once ``check_join_token`` admits it (raises
    what it raises). Store it only if the stored record is still unused."""
    check_join_token(record, token, host, now)
    return replace(record, used_at=now, used_by=host)


def ca_pin(ca_cert: x509.Certificate) -> str:
    """``sha256:<hex>`` of the CA certificate's SubjectPublicKeyInfo (DER): it names the CA's
    key, so it survives the CA certificate's renewal with the same key."""
    spki = ca_cert.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    return PIN_PREFIX + hashlib.sha256(spki).hexdigest()


def check_ca_pin(ca_cert: x509.Certificate, pin: str) -> None:
    """Raise unless ``ca_cert`` is the CA ``pin`` names: CertificateInvalid
    (``CA_PIN_INVALID``) for a malformed pin, CertificateUntrusted (``CA_PIN_MISMATCH``)."""
    if not _PIN.fullmatch(pin.strip().lower()):
        raise CertificateInvalid(CA_PIN_INVALID, f"{pin!r} is not a CA pin",
                                 f"give the pin of the join ticket ({PIN_PREFIX}<64 hex>)")
    if not hmac.compare_digest(ca_pin(ca_cert), pin.strip().lower()):
        raise CertificateUntrusted(
            CA_PIN_MISMATCH, "the controller offered a CA other than the one the join ticket "
            "pins", "check the controller's address and the ticket: this may be an attacker "
            "between the host and the controller")


def _parse(token: str) -> tuple[str, str]:
    match = _TOKEN.fullmatch(token.strip())
    if match is None:
        raise JoinTokenRefused(JOIN_TOKEN_INVALID, "this is not a join token",
                               f"give the whole token ({TOKEN_PREFIX}.<id>.<secret>)")
    return match[1], match[2]


def _digest(salt: bytes, secret: str) -> str:
    return hmac.new(salt, secret.encode(), hashlib.sha256).hexdigest()


def _iso(at: datetime | None) -> str:
    return at.isoformat() if at is not None else "?"
