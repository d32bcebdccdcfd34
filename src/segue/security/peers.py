"""Who is at the other end of a request, as the HTTP transport saw it (pure: ASGI scopes are
plain dicts).

- ``is_unix_socket``: uvicorn serves a unix socket with no client address and the socket's
  path as the server (``client`` None, ``server`` ``(path, None)``); a TCP connection
  always has both addresses. Anything that is not clearly the socket is TCP.
- ``client_cert_chain``: the peer's certificate chain as the ASGI TLS extension has it,
  ``scope["extensions"]["tls"]["client_cert_chain"]`` (PEM strings, leaf first); the
  services' TLS transport (``segue.serving``) puts it there.
- ``tls_extension``: that extension's value for a finished TLS handshake.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

TLS_1_3 = 0x0304
_TLS_VERSIONS = {"TLSv1.3": TLS_1_3, "TLSv1.2": 0x0303}


def is_unix_socket(scope: Mapping[str, Any]) -> bool:
    """True if the request came through a unix socket as uvicorn serves one."""
    client, server = scope.get("client"), scope.get("server")
    has_peer = isinstance(client, list | tuple) and len(client) == 2 and \
        isinstance(client[1], int)
    socket_path = isinstance(server, list | tuple) and len(server) == 2 and \
        server[1] is None and isinstance(server[0], str) and server[0].startswith("/")
    return not has_peer and socket_path


def client_cert_chain(scope: Mapping[str, Any]) -> list[str]:
    """The peer's certificate chain the TLS transport put in the scope (PEM, leaf first);
    empty if there is none."""
    tls: Any = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") if isinstance(tls, dict) else None
    return [c for c in chain if isinstance(c, str)] if isinstance(chain, list | tuple) else []


def tls_extension(conn: ssl.SSLObject | ssl.SSLSocket) -> dict[str, Any]:
    """The ASGI TLS extension of a finished handshake: the peer's certificate (Python's
    ``ssl`` gives the leaf only) and the protocol version."""
    der = conn.getpeercert(binary_form=True)
    chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
    return {"client_cert_chain": chain,
            "tls_version": _TLS_VERSIONS.get(conn.version() or ""),
            "server_cert": None}
