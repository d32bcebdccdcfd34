"""One QMP session with one QEMU, over its unix socket, driven by qemu.qmp.

Errors: ``QMPUnavailable`` (cannot connect, connection lost, timeout) and
``QMPCommandFailed`` (QEMU answered with an error); both are ``Unavailable`` with a code.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, EventListener, ExecuteError, QMPClient, QMPError, Runstate

from segue.domain.errors import Unavailable

log = logging.getLogger(__name__)


class QMPUnavailable(Unavailable):
    """The QMP socket cannot be reached or the session broke."""


class QMPCommandFailed(Unavailable):
    """QEMU refused a command; ``details['qmp_class']`` holds QEMU's error class."""


class QMPSession:
    """A connected QMP client that also records the events QEMU sends."""

    def __init__(self, name: str) -> None:
        self._client = QMPClient(name)
        self._events = EventListener()
        self._client.register_listener(self._events)
        self.name = name

    async def connect(self, socket_path: Path, timeout: float = 10.0) -> None:
        """Connect, retrying while QEMU creates the socket; raises QMPUnavailable on timeout."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        await self._client.connect(str(socket_path))
                        return
                    except ConnectError:
                        await asyncio.sleep(0.05)
        except TimeoutError as err:
            raise QMPUnavailable(
                "QMP_UNAVAILABLE",
                f"no QMP answer from {self.name} at {socket_path} within {timeout:.0f} s",
                "check that its QEMU process runs",
            ) from err

    @property
    def connected(self) -> bool:
        return bool(self._client.runstate == Runstate.RUNNING)

    async def execute(self, command: str, arguments: dict[str, Any] | None = None,
                      timeout: float = 10.0, oob: bool = False) -> Any:
        """Run one QMP command and return its ``return`` value. ``oob``: out of band
        (``exec-oob``), answered by the monitor's own thread even while QEMU's main thread
        is blocked (a post-copy destination waiting for a page), for the commands QEMU
        allows there (``migrate-pause``, ``migrate-recover``)."""
        try:
            async with asyncio.timeout(timeout):
                return await self._client.execute(command, arguments, oob=oob)
        except ExecuteError as err:
            raise QMPCommandFailed(
                "QMP_COMMAND_FAILED", f"{command} failed on {self.name}: {err.error.error.desc}",
                "see QEMU's message", qmp_class=err.error.error.class_,
            ) from err
        except (QMPError, TimeoutError, OSError) as err:
            raise QMPUnavailable(
                "QMP_UNAVAILABLE", f"{command} on {self.name}: QMP session lost ({err!r})",
                "check that its QEMU process runs",
            ) from err

    async def next_event(self, timeout: float) -> dict[str, Any] | None:
        """The next QEMU event as a plain dict, or None if none came within ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                msg = await self._events.get()
        except TimeoutError:
            return None
        return dict(msg)

    async def close(self) -> None:
        """Disconnect; never raises (the peer may already be gone)."""
        try:
            await self._client.disconnect()
        except Exception as err:
            log.debug("disconnect of %s: %r", self.name, err)
