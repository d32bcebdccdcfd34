"""Revoked certificates: the controller's own check, and the CRL it publishes for the hosts.

The controller refuses a revoked certificate on every request (``Revocations.check``: a
set lookup, no I/O). A certificate is revoked when its serial was revoked (every
certificate the controller issued to a host it revoked), or when it is a certificate of a
revoked host issued before the revocation (``cutoffs``: this covers certificates the
controller has no record of). A host that joins again gets a certificate issued after the
cutoff, and the join lifts the cutoff; its old serials stay revoked.

The hosts learn of revocations through the CRL (``build_crl``: one per CA of the trust
bundle, each signed by its CA and listing every revoked serial), which they keep as
``ca-crl.pem`` in their credential set: QEMU's ``tls-creds-x509`` reads it, so an
encrypted migration refuses a revoked peer too. ``check_crl`` is the same check for a
certificate against a CRL, in Python.

Errors: ``CertificateRevoked`` (``CERT_REVOKED``); ``CertificateInvalid``
(``CERT_INVALID``) for a CRL that does not parse or whose signature is not its CA's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from segue.security.errors import (
    CERT_INVALID,
    CERT_REVOKED,
    CertificateInvalid,
    CertificateRevoked,
)
from segue.security.pki import CLOCK_SKEW, CertificateAuthority, Identity, require_aware

CRL_VALIDITY = timedelta(days=7)  # a CRL's nextUpdate; hosts fetch a new one every few minutes
_HINT = "join the host again with a new ticket (segue host token HOST; segue agent join --force)"


@dataclass(frozen=True)
class RevokedCertificate:
    """A revoked serial: of which host, since when, and why."""

    serial: int
    host: str
    revoked_at: datetime
    reason: str = ""


@dataclass
class Revocations:
    """What the controller refuses, in memory: revoked serials and per-host cutoffs."""

    serials: dict[int, RevokedCertificate] = field(default_factory=dict)
    cutoffs: dict[str, datetime] = field(default_factory=dict)

    def add(self, revoked: Iterable[RevokedCertificate]) -> None:
        for entry in revoked:
            self.serials[entry.serial] = entry

    def revoke_host(self, host: str, at: datetime) -> None:
        """Refuse every certificate of ``host`` issued up to ``at``."""
        require_aware(at)
        self.cutoffs[host] = at

    def readmit_host(self, host: str) -> None:
        """Lift ``host``'s cutoff (it joined again); its revoked serials stay revoked."""
        self.cutoffs.pop(host, None)

    def is_host_revoked(self, host: str) -> bool:
        return host in self.cutoffs

    def check(self, cert: x509.Certificate, identity: Identity) -> None:
        """Raise CertificateRevoked (``CERT_REVOKED``) if ``cert`` (proving ``identity``)
        is revoked."""
        entry = self.serials.get(cert.serial_number)
        cutoff = self.cutoffs.get(identity.name)
        issued = cert.not_valid_before_utc + CLOCK_SKEW
        if entry is None and (cutoff is None or issued > cutoff):
            return
        at = entry.revoked_at if entry is not None else cutoff
        raise CertificateRevoked(
            CERT_REVOKED, f"the certificate {cert.serial_number:x} of {identity.uri} was "
            f"revoked at {at.isoformat() if at else '?'}", _HINT, peer=identity.uri)


def build_crl(ca: CertificateAuthority, revoked: Iterable[RevokedCertificate],
              now: datetime, validity: timedelta = CRL_VALIDITY
              ) -> x509.CertificateRevocationList:
    """The CRL of ``ca`` listing ``revoked`` (every revoked serial: the serials are random,
    another CA's cannot name one of this CA's certificates), valid from ``now``."""
    require_aware(now)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.cert.subject)
               .last_update(now - CLOCK_SKEW).next_update(now + validity))
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    for entry in sorted(revoked, key=lambda e: e.serial):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(entry.serial)
            .revocation_date(entry.revoked_at).build())
    return builder.sign(ca.key, hashes.SHA256())


def crls_to_pem(crls: Iterable[x509.CertificateRevocationList]) -> bytes:
    return b"".join(crl.public_bytes(serialization.Encoding.PEM) for crl in crls)


def crls_from_pem(data: bytes) -> list[x509.CertificateRevocationList]:
    """Every CRL of a PEM file (one per CA); CertificateInvalid (``CERT_INVALID``) if one
    does not parse. An empty file holds none."""
    marker = b"-----BEGIN X509 CRL-----"
    crls = []
    for chunk in data.split(marker)[1:]:
        try:
            crls.append(x509.load_pem_x509_crl(marker + chunk))
        except ValueError as err:
            raise CertificateInvalid(CERT_INVALID, f"not a PEM CRL: {err}",
                                     "fetch the CRL from the controller: GET /cluster/crl"
                                     ) from err
    return crls


def check_crls_signed(crls: Iterable[x509.CertificateRevocationList],
                      trust: Iterable[x509.Certificate]) -> None:
    """Raise CertificateInvalid (``CERT_INVALID``) unless every CRL is signed by a CA of
    ``trust``: a CRL of another CA is not the cluster's word."""
    anchors = list(trust)
    for crl in crls:
        if not any(_signed_by(crl, ca) for ca in anchors):
            raise CertificateInvalid(CERT_INVALID, f"a CRL of {crl.issuer.rfc4514_string()} "
                                     "is not signed by a CA of the cluster",
                                     "fetch the CRL from the controller: GET /cluster/crl")


def check_crl(cert: x509.Certificate, crls: Iterable[x509.CertificateRevocationList],
              trust: Iterable[x509.Certificate]) -> None:
    """Raise CertificateRevoked (``CERT_REVOKED``) if a CRL signed by ``cert``'s CA (one of
    ``trust``) lists it; CRLs of other issuers, or not signed by their CA, are ignored."""
    anchors = list(trust)
    for crl in crls:
        if crl.issuer != cert.issuer:
            continue
        if not any(_signed_by(crl, ca) for ca in anchors):
            continue
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None:
            raise CertificateRevoked(
                CERT_REVOKED, f"the certificate {cert.serial_number:x} of "
                f"{cert.subject.rfc4514_string()} was revoked at "
                f"{entry.revocation_date_utc.isoformat()}", _HINT)


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    key = ca.public_key()
    return (crl.issuer == ca.subject and isinstance(key, ec.EllipticCurvePublicKey)
            and crl.is_signature_valid(key))
