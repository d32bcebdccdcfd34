"""Run the agent: uvicorn on the management address and, if configured, a unix socket.

The unix socket lets local tools (the lab CLI) reach an agent whose management address
lives inside a network namespace.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

import uvicorn

from segue.agent.app import create_app
from segue.agent.config import AgentConfig


def _sockets(config: AgentConfig) -> list[socket.socket]:
    socks = []
    if config.listen.address is not None:
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind((config.listen.address, config.listen.port))
        socks.append(tcp)
    if config.listen.unix_socket is not None:
        path = Path(config.listen.unix_socket)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        uds = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        uds.bind(str(path))
        os.chmod(path, 0o600)
        socks.append(uds)
    return socks


def run_agent(config: AgentConfig) -> None:
    """Serve until SIGTERM/SIGINT; VMs keep running after the agent stops."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # qemu.qmp logs every refused connect while QEMU creates its socket; our QMPSession
    # reports the errors that matter, with codes.
    logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
    socks = _sockets(config)
    if not socks:
        raise SystemExit("the agent configuration has neither listen.address nor unix_socket")
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level="info",
                                           access_log=False, lifespan="on"))
    asyncio.run(server.serve(sockets=socks))
