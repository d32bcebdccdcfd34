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
closed.
"""

from __future__ import annotations

import logging
import ssl
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from starlette.types import ASGIApp, Receive, Scope, Send

from segue.api.base import error_detail
from segue.domain.errors import SegueError
from segue.httpapi import error_response
from segue.security import pem, pki, store
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


def load_cluster_ca(pki_dir: Path) -> x509.Certificate | None:
    """The cluster's CA certificate from the current credential set (None, logged, when it
    cannot be read)."""
    try:
        return pem.cert_from_pem(store.current_credentials(pki_dir).ca_cert.read_bytes())
    except (OSError, SegueError) as err:
        log.error("no cluster CA in %s (%s): every request over TCP is refused", pki_dir, err)
        return None


def controller_identity(scope: Scope, ca_cert: x509.Certificate | None,
                        now: datetime) -> pki.Identity:
    """The controller's identity proven by the request's client certificate; raises
    ``AuthenticationRequired``, ``CertificateUntrusted``/``CertificateExpired``,
    ``CertificateInvalid`` or ``PeerNotAllowed`` (module doc)."""
    chain = client_cert_chain(scope)
    if not chain:
        raise AuthenticationRequired(AUTH_REQUIRED, "this agent takes commands over the "
                                     "network only from the controller's certificate",
                                     "send the command through the controller")
    if ca_cert is None:
        raise CertificateUntrusted(CERT_UNTRUSTED, "this agent cannot read its cluster's CA",
                                   "check the agent's pki_dir (segue agent join)")
    try:
        identity = pki.verify_peer(ssl.PEM_cert_to_DER_cert(chain[0]), ca_cert, now)
    except ValueError as err:
        raise CertificateInvalid(CERT_INVALID, f"the client certificate does not parse: {err}",
                                 "use the controller's certificate") from err
    pki.require_controller(identity)
    return identity


class ControllerOnly:
    """ASGI middleware: TCP requests must come with the controller's certificate."""

    def __init__(self, app: ASGIApp, pki_dir: Path | None) -> None:
        self.app = app
        self.pki_dir = pki_dir
        self.ca_cert = load_cluster_ca(pki_dir) if pki_dir is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.pki_dir is None or scope["type"] != "http" or \
                is_unix_socket(scope):
            await self.app(scope, receive, send)
            return
        try:
            controller_identity(scope, self.ca_cert, datetime.now(UTC))
        except SegueError as err:
            log.warning("refused %s %s from %s: %s: %s", scope.get("method"),
                        scope.get("path"), scope.get("client"), err.code, err.message)
            await error_response(error_detail(err), err.kind)(scope, receive, send)
            return
        await self.app(scope, receive, send)
