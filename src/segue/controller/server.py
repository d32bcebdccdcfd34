"""Run the controller: uvicorn on its TCP address and/or its unix socket.

The unix socket lets the CLI on this machine reach a controller without any network setup
(``segue`` finds the lab controller's socket by itself).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

import uvicorn

from segue.agent.config import ListenConfig
from segue.controller.app import create_app
from segue.controller.config import ControllerConfig


def _sockets(listen: ListenConfig) -> list[socket.socket]:
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


def run_controller(config: ControllerConfig) -> None:
    """Serve until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    socks = _sockets(config.listen)
    if not socks:
        raise SystemExit("the controller configuration has neither listen.address "
                         "nor listen.unix_socket")
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="info",
                                           access_log=False, lifespan="on"))
    asyncio.run(server.serve(sockets=socks))
