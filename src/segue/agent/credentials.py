"""A host's credentials of the cluster: joining it once, renewing the certificate before
it expires (``segue.security``: the PKI, tokens and credential directories).

``join_cluster`` is ``segue agent join``, run once on a new host with the ticket an admin
got from ``segue host token``:

1. everything given is checked before anything is asked or written: the host name, the
   token's shape, that the credential directory can be written and holds no set yet
   (``ALREADY_JOINED`` unless ``force``);
2. the CA certificate is fetched from ``GET /cluster/ca`` without trusting the connection
   (the host has no trust yet: over HTTPS the server's certificate is not checked for this
   one request) and accepted only if it matches the ticket's pin
   (``tokens.check_ca_pin``);
3. the host makes its key (it never leaves the host) and a signing request, and sends them
   with the token to ``POST /join``, over HTTPS verified by that CA alone, the server
   named ``segue-controller`` (a plain ``http://`` URL, the lab's, is not verified at all);
4. what comes back is checked (issued by the pinned CA, for this host, for this key) and
   installed as the directory's ``current`` set (``store.install_credentials``). Nothing is
   written before this step.

``sync_trust`` follows the cluster's trust: the bundle of ``GET /cluster/trust`` (two CAs
during a CA rotation) becomes the set's ``ca-cert.pem`` (a new set, same key and
certificate), and the CRLs of ``GET /cluster/crl`` its ``ca-crl.pem`` (QEMU reads it, so a
migration refuses a revoked peer). A bundle is taken only over the controller's mutual
TLS, only if it shares a CA with the one held (the controller cannot swap the cluster's
trust in one step) and still trusts this host's certificate; CRLs only if a CA of the
bundle signed them.

``renew_if_due`` replaces the certificate with one for a new key once less than a third of
its lifetime is left (``pki.needs_renewal``), or when its CA is not the one that issues now
(a CA rotation), through ``POST /hosts/{name}/certificate`` with the current certificate;
the new set becomes ``current`` and the services reload it on their own: no VM restarts (a
running QEMU keeps the TLS objects it made). ``run_renewals`` runs ``sync_trust`` then
``renew_if_due`` every ``interval`` seconds until cancelled; the agent's lifespan runs it
when the agent has a ``pki_dir``.

Errors: ``segue.security.errors`` as ``pki``, ``tokens`` and ``store`` raise them
(``CA_PIN_MISMATCH``, ``CA_PIN_INVALID``, ``JOIN_TOKEN_*``, ``CERT_*``,
``CREDENTIALS_MISSING``, ``PKI_STORAGE_UNAVAILABLE``); ``Conflict`` ``ALREADY_JOINED``;
the controller's errors as its client raises them (``CONTROLLER_UNREACHABLE``...).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from segue.api.join import IssuedCertificate
from segue.clients.base import UNIX_PREFIX
from segue.clients.controller import ControllerClient
from segue.domain.errors import Conflict
from segue.security import pem, pki, revocation, store, tokens
from segue.security.errors import (
    CERT_UNTRUSTED,
    PKI_STORAGE_UNAVAILABLE,
    CertificateUntrusted,
    CredentialStorageUnavailable,
)
from segue.security.store import CredentialPaths, Credentials

log = logging.getLogger(__name__)
RENEWAL_CHECK_INTERVAL = 300.0  # seconds between two looks at the trust and the certificate
JOIN_TIMEOUT = 30.0  # seconds one request of a join may take
ALREADY_JOINED = "ALREADY_JOINED"
ClientFactory = Callable[[], ControllerClient]
TransportFactory = Callable[[ssl.SSLContext | bool], httpx.AsyncBaseTransport]


class ServerNameTransport(httpx.AsyncBaseTransport):
    """Connects with TLS server name ``name`` whatever the URL's host (an address): the
    controller's certificate is checked for ``segue-controller``."""

    def __init__(self, inner: httpx.AsyncBaseTransport, name: str) -> None:
        self.inner, self.name = inner, name

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.extensions = {**request.extensions, "sni_hostname": self.name}
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def pinned_context(ca_pem: bytes) -> ssl.SSLContext:
    """A client context that trusts only the cluster's CA (``ca_pem``) and checks the
    server's name; TLS 1.3."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname on
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cadata=ca_pem.decode())
    return ctx


def http_transport(verify: ssl.SSLContext | bool) -> httpx.AsyncBaseTransport:
    """The transport of a join's requests: ``verify`` False for the CA's fetch, else the
    pinned context, the server named ``segue-controller``."""
    inner = httpx.AsyncHTTPTransport(verify=verify)
    return inner if verify is False else ServerNameTransport(inner, pki.CONTROLLER_NAME)


async def join_cluster(controller_url: str, token: str, ca_pin: str, host: str,
                       pki_dir: Path, *, force: bool = False, now: datetime | None = None,
                       transports: TransportFactory = http_transport) -> CredentialPaths:
    """Join the cluster as ``host`` (see the module doc) and return the installed set.
    ``transports`` makes the HTTP transport for a TLS setting (tests give one)."""
    pki.check_host_name(host)
    tokens.token_id(token)  # JOIN_TOKEN_INVALID for a malformed one, before any request
    _check_writable(pki_dir, force)
    if controller_url.startswith("http://"):
        log.warning("joining over plain HTTP (%s): the token and the certificate cross the "
                    "network unprotected; use https:// outside the lab", controller_url)

    def transport(verify: ssl.SSLContext | bool) -> httpx.AsyncBaseTransport | None:
        return None if controller_url.startswith(UNIX_PREFIX) else transports(verify)

    async with ControllerClient(controller_url, transport=transport(False),
                                timeout=JOIN_TIMEOUT) as discovery:
        offered = await discovery.cluster_ca()
    ca_pem = offered.ca_cert.encode()
    tokens.check_ca_pin(pem.cert_from_pem(ca_pem), ca_pin)
    key = pki.generate_key()
    csr = pem.csr_to_pem(pki.create_request(pki.Identity.host(host), key)).decode()
    async with ControllerClient(controller_url, transport=transport(pinned_context(ca_pem)),
                                timeout=JOIN_TIMEOUT) as controller:
        issued = await controller.join(host, token, csr)
    now = now or datetime.now(UTC)
    paths = store.install_credentials(
        pki_dir, checked_credentials(issued, key, host, ca_pin, now), now)
    log.info("host %s joined the cluster %s; credentials in %s", host,
             offered.cluster, paths.dir)
    return paths


def checked_credentials(issued: IssuedCertificate, key: pki.PrivateKey, host: str,
                        ca_pin: str, now: datetime) -> Credentials:
    """The set to install from what the controller issued, once it is proven: the CA the
    pin names, a certificate of it for ``host`` valid at ``now``, for ``key``. Raises
    CertificateUntrusted (``CA_PIN_MISMATCH``, ``CERT_UNTRUSTED``), CertificateInvalid,
    CertificateExpired, PeerNotAllowed (``CERT_WRONG_HOST``)."""
    trust = issued_trust(issued)
    pinned = next((ca for ca in trust if tokens.ca_pin(ca) == ca_pin), None)
    tokens.check_ca_pin(pinned or trust[0], ca_pin)
    return _checked(issued, key, host, trust, now)


def issued_trust(issued: IssuedCertificate) -> list[x509.Certificate]:
    """The CAs the controller says to trust (its CA alone when it names none)."""
    ca_cert = pem.cert_from_pem(issued.ca_cert.encode())
    return store.unique_certs([ca_cert, *(pem.cert_from_pem(c.encode())
                                          for c in issued.trust)])


def _checked(issued: IssuedCertificate, key: pki.PrivateKey, host: str,
             trust: list[x509.Certificate], now: datetime) -> Credentials:
    cert = pem.cert_from_pem(issued.cert.encode())
    pki.require_host(pki.verify_certificate(cert, trust, now), host)
    pki.check_key_matches(cert, key)
    ca_cert = pki.issuer_in(cert, trust) or trust[0]
    return Credentials(key, cert, ca_cert, tuple(c for c in trust if c is not ca_cert))


def check_continuity(held: list[x509.Certificate], offered: list[x509.Certificate]) -> None:
    """Raise CertificateUntrusted (``CERT_UNTRUSTED``) unless ``offered`` keeps a CA of
    ``held``: trust moves one CA at a time."""
    prints = {c.fingerprint(hashes.SHA256()) for c in held}
    if not any(c.fingerprint(hashes.SHA256()) in prints for c in offered):
        raise CertificateUntrusted(CERT_UNTRUSTED, "the controller offers a trust bundle "
                                   "without any CA this host trusts",
                                   "a CA rotation keeps the old CA until every host has the "
                                   "new one; join again (--force) if this cluster was made "
                                   "anew")


async def sync_trust(pki_dir: Path, client: ControllerClient,
                     now: datetime) -> x509.Certificate:
    """Follow the cluster's trust bundle and CRLs (see the module doc); the CA that issues
    now. Raises what the controller answers, CertificateUntrusted (a bundle that keeps no
    CA held, or does not trust this host's certificate), CertificateInvalid (a CRL no CA
    of the bundle signed); the current set stays then."""
    bundle = await client.cluster_trust()
    offered = store.unique_certs([pem.cert_from_pem(c.encode()) for c in bundle.ca_certs])
    issuing = pem.cert_from_pem(bundle.issuing_ca.encode())
    current = store.load_credentials(store.current_credentials(pki_dir))
    check_continuity(current.trust, offered)
    if store.bundle_digest(offered) != store.bundle_digest(current.trust):
        ca_cert = pki.issuer_in(current.cert, offered) or offered[0]
        paths = store.install_credentials(pki_dir, Credentials(
            current.key, current.cert, ca_cert,
            tuple(c for c in offered if c is not ca_cert)), now)
        log.info("this host now trusts %d CA(s) (%s)", len(offered), paths.dir)
    crl_pem = await client.cluster_crl()
    revocation.check_crls_signed(revocation.crls_from_pem(crl_pem), offered)
    if store.install_crl(pki_dir, crl_pem):
        log.info("this host's CRL was updated")
    return issuing


async def renew_if_due(pki_dir: Path, client: ControllerClient, now: datetime, *,
                       force: bool = False, issuing: x509.Certificate | None = None
                       ) -> CredentialPaths | None:
    """Replace the current set's certificate and key with new ones when it is due, or its
    CA is not ``issuing`` (a CA rotation), or ``force``: the new set's paths, or None when
    nothing was due. The new certificate must chain to the trust the controller sends,
    which must keep a CA this host trusts. Raises
    CredentialsMissing (``CREDENTIALS_MISSING``: never joined), what the controller
    answers, and what ``checked_credentials`` raises; the current set stays on failure."""
    current = store.load_credentials(store.current_credentials(pki_dir))
    if not force and not pki.needs_renewal(current.cert, now) and \
            (issuing is None or pki.issuer_in(current.cert, [issuing]) is not None):
        return None
    identity = pki.certificate_identity(current.cert)
    host = identity.name
    key = pki.generate_key()
    csr = pem.csr_to_pem(pki.create_request(pki.Identity.host(host), key)).decode()
    issued = await client.renew_certificate(host, csr)
    trust = issued_trust(issued)
    check_continuity(current.trust, trust)
    creds = _checked(issued, key, host, trust, now)
    paths = store.install_credentials(pki_dir, creds, now)
    log.info("host %s renewed its certificate: now %x, valid until %s (was until %s)", host,
             creds.cert.serial_number, creds.cert.not_valid_after_utc.isoformat(),
             current.cert.not_valid_after_utc.isoformat())
    return paths


async def run_renewals(pki_dir: Path, client_factory: ClientFactory,
                       interval: float = RENEWAL_CHECK_INTERVAL,
                       clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
    """``renew_if_due`` every ``interval`` s until cancelled, each time with a new client
    (``client_factory``: one that presents the current certificate). A failure is logged
    and tried again at the next check; it never stops the agent."""
    while True:
        try:
            async with client_factory() as client:
                issuing = await sync_trust(pki_dir, client, clock())
            async with client_factory() as client:  # the set sync_trust may have made
                await renew_if_due(pki_dir, client, clock(), issuing=issuing)
        except Exception as err:  # the agent goes on serving its VMs with the current set
            log.warning("renewing this host's certificate failed (trying again in %.0f s): "
                        "%s: %s", interval, type(err).__name__, err)
        await asyncio.sleep(interval)


def _check_writable(pki_dir: Path, force: bool) -> None:
    """Raise before any request if the join could not be installed in ``pki_dir``."""
    if (pki_dir / store.CURRENT).is_symlink() and not force:
        raise Conflict(ALREADY_JOINED, f"{pki_dir} already holds this host's credentials",
                       "renewal needs no new join (the agent renews on its own); to join "
                       "again, as a new host or after losing the CA, add --force")
    existing = next((p for p in (pki_dir, *pki_dir.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
        raise CredentialStorageUnavailable(
            PKI_STORAGE_UNAVAILABLE, f"cannot write the credential directory {pki_dir}",
            "run as root, or give --pki-dir a directory this user may write")
