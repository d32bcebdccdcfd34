"""Is the migration network path between two hosts usable? Tested, not assumed.

The destination opens a one-shot TCP listener on its migration address (port chosen by the
kernel); the source connects to it from its own migration address. The listener closes after
one accepted connection or ``LISTEN_TIMEOUT_S``; its task lives in the agent's TaskGroup and
is cancelled when the agent stops. A probe never raises for an unreachable peer: it answers
``ok: false`` with the reason.

Errors: ``Unavailable`` (``MIGRATION_NIC_UNAVAILABLE``) when this host has no usable migration
address, ``InvalidRequest`` (``PROBE_ADDRESS_INVALID``) for a peer that is not an IP address.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import time
from typing import Any

from segue.domain.errors import InvalidRequest

log = logging.getLogger(__name__)
LISTEN_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 3.0


class ProbeListeners:
    """The one-shot listeners of this agent; their tasks run in the TaskGroup given."""

    def __init__(self, tg: asyncio.TaskGroup, timeout: float = LISTEN_TIMEOUT_S) -> None:
        self._tg = tg
        self._timeout = timeout
        self._open: dict[asyncio.Task[None], asyncio.Server] = {}

    async def open(self, address: str) -> dict[str, Any]:
        """Listen on ``address`` (kernel-chosen port); ``{"address", "port"}``."""
        accepted = asyncio.Event()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set()
            writer.close()

        server = await asyncio.start_server(on_connect, host=address, port=0)
        port = int(server.sockets[0].getsockname()[1])
        task = self._tg.create_task(self._serve_once(server, accepted),
                                    name=f"probe-listener-{port}")
        self._open[task] = server
        task.add_done_callback(lambda done: self._open.pop(done, None))
        log.info("probe listener on %s:%d", address, port)
        return {"address": address, "port": port}

    async def _serve_once(self, server: asyncio.Server, accepted: asyncio.Event) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await accepted.wait()
        except TimeoutError:
            pass
        finally:
            server.close()
            await server.wait_closed()

    def close(self) -> None:
        """Close every open listener (the agent stops). The server is closed here too: a
        task cancelled before it first ran never runs its ``finally``."""
        for task, server in list(self._open.items()):
            server.close()
            task.cancel()


def check_peer_address(address: str) -> None:
    """Raises InvalidRequest (``PROBE_ADDRESS_INVALID``) unless ``address`` is an IP address."""
    try:
        ipaddress.ip_address(address)
    except ValueError as err:
        raise InvalidRequest("PROBE_ADDRESS_INVALID", f"{address!r} is not an IP address",
                             "pass the address open_probe_listener returned") from err


def describe_failure(err: BaseException, timeout: float) -> str:
    """A short reason for a failed connect (``connection refused (ECONNREFUSED)``,
    ``timed out after 3 s``)."""
    if isinstance(err, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(err, OSError) and err.errno is not None:
        return f"{os.strerror(err.errno).lower()} ({errno.errorcode.get(err.errno, err.errno)})"
    return str(err) or type(err).__name__


async def probe_path(source: str, address: str, port: int,
                     timeout: float = CONNECT_TIMEOUT_S) -> dict[str, Any]:
    """Connect from ``source`` to ``address:port`` within ``timeout`` s; never raises for an
    unreachable peer. ``{"ok", "rtt_ms" (connect time) | None, "error" | None,
    "source_address"}``."""
    check_peer_address(address)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(address, port, local_addr=(source, 0))
    except (OSError, TimeoutError) as err:
        return {"ok": False, "rtt_ms": None, "error": describe_failure(err, timeout),
                "source_address": source}
    rtt_ms = (time.perf_counter() - started) * 1000
    writer.close()
    with contextlib.suppress(OSError):  # the listener may have closed first: proven anyway
        await writer.wait_closed()
    return {"ok": True, "rtt_ms": round(rtt_ms, 3), "error": None, "source_address": source}
