"""How hosts get into the cluster and stay in it: join tokens, the CA, joins, renewals
(bodies: ``segue.api.join``; store: ``controller.join_tokens``; the CA: the controller's
``pki_dir``, made by ``segue cluster init``).

- ``POST /hosts/{name}/join-token`` (``host admit``, admins): a one-time token bound to
  host ``name``, valid ``ttl_s``; its secret is in this answer only (201).
- ``GET /cluster/ca`` (public): the CA certificate; 404 ``CA_MISSING`` before
  ``segue cluster init``.
- ``POST /join`` (public: the token is the credential): the host's certificate for the key
  of its signing request. The token is checked first (401 ``JOIN_TOKEN_INVALID``,
  ``JOIN_TOKEN_USED``, ``JOIN_TOKEN_EXPIRED``; 403 ``JOIN_TOKEN_WRONG_HOST``), then the
  request is certified (400 ``CSR_INVALID``, ``CERT_NAME_INVALID``), and only then is the
  token used: a join refused for another reason than its token leaves the token unused.
  The host enters the inventory with its first heartbeat.
- ``POST /hosts/{name}/certificate`` (``host join``: a host's certificate, for itself only,
  403 ``CERT_WRONG_HOST``; a revoked one is refused 401 ``CERT_REVOKED`` by the gate): a
  new certificate for a new key (renewal; during a CA rotation, onto the new CA).

The CAs are read from ``pki_dir`` at each request (404 ``CA_MISSING`` without one): the
certificates come from the issuing CA (``controller.trust.issuing_ca``), with the trust
bundle; join tickets pin, and ``GET /cluster/ca`` shows, ``ca/ca-cert.pem`` (the CA the
controller's own certificate is of until a rotation finishes). Every issued serial is kept
(``controller.trust``); a join lifts its host's revocation. Every
state-changing call is in the audit log, its token redacted and its signing request trimmed
(``security.redaction``); a join's actor is ``anonymous`` and its target the host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Request
from starlette.datastructures import State

from segue.api.join import (
    ClusterCA,
    CreateJoinTokenBody,
    IssuedCertificate,
    JoinBody,
    JoinTokenCreated,
    RenewBody,
)
from segue.controller import join_tokens, trust
from segue.controller.authz import public, requires
from segue.controller.config import ControllerConfig
from segue.controller.db import Database
from segue.controller.models import utcnow
from segue.security import ca_rotation, pem, pki, tokens
from segue.security.actors import Actor, require_self
from segue.security.ca_rotation import ClusterCAs
from segue.security.errors import CA_MISSING, CredentialsMissing
from segue.security.pki import CertificateAuthority

log = logging.getLogger(__name__)
router = APIRouter()
HostPath = Annotated[str, Path(min_length=1, max_length=253,
                               pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]*$")]
_WILDCARDS = {"0.0.0.0", "::"}


def _config(state: State) -> ControllerConfig:
    config: ControllerConfig = state.config
    return config


def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def load_cas(config: ControllerConfig) -> ClusterCAs:
    """The cluster's CAs from ``pki_dir``; CredentialsMissing (``CA_MISSING``, 404)."""
    if config.pki_dir is None:
        raise CredentialsMissing(CA_MISSING, "the controller has no pki_dir: the cluster has "
                                 "no CA", "set pki_dir in controller.toml, then run segue "
                                 "cluster init NAME --config controller.toml")
    return await asyncio.to_thread(ca_rotation.load_cas, config.pki_dir)


async def _load_ca(config: ControllerConfig) -> CertificateAuthority:
    """The CA join tickets pin (``ca/ca-cert.pem``)."""
    return (await load_cas(config)).current


async def _issue(request: Request, csr_pem: str, host: str) -> IssuedCertificate:
    """Host ``host``'s certificate from the issuing CA, kept in the records."""
    config, now = _config(request.app.state), utcnow()
    cas = await load_cas(config)
    ca = trust.issuing_ca(cas, now, timedelta(seconds=config.ca_rotation_grace_s))
    cert = pki.issue_host_certificate(ca, pem.csr_from_pem(csr_pem.encode()), host, now)

    await _db(request).run(trust.record_issued, host, cert, ca.cert, now)
    return IssuedCertificate(host=host, cert=pem.cert_to_pem(cert).decode(),
                             ca_cert=pem.cert_to_pem(ca.cert).decode(),
                             not_after=cert.not_valid_after_utc,
                             trust=[pem.cert_to_pem(c).decode() for c in cas.trust])


def cluster_trust(request: Request) -> trust.ClusterTrust:
    held: trust.ClusterTrust = request.app.state.trust
    return held


def controller_url(config: ControllerConfig) -> str | None:
    """Where hosts reach the controller, from its listen address (None: a wildcard or no
    TCP address, which names no place a host could reach)."""
    address = config.listen.address
    if address is None or address in _WILDCARDS:
        return None
    try:
        host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    except ValueError:
        host = address  # a DNS name
    return f"https://{host}:{config.listen.port}"


@router.post("/hosts/{name}/join-token", status_code=201, response_model=JoinTokenCreated,
             dependencies=[requires("host", "admit")])
async def create_join_token(request: Request, name: HostPath, body: CreateJoinTokenBody
                            ) -> JoinTokenCreated:
    """A one-time join token for host ``name``; its secret is in this answer only."""
    config = _config(request.app.state)
    ca = await _load_ca(config)
    now = utcnow()
    ticket, record = tokens.new_join_token(ca.cert, now, timedelta(seconds=body.ttl_s),
                                           host=name)
    await _db(request).run(join_tokens.add, record)
    log.info("join token %s made for host %s, valid until %s", record.id, name,
             record.expires_at.isoformat())
    return JoinTokenCreated(id=record.id, host=name, token=ticket.token,
                            ca_pin=ticket.ca_pin, expires_at=record.expires_at,
                            controller_url=controller_url(config))


@router.get("/cluster/ca", response_model=ClusterCA, dependencies=[public()])
async def cluster_ca(request: Request) -> ClusterCA:
    """The cluster's CA certificate: trust it only if it matches your join ticket's pin."""
    ca = await _load_ca(_config(request.app.state))
    return ClusterCA(cluster=ca.cluster, ca_cert=pem.cert_to_pem(ca.cert).decode())


@router.post("/join", response_model=IssuedCertificate,
             dependencies=[public(target="host:host")])
async def join(request: Request, body: JoinBody) -> IssuedCertificate:
    """A new host's certificate, for the key of its signing request, once its join token
    admits it (the token is used only when the certificate is issued)."""
    db, now = _db(request), utcnow()
    await load_cas(_config(request.app.state))
    await db.run(join_tokens.check, body.token, body.host, now)
    pki.check_host_name(body.host)
    pem.csr_from_pem(body.csr.encode())
    # certified before the token is used: a bad request leaves the token unused
    issued = await _issue(request, body.csr, body.host)
    record = await db.run(join_tokens.redeem, body.token, body.host, now)
    await db.run(trust.readmit, body.host)
    cluster_trust(request).revocations.readmit_host(body.host)
    log.info("host %s joined the cluster with join token %s", body.host, record.id)
    return issued


@router.post("/hosts/{name}/certificate", response_model=IssuedCertificate)
async def renew_certificate(request: Request, name: HostPath, body: RenewBody,
                            actor: Annotated[Actor, requires("host", "join")]
                            ) -> IssuedCertificate:
    """A new certificate of host ``name`` for a new key; a host renews its own only."""
    require_self(actor, name)
    issued = await _issue(request, body.csr, name)
    log.info("host %s renewed its certificate (until %s)", name, issued.not_after.isoformat())
    return issued
