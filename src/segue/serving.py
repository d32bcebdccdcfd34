"""Serve an ASGI app with uvicorn on a TCP address and/or a unix socket, the TCP address over
HTTPS when the service has the cluster's credentials.

The unix socket lets local tools reach a service whose address lives inside a network
namespace (the lab's agents and controller); it is plain HTTP and mode 0600: whoever reaches
it is root on that machine.

TLS (``ServerTLS``): the TCP listener presents the service's certificate from its credential
directory (``segue.security.store``: ``<root>/current``) and verifies a client's certificate
against the cluster's CA: required on an agent (only the controller commands it), optional
on the controller (users come with API tokens, hosts with their certificates). uvicorn does
not hand the client's certificate to the application, so the HTTP protocol used here
(``PeerCertProtocol``) puts it in each request's scope as the ASGI TLS extension has it
(``segue.security.peers``). One uvicorn server runs the app's lifespan on the plain
sockets; a second, sharing the app, serves the TLS socket once the first has started, and
both stop together. A new ``current`` set (a renewed certificate, or a new trust bundle
during a CA rotation) is made into a new context within ``RELOAD_INTERVAL_S`` and swapped
in for every later handshake (``tls.LiveServerContext``); connections already open keep
the old one. A set that cannot be loaded leaves the current context serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from segue.domain.errors import InvalidRequest, SegueError
from segue.security import store, tls
from segue.security.errors import CredentialsMissing
from segue.security.peers import tls_extension
from segue.settings import ListenConfig

log = logging.getLogger(__name__)
RELOAD_INTERVAL_S = 30.0
GRACEFUL_SHUTDOWN_S = 5  # a stop waits this long for open connections (a TLS peer may idle)


@dataclass(frozen=True)
class ServerTLS:
    """HTTPS on the TCP listener from the credential set ``root/current``;
    ``require_client``: refuse a handshake without a client certificate of the cluster."""

    root: Path
    require_client: bool

    def context(self) -> ssl.SSLContext:
        """A server context from the current set; raises CredentialsMissing without one."""
        ctx = tls.server_context(store.current_credentials(self.root))
        if not self.require_client:
            ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx


class PeerCertProtocol(H11Protocol):
    """uvicorn's h11 protocol that puts the TLS peer's certificate into every request's
    scope (``scope["extensions"]["tls"]``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        conn = transport.get_extra_info("ssl_object")
        if conn is None:
            return
        extension = tls_extension(conn)
        inner = self.app

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope.get("type") in ("http", "websocket"):
                scope = {**scope, "extensions": {**(scope.get("extensions") or {}),
                                                 "tls": extension}}
            await inner(scope, receive, send)

        self.app = app


def server_tls_for(listen: ListenConfig, pki_dir: Path | None, insecure_plain_http: bool,
                   what: str, *, require_client: bool) -> ServerTLS | None:
    """The TLS of a service's TCP listener: its credentials in ``pki_dir``; None for plain
    HTTP, only if there is no TCP listener or ``insecure_plain_http`` is set. Raises
    InvalidRequest (``<WHAT>_CONFIG_INVALID``) for a TCP listener without credentials."""
    if listen.address is None:
        return None
    if pki_dir is not None:
        try:
            store.current_credentials(pki_dir)
            return ServerTLS(pki_dir, require_client)
        except CredentialsMissing as err:
            if not insecure_plain_http:
                raise InvalidRequest(
                    f"{what.upper()}_CONFIG_INVALID",
                    f"the {what} listens on {listen.address}:{listen.port} but {pki_dir} "
                    f"holds no credentials: {err.message}", _join_hint(what),
                    field="pki_dir") from err
    if insecure_plain_http:
        log.warning("%s: plain HTTP on %s:%d: anyone on that network can call it "
                    "(insecure_plain_http)", what, listen.address, listen.port)
        return None
    raise InvalidRequest(f"{what.upper()}_CONFIG_INVALID",
                         f"the {what} listens on {listen.address}:{listen.port} without "
                         "credentials (no pki_dir)", _join_hint(what), field="pki_dir")


def _join_hint(what: str) -> str:
    how = ("run 'segue cluster init' on the controller" if what == "controller" else
           "join the host: 'segue host token HOST' on the controller, then the "
           "'segue agent join' it prints, here")
    return (f"{how} and set pki_dir; or listen on the unix socket only; or, on an isolated "
            "test network only, set insecure_plain_http = true")


def require_listen(listen: ListenConfig, what: str) -> None:
    """Raise InvalidRequest (``<WHAT>_CONFIG_INVALID``) unless ``listen`` names an address or
    a unix socket."""
    listen.require(f"{what.upper()}_CONFIG_INVALID", f"the {what} configuration")


def tcp_socket(listen: ListenConfig) -> socket.socket | None:
    """The bound TCP socket of ``listen`` (None without an address)."""
    if listen.address is None:
        return None
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((listen.address, listen.port))
    return tcp


def unix_socket(listen: ListenConfig) -> socket.socket | None:
    """The bound unix socket of ``listen``, mode 0600 (a stale socket file is replaced;
    None without a path)."""
    if listen.unix_socket is None:
        return None
    path = Path(listen.unix_socket)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    uds = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    uds.bind(str(path))
    os.chmod(path, 0o600)
    return uds


def listen_sockets(listen: ListenConfig) -> list[socket.socket]:
    """Bound sockets for ``listen``: the TCP one, then the unix one."""
    return [s for s in (tcp_socket(listen), unix_socket(listen)) if s is not None]


class _Follower(uvicorn.Server):
    """The second server: no signal handlers of its own (the first one's stop it)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _config(app: FastAPI, *, lifespan: Literal["on", "off"],
            ctx: ssl.SSLContext | None) -> uvicorn.Config:
    config = uvicorn.Config(app, log_level="info", access_log=False, lifespan=lifespan,
                            http=PeerCertProtocol,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    if ctx is not None:
        config.ssl_context_factory = lambda _config, _default: ctx
    return config


async def serve_async(app: FastAPI, listen: ListenConfig, server_tls: ServerTLS | None,
                      stop: threading.Event | None = None) -> None:
    """Serve ``app`` until SIGTERM/SIGINT (or ``stop`` is set): the unix socket plain, the
    TCP address over HTTPS with ``server_tls``, else plain."""
    tcp, uds = tcp_socket(listen), unix_socket(listen)
    live = (tls.LiveServerContext(server_tls.context())
            if server_tls is not None and tcp is not None else None)
    ctx = live.front if live is not None else None
    plain = [s for s in (uds, None if ctx else tcp) if s is not None]
    secure = [tcp] if ctx is not None and tcp is not None else []
    if not plain:  # TLS only: one server, with the lifespan
        plain, secure, first_ctx = secure, [], ctx
    else:
        first_ctx = None
    first = uvicorn.Server(_config(app, lifespan="on", ctx=first_ctx))
    tasks = [asyncio.create_task(first.serve(sockets=plain), name="server")]
    follower: uvicorn.Server | None = None
    if secure:
        follower = _Follower(_config(app, lifespan="off", ctx=ctx))
    reloader = (asyncio.create_task(_reload_credentials(live, server_tls), name="tls-reload")
                if live is not None and server_tls is not None else None)
    try:
        while (follower is not None or stop is not None) and not tasks[0].done():
            if follower is not None and first.started and len(tasks) == 1:
                tasks.append(asyncio.create_task(follower.serve(sockets=secure), name="tls"))
            if stop is not None and stop.is_set():
                first.should_exit = True
            if follower is not None and first.should_exit:
                follower.should_exit = True
            await asyncio.sleep(0.05)
        if follower is not None:
            follower.should_exit = True
        await asyncio.gather(*tasks)
    finally:
        if reloader is not None:
            reloader.cancel()


async def _reload_credentials(live: tls.LiveServerContext, server_tls: ServerTLS) -> None:
    """Swap a context of the new ``current`` set in when one appears (a renewal, or a new
    trust bundle)."""
    root = server_tls.root
    seen = store.current_credentials(root).dir
    while True:
        await asyncio.sleep(RELOAD_INTERVAL_S)
        try:
            paths = store.current_credentials(root)
            if paths.dir != seen:
                live.swap(server_tls.context())
                seen = paths.dir
                log.info("TLS: now serving the certificate and trust of %s", paths.dir)
        except (OSError, ssl.SSLError, ValueError, SegueError) as err:
            log.error("TLS: could not load the credentials in %s: %s (keeping the current "
                      "ones)", root, err)


def serve(app: FastAPI, listen: ListenConfig, what: str,
          server_tls: ServerTLS | None = None) -> None:
    """Serve ``app`` until SIGTERM/SIGINT; raises InvalidRequest (``<WHAT>_CONFIG_INVALID``)
    if there is nothing to listen on."""
    require_listen(listen, what)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # qemu.qmp logs every refused connect while QEMU creates its socket; our QMPSession
    # reports the errors that matter, with codes.
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    asyncio.run(serve_async(app, listen, server_tls))
