"""Run control of one QEMU over its QMP session, typed: run state, run, power-down, quit.

``QemuMachine(qmp)`` spells the commands (``query-status``, ``cont``, ``system_powerdown``,
``quit``) so that no caller does; ``query-status`` is validated into ``RunStatus`` at once.

Errors: those of ``segue.qemu.qmp`` (``QMP_UNAVAILABLE``, ``QMP_COMMAND_FAILED``,
``QMP_ANSWER_INVALID``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from segue.qemu.qmp import QMPSession


class RunStatus(BaseModel):
    """QEMU's ``query-status`` answer: its RunState (``running``, ``paused``,
    ``inmigrate``, ``postmigrate``, ``finish-migrate``, ...)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    status: str
    running: bool = False


class QemuMachine:
    """The run state of the QEMU behind one QMP session."""

    def __init__(self, qmp: QMPSession) -> None:
        self.qmp = qmp

    async def status(self, timeout: float = 10.0) -> str:
        """QEMU's RunState now (``query-status``)."""
        return (await self.qmp.query(RunStatus, "query-status", timeout=timeout)).status

    async def cont(self) -> None:
        """Run the guest (``cont``): after ``-S``, after an incoming migration, or a
        ``postmigrate`` source again."""
        await self.qmp.execute("cont")

    async def stop(self) -> None:
        """Pause the guest (``stop``): its vCPUs halt, its memory stays."""
        await self.qmp.execute("stop")

    async def powerdown(self) -> None:
        """Press the ACPI power button (``system_powerdown``); the guest decides."""
        await self.qmp.execute("system_powerdown")

    async def quit(self) -> None:
        """End the QEMU process (``quit``) at once."""
        await self.qmp.execute("quit")
