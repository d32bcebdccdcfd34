"""One QMP session with one QEMU, over its unix socket, driven by qemu.qmp.

``execute`` returns QEMU's raw answer; ``query`` validates it into a model at once, and
events come out of ``next_event`` as ``QMPEvent`` models: past this module no raw QMP dict
travels (the typed command layers are ``segue.qemu.machine`` and ``segue.qemu.migration``).

Errors (all ``Unavailable``, each with its code): ``QMPUnavailable`` (``QMP_UNAVAILABLE``:
cannot connect, connection lost, timeout), ``QMPCommandFailed`` (``QMP_COMMAND_FAILED``:
QEMU answered with an error), ``QMPAnswerInvalid`` (``QMP_ANSWER_INVALID``: an answer that
does not fit its model).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError
from qemu.qmp import ConnectError, EventListener, ExecuteError, QMPClient, QMPError, Runstate

from segue.domain.errors import Unavailable

log = logging.getLogger(__name__)


class QMPUnavailable(Unavailable):
    """The QMP socket cannot be reached or the session broke."""


class QMPCommandFailed(Unavailable):
    """QEMU refused a command; ``details['qmp_class']`` holds QEMU's error class."""


class QMPAnswerInvalid(Unavailable):
    """QEMU answered, but not in the shape its QAPI schema promises."""


M = TypeVar("M", bound=BaseModel)


class QMPTimestamp(BaseModel):
    """When QEMU emitted an event (its own clock)."""

    model_config = ConfigDict(frozen=True)

    seconds: int = 0
    microseconds: int = 0


class QMPEvent(BaseModel):
    """One QEMU event (``STOP``, ``RESUME``, ``MIGRATION`` ...) with its data."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event: str
    data: dict[str, JsonValue] = {}
    timestamp: QMPTimestamp = QMPTimestamp()

    @property
    def at(self) -> float:
        """The event's time in seconds since the epoch."""
        return self.timestamp.seconds + self.timestamp.microseconds / 1e6


def validated(model: type[M], raw: object, what: str, where: str) -> M:
    """``raw`` (a QMP answer) as ``model``; raises QMPAnswerInvalid if it does not fit."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise QMPAnswerInvalid(
            "QMP_ANSWER_INVALID", f"{what} on {where} answered {str(raw)[:300]}: "
            f"{err.errors()[0]['msg']}", "run a QEMU version Segue supports (7.2 or newer)",
        ) from err


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

    async def query(self, model: type[M], command: str,
                    arguments: dict[str, Any] | None = None, timeout: float = 10.0) -> M:
        """Run one command and return its answer validated as ``model``; raises what
        ``execute`` raises, and QMPAnswerInvalid for an answer that does not fit."""
        return validated(model, await self.execute(command, arguments, timeout=timeout),
                         command, self.name)

    async def next_event(self, timeout: float) -> QMPEvent | None:
        """The next QEMU event, or None if none came within ``timeout``. A message that is
        no event (QEMU broke its schema) is logged and dropped: the caller goes on
        watching."""
        try:
            async with asyncio.timeout(timeout):
                msg = await self._events.get()
        except TimeoutError:
            return None
        try:
            return validated(QMPEvent, dict(msg), "an event", self.name)
        except QMPAnswerInvalid as err:
            log.warning("%s", err)
            return None

    async def close(self) -> None:
        """Disconnect; never raises (the peer may already be gone)."""
        try:
            await self._client.disconnect()
        except Exception as err:
            log.debug("disconnect of %s: %r", self.name, err)
