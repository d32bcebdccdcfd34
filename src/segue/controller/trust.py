"""What the controller trusts and refuses: the cluster's CAs (two during a CA rotation), the
certificates it issued and the hosts it revoked (tables: ``controller.trust_models``).

``ClusterTrust`` lives on ``app.state.trust``: the CAs client certificates are verified
against and the revocations they are checked against, in memory (loaded at start, changed
by a revocation, a join or a rotation step), so that checking a request costs no I/O.

The issuing CA: while a rotation runs, the new CA issues once ``grace`` has passed since it
was made (``ControllerConfig.ca_rotation_grace_s``): agents fetch the trust bundle every few
minutes, so by then every running host trusts the new CA before any host presents a
certificate of it. Before that, and outside a rotation, the CA issues.

Errors: ``NotFound`` ``HOST_NOT_FOUND`` (revoking a host the controller never knew),
``Conflict`` ``HOST_ALREADY_REVOKED``; ``CertificateRevoked`` and what ``pki`` raises.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.orm import Session

from segue.controller.models import Host, HostState
from segue.controller.trust_models import HostRevocation, IssuedCertificate
from segue.domain.errors import Conflict, NotFound, SegueError
from segue.security import ca_rotation, pki
from segue.security.ca_rotation import ClusterCAs
from segue.security.revocation import Revocations, RevokedCertificate

log = logging.getLogger(__name__)
HOST_ALREADY_REVOKED = "HOST_ALREADY_REVOKED"


@dataclass
class ClusterTrust:
    """The controller's trust in memory (see the module doc); ``cas`` empty: no CA, client
    certificates are ignored."""

    cas: list[x509.Certificate] = field(default_factory=list)
    revocations: Revocations = field(default_factory=Revocations)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one rotation step at a time

    def verify(self, cert: x509.Certificate, now: datetime) -> pki.Identity:
        """The identity ``cert`` proves: issued by a CA of the cluster, not revoked. Raises
        as ``pki.verify_certificate``, CertificateRevoked (``CERT_REVOKED``)."""
        identity = pki.verify_certificate(cert, self.cas, now)
        self.revocations.check(cert, identity)
        return identity


def load_trust(session: Session, pki_dir: Path | None) -> ClusterTrust:
    """The trust at start: the CAs in ``pki_dir`` (none, logged, if unreadable) and the
    revocations of the database."""
    trust = ClusterTrust()
    if pki_dir is not None:
        try:
            trust.cas = ca_rotation.load_cas(pki_dir).trust
        except SegueError as err:
            log.warning("no cluster CA in %s (%s): client certificates are not accepted",
                        pki_dir, err.message)
    trust.revocations.add(RevokedCertificate(int(row.serial, 16), row.host, row.revoked_at,
                                             row.reason or "")
                          for row in session.scalars(select(IssuedCertificate).where(
                              IssuedCertificate.revoked_at.is_not(None)))
                          if row.revoked_at is not None)
    for row in session.scalars(select(HostRevocation)):
        trust.revocations.revoke_host(row.host, row.revoked_at)
    return trust


def issuing_ca(cas: ClusterCAs, now: datetime, grace: timedelta) -> pki.CertificateAuthority:
    """The CA that issues at ``now`` (see the module doc)."""
    if cas.next is not None and now >= cas.next.cert.not_valid_before_utc + pki.CLOCK_SKEW \
            + grace:
        return cas.next
    return cas.current


def record_issued(session: Session, host: str, cert: x509.Certificate,
                  issuer: x509.Certificate, now: datetime) -> None:
    """Keep the serial of a certificate just issued to ``host``."""
    session.add(IssuedCertificate(serial=f"{cert.serial_number:x}", host=host,
                                  issuer=f"{issuer.serial_number:x}", issued_at=now,
                                  not_after=cert.not_valid_after_utc))


def readmit(session: Session, host: str) -> None:
    """``host`` joined again: its revocation cutoff goes (its old serials stay revoked)."""
    row = session.get(HostRevocation, host)
    if row is not None:
        session.delete(row)


def revoke_host(session: Session, host: str, reason: str, by: str,
                now: datetime) -> list[RevokedCertificate]:
    """Revoke every certificate of ``host``: its serials (each one the controller issued
    and not yet revoked) and a cutoff for any other; mark it disconnected. The revoked
    serials. Raises NotFound (``HOST_NOT_FOUND``) for a host neither in the inventory nor
    ever certified, Conflict (``HOST_ALREADY_REVOKED``)."""
    inventory = session.scalars(select(Host).where(Host.name == host)).first()
    issued = list(session.scalars(select(IssuedCertificate).where(
        IssuedCertificate.host == host)))
    if inventory is None and not issued:
        raise NotFound("HOST_NOT_FOUND", f"no host named {host} in the inventory, and none "
                       "was ever certified", "check the name: segue host list", host=host)
    if session.get(HostRevocation, host) is not None:
        raise Conflict(HOST_ALREADY_REVOKED, f"host {host} is revoked already",
                       "to let it back in, join it again with a new ticket (segue host "
                       "token; segue agent join --force)", host=host)
    session.add(HostRevocation(host=host, revoked_at=now, reason=reason, revoked_by=by))
    revoked = []
    for row in issued:
        if row.revoked_at is None:
            row.revoked_at, row.reason = now, reason
        revoked.append(RevokedCertificate(int(row.serial, 16), host, row.revoked_at, reason))
    if inventory is not None:
        inventory.state = HostState.DISCONNECTED
    log.warning("host %s revoked by %s (%d certificates): %s", host, by, len(revoked),
                reason or "no reason given")
    return revoked


def revoked_serials(session: Session) -> list[RevokedCertificate]:
    """Every revoked serial still within its validity (what the CRL lists)."""
    rows = session.scalars(select(IssuedCertificate).where(
        IssuedCertificate.revoked_at.is_not(None)))
    return [RevokedCertificate(int(r.serial, 16), r.host, r.revoked_at, r.reason or "")
            for r in rows if r.revoked_at is not None]


def latest_certificates(session: Session) -> dict[str, IssuedCertificate]:
    """The last certificate issued to each host not revoked (by issue time)."""
    revoked = {r.host for r in session.scalars(select(HostRevocation))}
    latest: dict[str, IssuedCertificate] = {}
    for row in session.scalars(select(IssuedCertificate).order_by(
            IssuedCertificate.issued_at)):
        if row.host not in revoked:
            latest[row.host] = row
    return latest


def revoked_hosts(session: Session) -> set[str]:
    return set(session.scalars(select(HostRevocation.host)))


def inventory_hosts(session: Session) -> list[str]:
    return list(session.scalars(select(Host.name).order_by(Host.name)))
