"""Revoking hosts and rotating the cluster's CA (bodies: ``segue.api.trust``; state:
``controller.trust``; files: ``security.ca_rotation``).

- ``POST /hosts/{name}/revoke`` (``host admit``, admins): every certificate of the host is
  revoked, in the database and at once in memory (its requests get 401 ``CERT_REVOKED``,
  its renewal too); the host is marked disconnected and the controller sends it no command
  (``AgentPool.revoked``). 404 ``HOST_NOT_FOUND``, 409 ``HOST_ALREADY_REVOKED``. It comes
  back only by joining again with a new ticket.
- ``GET /cluster/crl`` (public): one CRL per trusted CA, PEM; hosts keep it as
  ``ca-crl.pem`` (QEMU reads it).
- ``GET /cluster/trust`` (public): the trust bundle and the issuing CA.
- ``POST /cluster/ca/rotate`` (``cluster admin``): a new CA beside the old one; the
  controller trusts both at once, and its own set gets the bundle (its certificate stays
  of the old CA, which every host trusts). 409 ``CA_ROTATION_IN_PROGRESS``.
- ``GET /cluster/ca/rotation`` (``cluster read``): which host is on which CA.
- ``POST /cluster/ca/rotate/finish?force=false`` (``cluster admin``): 409
  ``CA_ROTATION_HOSTS_LAGGING`` while a host (of the inventory, or certified and not
  revoked) is not known to be on the new CA (unless ``force``), else the controller's
  certificate is issued again by the new CA, the old CA is retired and dropped from the
  trust at once. A step that fails leaves the old CA
  trusted and the cluster talking.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

from cryptography import x509
from fastapi import APIRouter, Query, Request
from sqlalchemy.orm import Session

from segue.api.trust import (
    CRLs,
    HostOnCA,
    RevokeBody,
    RevokedHostView,
    RotationStatus,
    TrustBundle,
)
from segue.controller import trust
from segue.controller.api_join import HostPath, cluster_trust, load_cas
from segue.controller.authz import public, requires
from segue.controller.config import ControllerConfig
from segue.controller.db import Database
from segue.controller.models import utcnow
from segue.security import ca_rotation, pem, pki, revocation, store
from segue.security.actors import Actor
from segue.security.ca_rotation import ClusterCAs
from segue.security.errors import (
    CA_ROTATION_HOSTS_LAGGING,
    CARotationRefused,
    CredentialsMissing,
)
from segue.security.store import Credentials

log = logging.getLogger(__name__)
router = APIRouter()


def _config(request: Request) -> ControllerConfig:
    config: ControllerConfig = request.app.state.config
    return config


def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def _grace(request: Request) -> timedelta:
    return timedelta(seconds=_config(request).ca_rotation_grace_s)


@router.post("/hosts/{name}/revoke", response_model=RevokedHostView)
async def revoke_host(request: Request, name: HostPath, body: RevokeBody,
                      actor: Annotated[Actor, requires("host", "admit")]) -> RevokedHostView:
    """Revoke every certificate of host ``name`` (see the module doc)."""
    now = utcnow()
    held = cluster_trust(request)
    revoked = await _db(request).run(trust.revoke_host, name, body.reason, actor.name, now)
    held.revocations.add(revoked)
    held.revocations.revoke_host(name, now)
    return RevokedHostView(host=name, revoked_at=now, reason=body.reason,
                           serials=[f"{r.serial:x}" for r in revoked])


@router.get("/cluster/crl", response_model=CRLs, dependencies=[public()])
async def cluster_crl(request: Request) -> CRLs:
    """One CRL per CA the cluster trusts, each signed by its CA, PEM."""
    cas = await load_cas(_config(request))
    revoked = await _db(request).run(trust.revoked_serials)
    now = utcnow()
    authorities = [cas.current, *([cas.next] if cas.next else [])]
    crls = [revocation.build_crl(ca, revoked, now) for ca in authorities
            if ca.cert.public_key() == ca.key.public_key()]
    return CRLs(crls=revocation.crls_to_pem(crls).decode())


@router.get("/cluster/trust", response_model=TrustBundle, dependencies=[public()])
async def cluster_trust_bundle(request: Request) -> TrustBundle:
    """The CAs to trust (two during a rotation) and the one that issues now."""
    cas = await load_cas(_config(request))
    issuing = trust.issuing_ca(cas, utcnow(), _grace(request))
    return TrustBundle(cluster=cas.current.cluster,
                       ca_certs=[pem.cert_to_pem(c).decode() for c in cas.trust],
                       issuing_ca=pem.cert_to_pem(issuing.cert).decode(),
                       rotating=cas.rotating)


@router.post("/cluster/ca/rotate", response_model=RotationStatus,
             dependencies=[requires("cluster", "admin")])
async def start_rotation(request: Request) -> RotationStatus:
    """Start a CA rotation: a new CA, trusted at once beside the old one."""
    config, held = _config(request), cluster_trust(request)
    async with held.lock:
        await load_cas(config)  # CA_MISSING without a CA
        root = config.pki_dir
        assert root is not None  # load_cas raised without one
        now = utcnow()
        cas = await asyncio.to_thread(ca_rotation.start_rotation, root, now)
        await asyncio.to_thread(_reinstall_controller_set, root, cas, now, reissue=False)
        held.cas = cas.trust
        log.warning("CA rotation started: new CA %s beside %x", _serial(cas.next),
                    cas.current.cert.serial_number)
    return await _status(request, cas)


@router.get("/cluster/ca/rotation", response_model=RotationStatus,
            dependencies=[requires("cluster", "read")])
async def rotation_status(request: Request) -> RotationStatus:
    return await _status(request, await load_cas(_config(request)))


@router.post("/cluster/ca/rotate/finish", response_model=RotationStatus,
             dependencies=[requires("cluster", "admin")])
async def finish_rotation(request: Request,
                          force: Annotated[bool, Query(description=(
                              "finish although hosts are still on the old CA (they must "
                              "join again)"))] = False) -> RotationStatus:
    """Finish a CA rotation: the old CA is dropped (see the module doc)."""
    config, held = _config(request), cluster_trust(request)
    async with held.lock:
        cas = await load_cas(config)
        root = config.pki_dir
        assert root is not None
        if cas.next is None:
            ca_rotation.finish_rotation(root)  # raises CA_ROTATION_NOT_STARTED
        status = await _status(request, cas)
        if status.lagging and not force:
            raise CARotationRefused(
                CA_ROTATION_HOSTS_LAGGING, f"{len(status.lagging)} host(s) are not on the new "
                f"CA yet: {', '.join(status.lagging)}",
                "wait for their agents to renew (they do within minutes once the grace has "
                "passed; see segue cluster rotate-ca --status), or add --force: those hosts "
                "must then join again", hosts=status.lagging)
        now = utcnow()
        await asyncio.to_thread(_reinstall_controller_set, root, cas, now, reissue=True)
        new = await asyncio.to_thread(ca_rotation.finish_rotation, root)
        held.cas = [new.cert]
        log.warning("CA rotation finished: CA %x only (lagging, forced: %s)",
                    new.cert.serial_number, ", ".join(status.lagging) or "none")
    return await _status(request, await load_cas(config))


def _reinstall_controller_set(path: Path, cas: ClusterCAs, now: datetime, *,
                              reissue: bool) -> None:
    """The controller's set with the trust bundle (``reissue``: a new key and a
    certificate of the new CA, with the same names, trusting the new CA only). A controller
    without its own set (it serves the unix socket only) has nothing to change."""
    try:
        current = store.load_credentials(store.current_credentials(path))
    except CredentialsMissing:
        log.warning("the controller has no credential set in %s: only the CAs change", path)
        return
    if not reissue or cas.next is None:
        store.install_credentials(path, Credentials(current.key, current.cert,
                                                    cas.current.cert, tuple(cas.trust)), now)
        return
    san = current.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    key = pki.generate_key()
    cert = pki.issue_controller_certificate(
        cas.next, pki.create_request(pki.Identity.controller(), key), now,
        dns_names=[d for d in san.get_values_for_type(x509.DNSName)
                   if d != pki.CONTROLLER_NAME],
        ip_addresses=[ip for ip in san.get_values_for_type(x509.IPAddress)
                      if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)])
    store.install_credentials(path, Credentials(key, cert, cas.next.cert), now)


async def _status(request: Request, cas: ClusterCAs) -> RotationStatus:
    latest, hosts = await _db(request).run(_latest_and_hosts)
    issuing = trust.issuing_ca(cas, utcnow(), _grace(request))
    rows, lagging = [], []
    for host in sorted(set(hosts) | set(latest)):
        row = latest.get(host)
        if row is None:
            ca = "unknown"
        elif cas.next is None:
            ca = "current" if row[1] == _serial(cas.current) else "unknown"
        else:
            ca = {_serial(cas.next): "new", _serial(cas.current): "old"}.get(row[1],
                                                                             "unknown")
        if cas.next is not None and ca != "new":  # joined, or in the inventory
            lagging.append(host)
        rows.append(HostOnCA(host=host, ca=ca, serial=row[0] if row else None,
                             issued_at=row[2] if row else None))
    return RotationStatus(rotating=cas.rotating, current_ca=f"{_serial(cas.current)}",
                          next_ca=_serial(cas.next) if cas.next else None,
                          issuing_ca=_serial(issuing), hosts=rows, lagging=lagging)


def _latest_and_hosts(session: Session) -> tuple[dict[str, tuple[str, str, datetime]],
                                                  list[str]]:
    latest = {h: (r.serial, r.issuer, r.issued_at)
              for h, r in trust.latest_certificates(session).items()}
    revoked = trust.revoked_hosts(session)
    return latest, [h for h in trust.inventory_hosts(session) if h not in revoked]


def _serial(ca: pki.CertificateAuthority | None) -> str:
    return f"{ca.cert.serial_number:x}" if ca is not None else "-"
