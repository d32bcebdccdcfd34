"""Only the controller commands an agent over the network.

An agent with credentials (``pki_dir``) serves HTTPS on its TCP address and requires a
client certificate of the cluster in the handshake (``segue.serving``); this gate then
checks, before any route runs, that the certificate is the controller's
(``segue://controller``): another host's certificate is refused 403 ``CERT_WRONG_ROLE``, a
request that reached the app with none 401 ``AUTH_REQUIRED``, one that does not verify
against the cluster's CA 401 ``CERT_UNTRUSTED``/``CERT_EXPIRED``/``CERT_INVALID``. Refusals
are logged with the peer. The unix socket (mode 0600) is root's and passes.

Without credentials the gate lets everything through: the agent then serves TCP only with
``insecure_plain_http`` set (``segue.serving.server_tls_for`` refuses to start otherwise).
With a ``pki_dir`` whose CA cannot be read, every TCP request is refused: the gate fails
closed. The gate trusts the CAs of the current set's ``ca-cert.pem`` (two during a CA
rotation) and refuses what its ``ca-crl.pem`` revokes (401 ``CERT_REVOKED``); it looks for
a new set at most every ``TRUST_RECHECK_S`` seconds, so a new trust bundle takes effect
without a restart.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from starlette.types import ASGIApp, Receive, Scope, Send

from segue.api.base import error_detail
from segue.domain.errors import SegueError
from segue.httpapi import error_response
from segue.security import pki, revocation, store
from segue.security.errors import (
    AUTH_REQUIRED,
    CERT_INVALID,
    CERT_UNTRUSTED,
    AuthenticationRequired,
    CertificateInvalid,
    CertificateUntrusted,
)
from segue.security.peers import client_cert_chain, is_unix_socket

log = logging.getLogger(__name__)


TRUST_RECHECK_S = 5.0


@dataclass(frozen=True)
class AgentTrust:
    """The CAs an agent trusts and the CRLs it holds, from one credential set."""

    cas: list[x509.Certificate]
    crls: list[x509.CertificateRevocationList]


def load_cluster_ca(pki_dir: Path) -> AgentTrust | None:
    """The cluster's CAs and CRLs from the current credential set (None, logged, when the
    CAs cannot be read; a CRL that cannot be read is logged and left out)."""
    try:
        paths = store.current_credentials(pki_dir)
        cas = store.load_trust(paths)
    except (OSError, SegueError) as err:
        log.error("no cluster CA in %s (%s): every request over TCP is refused", pki_dir, err)
        return None
    crls: list[x509.CertificateRevocationList] = []
    crl_file = paths.dir / store.CA_CRL
    if crl_file.is_file():
        try:
            crls = revocation.crls_from_pem(crl_file.read_bytes())
        except (OSError, SegueError) as err:
            log.error("the CRL %s cannot be read (%s): revoked peers are not refused",
                      crl_file, err)
    return AgentTrust(cas, crls)


class TrustCache:
    """The current set's ``AgentTrust``, looked up again at most every ``TRUST_RECHECK_S``."""

    def __init__(self, pki_dir: Path) -> None:
        self.pki_dir = pki_dir
        self._checked = time.monotonic()
        self._dir = self._current_dir()
        self.trust = load_cluster_ca(pki_dir)

    def get(self) -> AgentTrust | None:
        now = time.monotonic()
        if now - self._checked >= TRUST_RECHECK_S:
            self._checked = now
            current = self._current_dir()
            if current != self._dir:
                self._dir, self.trust = current, load_cluster_ca(self.pki_dir)
                log.info("trusting the CAs of %s", current)
        return self.trust

    def _current_dir(self) -> Path | None:
        try:
            return store.current_credentials(self.pki_dir).dir
        except SegueError:
            return None


def controller_identity(scope: Scope, trust: AgentTrust | None,
                        now: datetime) -> pki.Identity:
    """The controller's identity proven by the request's client certificate; raises
    ``AuthenticationRequired``, ``CertificateUntrusted``/``CertificateExpired``,
    ``CertificateInvalid`` or ``PeerNotAllowed`` (module doc)."""
    chain = client_cert_chain(scope)
    if not chain:
        raise AuthenticationRequired(AUTH_REQUIRED, "this agent takes commands over the "
                                     "network only from the controller's certificate",
                                     "send the command through the controller")
    if trust is None:
        raise CertificateUntrusted(CERT_UNTRUSTED, "this agent cannot read its cluster's CA",
                                   "check the agent's pki_dir (segue agent join)")
    try:
        cert = pki.load_der_certificate(ssl.PEM_cert_to_DER_cert(chain[0]))
    except ValueError as err:
        raise CertificateInvalid(CERT_INVALID, f"the client certificate does not parse: {err}",
                                 "use the controller's certificate") from err
    identity = pki.verify_certificate(cert, trust.cas, now)
    revocation.check_crl(cert, trust.crls, trust.cas)
    pki.require_controller(identity)
    return identity


class ControllerOnly:
    """ASGI middleware: TCP requests must come with the controller's certificate."""

    def __init__(self, app: ASGIApp, pki_dir: Path | None) -> None:
        self.app = app
        self.pki_dir = pki_dir
        self.trust = TrustCache(pki_dir) if pki_dir is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.pki_dir is None or scope["type"] != "http" or \
                is_unix_socket(scope):
            await self.app(scope, receive, send)
            return
        try:
            controller_identity(scope, self.trust.get() if self.trust else None,
                                datetime.now(UTC))
        except SegueError as err:
            log.warning("refused %s %s from %s: %s: %s", scope.get("method"),
                        scope.get("path"), scope.get("client"), err.code, err.message)
            await error_response(error_detail(err), err.kind)(scope, receive, send)
            return
        await self.app(scope, receive, send)
