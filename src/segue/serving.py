"""Serve an ASGI app with uvicorn on a TCP address and/or a unix socket.

The unix socket lets local tools reach a service whose address lives inside a network
namespace (the lab's agents and controller).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from segue.settings import ListenConfig


def require_listen(listen: ListenConfig, what: str) -> None:
    """Raise InvalidRequest (``<WHAT>_CONFIG_INVALID``) unless ``listen`` names an address or
    a unix socket."""
    listen.require(f"{what.upper()}_CONFIG_INVALID", f"the {what} configuration")


def listen_sockets(listen: ListenConfig) -> list[socket.socket]:
    """Bound sockets for ``listen`` (a stale unix socket file is replaced)."""
    socks = []
    if listen.address is not None:
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((listen.address, listen.port))
        socks.append(tcp)
    if listen.unix_socket is not None:
        path = Path(listen.unix_socket)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        uds = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        uds.bind(str(path))
        os.chmod(path, 0o600)
        socks.append(uds)
    return socks


def serve(app: FastAPI, listen: ListenConfig, what: str) -> None:
    """Serve ``app`` until SIGTERM/SIGINT; raises InvalidRequest (``<WHAT>_CONFIG_INVALID``)
    if there is nothing to listen on."""
    require_listen(listen, what)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # qemu.qmp logs every refused connect while QEMU creates its socket; our QMPSession
    # reports the errors that matter, with codes.
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    socks = listen_sockets(listen)
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", access_log=False,
                                           lifespan="on"))
    asyncio.run(server.serve(sockets=socks))
