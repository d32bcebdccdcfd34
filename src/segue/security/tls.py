"""TLS contexts for the controller's and the agents' HTTPS: mutual TLS with the cluster's CA
as the only trust, from a credential set (``segue.security.store``).

- ``server_context``: TLS 1.3, this peer's certificate, and a client certificate required
  and verified against the cluster's CA (no system CAs). The handshake proves the client is
  of the cluster; which peer it is, and whether it may ask what it asks, is the
  application's check: ``peer_identity`` then ``pki.require_controller`` (an agent's
  commands) or ``pki.require_host`` (a host's heartbeat).
- ``client_context``: the same trust, this peer's certificate offered, and the server's
  name checked: connect with ``server_hostname`` set to the peer's DNS name, which its
  certificate bears only if it is that peer: ``segue-controller`` for the controller (no
  host may bear it), the host's name for an agent (with httpx: the URL's host, or the
  request extension ``sni_hostname`` when the URL holds an address).
- ``reload_certificate``: the live context loads a new certificate and key, and every later
  handshake presents them; connections already open keep theirs. It cannot change the
  trusted CAs (a context can add a CA, never drop one).
- ``LiveServerContext``: rotation of everything without restarting a server: the context
  the server was started with stays, and its SNI callback (which OpenSSL calls for every
  handshake, with or without a server name) hands the handshake the newest context
  (``SSLObject.context = ...``); the handshake then presents that context's certificate
  and verifies the client against that context's CAs. A changed trust bundle (a CA
  rotation) is a new context swapped in.

Errors: what ``ssl`` raises for unreadable or mismatched files (``ssl.SSLError``, OSError);
``peer_identity`` raises as ``pki.verify_peer`` does, and CertificateUntrusted
(``CERT_UNTRUSTED``) when the connection carries no peer certificate.
"""

from __future__ import annotations

import ssl
from datetime import datetime

from segue.security.errors import CERT_UNTRUSTED, CertificateUntrusted
from segue.security.pki import Identity, TrustAnchors, verify_peer
from segue.security.store import CredentialPaths

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_3


def server_context(paths: CredentialPaths) -> ssl.SSLContext:
    """A server context that presents the set's certificate and requires a client
    certificate issued by the set's CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _configure(ctx, paths)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(paths: CredentialPaths) -> ssl.SSLContext:
    """A client context that presents the set's certificate and accepts only a server
    certificate issued by the set's CA for the ``server_hostname`` connected to."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname on
    _configure(ctx, paths)
    return ctx


def reload_certificate(ctx: ssl.SSLContext, paths: CredentialPaths) -> None:
    """Present the set's (new) certificate and key in every later handshake of ``ctx``."""
    ctx.load_cert_chain(paths.cert, paths.key)


class LiveServerContext:
    """A server context (``front``, given to the server once) whose handshakes use the
    context last ``swap``-ped in (see the module doc)."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.front = ctx
        self.current = ctx
        ctx.sni_callback = self._pick

    def swap(self, ctx: ssl.SSLContext) -> None:
        """Use ``ctx`` for every later handshake; open connections keep theirs."""
        self.current = ctx

    def _pick(self, conn: ssl.SSLObject | ssl.SSLSocket, _name: str | None,
              _ctx: ssl.SSLContext) -> None:
        current = self.current
        if current is not self.front:
            conn.context = current


def peer_identity(conn: ssl.SSLSocket | ssl.SSLObject, ca_cert: TrustAnchors,
                  now: datetime) -> Identity:
    """The proven identity of the peer of a finished handshake (``pki.verify_peer``)."""
    der = conn.getpeercert(binary_form=True)
    if not der:
        raise CertificateUntrusted(CERT_UNTRUSTED, "the peer presented no certificate",
                                   "connect with the certificate of this cluster")
    return verify_peer(der, ca_cert, now)


def _configure(ctx: ssl.SSLContext, paths: CredentialPaths) -> None:
    ctx.minimum_version = MINIMUM_VERSION
    ctx.load_verify_locations(cafile=paths.ca_cert)
    ctx.load_cert_chain(paths.cert, paths.key)
