"""ASGI wrappers that give a request the scope a real server would: the controller's unix
socket (uvicorn: no client address, the socket's path as the server), or a TLS client
certificate (the ASGI TLS extension, as the TLS transport sets it). httpx's ASGITransport
makes every request look like TCP from 127.0.0.1 without a certificate."""

from __future__ import annotations

from collections.abc import Sequence

import httpx
from starlette.types import ASGIApp, Receive, Scope, Send

SOCKET = "/run/segue/controller.sock"


class UnixSocketScope:
    """Requests as uvicorn serves them on a unix socket."""

    def __init__(self, app: ASGIApp, path: str = SOCKET) -> None:
        self.app, self.path = app, path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "client": None, "server": (self.path, None)}
        await self.app(scope, receive, send)


class ClientCertScope:
    """Requests over TLS with a client certificate chain (PEM strings, leaf first)."""

    def __init__(self, app: ASGIApp, chain: Sequence[str]) -> None:
        self.app, self.chain = app, list(chain)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            extensions = {**(scope.get("extensions") or {}),
                          "tls": {"client_cert_chain": self.chain, "tls_version": 0x0304}}
            scope = {**scope, "extensions": extensions, "scheme": "https"}
        await self.app(scope, receive, send)


def local_transport(app: ASGIApp) -> httpx.ASGITransport:
    """A transport to ``app`` through its unix socket: the caller is root (``local``)."""
    return httpx.ASGITransport(app=UnixSocketScope(app))


def cert_transport(app: ASGIApp, chain: Sequence[str]) -> httpx.ASGITransport:
    """A transport to ``app`` over TLS with a client certificate."""
    return httpx.ASGITransport(app=ClientCertScope(app, chain))


def token_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
