"""Who sent a request to the controller: the ``Actor`` its credentials prove, if any.

In this order:

1. ``Authorization: Bearer <token>``: the token's user (``controller.users.authenticate``,
   in the database's thread). A bad token is refused even where another credential would
   do: a caller who sends one means to be that user.
2. A client certificate of the cluster: the TLS transport puts the peer's chain in the
   request scope as the ASGI TLS extension has it,
   ``scope["extensions"]["tls"]["client_cert_chain"]`` (PEM strings, leaf first); the leaf
   is verified against the cluster's CAs (two during a CA rotation) and its revocations
   (``controller.trust.ClusterTrust``, in memory) and proves a host or the controller.
   Without a CA (the controller's ``pki_dir`` unset, or no CA in it) a
   certificate is ignored, as if there were none.
3. The controller's unix socket: root (``LOCAL_ROOT``). uvicorn serves a unix socket with
   no client address and the socket's path as the server (``client`` None, ``server``
   ``(path, None)``); a TCP connection always has both addresses. Anything that is not
   clearly the socket is TCP. The socket is mode 0600: whoever reaches it is root. Never
   put a proxy in front of it: all that comes through it is root.

Otherwise: no credentials (None).

Errors: ``ApiTokenRefused`` (``TOKEN_INVALID``, ``TOKEN_EXPIRED``, ``TOKEN_REVOKED``,
``USER_DISABLED``), ``CertificateUntrusted``/``CertificateExpired`` (``CERT_UNTRUSTED``,
``CERT_EXPIRED``, ``CERT_NOT_YET_VALID``), ``CertificateRevoked`` (``CERT_REVOKED``) and
``CertificateRefused`` (``CERT_INVALID``),
all ``unauthenticated``; ``Unavailable`` from the database.
"""

from __future__ import annotations

import logging
import ssl

from starlette.datastructures import Headers
from starlette.types import Scope

from segue.controller.db import Database
from segue.controller.models import utcnow
from segue.controller.trust import ClusterTrust
from segue.controller.users import authenticate
from segue.domain.errors import Unauthenticated
from segue.security import apitokens, pki
from segue.security.actors import LOCAL_ROOT, Actor, certificate_actor
from segue.security.errors import CERT_INVALID, CertificateInvalid
from segue.security.peers import client_cert_chain, is_unix_socket

log = logging.getLogger(__name__)


class CertificateRefused(Unauthenticated):
    """A client certificate of the cluster's CA that proves no identity."""


def bearer_token_of(scope: Scope) -> str | None:
    """The bearer token of the request (None without an Authorization header); raises
    ApiTokenRefused (``TOKEN_INVALID``) for another scheme."""
    header = Headers(scope=scope).get("authorization")
    return apitokens.bearer_token(header) if header is not None else None


async def identify(scope: Scope, db: Database, trust: ClusterTrust | None
                   ) -> Actor | None:
    """The actor the request's credentials prove, or None (see the module doc)."""
    token = bearer_token_of(scope)
    if token is not None:
        return await db.run(authenticate, token, utcnow())
    chain = client_cert_chain(scope)
    if chain and trust is not None and trust.cas:
        return certificate_actor(verify_client_certificate(chain[0], trust))
    if is_unix_socket(scope):
        return LOCAL_ROOT
    return None


def verify_client_certificate(leaf_pem: str, trust: ClusterTrust) -> pki.Identity:
    """The identity a client certificate (PEM) proves; raises as the module doc says."""
    try:
        der = ssl.PEM_cert_to_DER_cert(leaf_pem)
        return trust.verify(pki.load_der_certificate(der), utcnow())
    except (ValueError, CertificateInvalid) as err:
        code = err.code if isinstance(err, CertificateInvalid) else CERT_INVALID
        raise CertificateRefused(code, f"the client certificate proves no identity: {err}",
                                 "use the certificate the cluster's CA issued to this "
                                 "host") from err
