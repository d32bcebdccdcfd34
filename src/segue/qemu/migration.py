"""QEMU's live migration over one QMP session, typed (QEMU 7.2 to 10.x).

``QemuMigration(qmp)`` spells every migration command Segue uses, so no caller does, and
wraps every answer into a model right here: ``query-migrate`` into
``segue.api.qemu.QueryMigrate``, ``query-dirty-rate`` into ``DirtyRateInfo``,
``query-migrate-parameters`` into a JSON mapping.

- setup: ``set_capabilities`` (always with ``events``, so MIGRATION events are sent),
  ``set_parameters`` / ``parameters``, the announce parameters and ``announce_self``;
- source: ``migrate``, ``cancel``, ``start_postcopy``, ``resume`` (a paused post-copy);
- destination: ``incoming`` and ``listening_port``, ``recover`` (a paused post-copy);
- either side: ``query``, ``pause``;
- before a start: ``sample_dirty_rate``;
- TLS on the stream (``segue.qemu.migration_tls`` spells the commands): ``run`` sends a
  side's setup commands in order; ``clear_tls`` clears the TLS parameters and deletes the
  migrations' TLS objects; ``uses_tls`` reads back whether ``tls-creds`` is set.

``pause`` and ``recover`` go out of band (``exec-oob``): a post-copy destination whose
stream is down has its main thread waiting for a page and answers nothing in band.

Errors: those of ``segue.qemu.qmp`` (``QMP_UNAVAILABLE``, ``QMP_COMMAND_FAILED``,
``QMP_ANSWER_INVALID``); ``Unavailable`` (``MIGRATION_LISTEN_FAILED``: an incoming QEMU
reports no port; ``DIRTY_RATE_UNAVAILABLE``: no measurement in time).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from segue.api.qemu import MigrationStatus, QueryMigrate
from segue.domain.errors import Unavailable
from segue.qemu import migration_tls
from segue.qemu.migration_tls import Command
from segue.qemu.qmp import QMPCommandFailed, QMPEvent, QMPSession, validated

ParameterValue = int | bool | str
ANNOUNCE_PREFIX = "announce-"
# pages sampled per GiB: QEMU's most (its default, 512, read the demo's guest rewriting
# 8 MiB/s of a 16 MiB hot set as 0 MiB/s over 300 ms)
DIRTY_RATE_SAMPLE_PAGES = 4096
DIRTY_RATE_GRACE_S = 5.0


class QomChild(BaseModel):
    """One child of a QOM path (``qom-list``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    type: str = ""


class QomChildren(BaseModel):
    children: list[QomChild]


class DirtyRateInfo(BaseModel):
    """QEMU's ``query-dirty-rate`` answer (``dirty-rate`` in MiB/s once ``measured``)."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    status: str = "unstarted"
    dirty_rate: float | None = Field(None, alias="dirty-rate")


class ParametersObject(BaseModel):
    """``query-migrate-parameters``: a JSON object of QEMU's parameters, by QEMU's names."""

    values: dict[str, JsonValue]


@dataclass(frozen=True)
class DirtyRateSample:
    """A measured dirty rate (MiB/s) and the time QEMU sampled it over."""

    mib_per_s: float
    calc_time_ms: int


def migration_event_status(event: QMPEvent) -> MigrationStatus | None:
    """The status a MIGRATION event announces; None for another event (or a status this
    Segue does not know)."""
    if event.event != "MIGRATION":
        return None
    try:
        return MigrationStatus(str(event.data.get("status")))
    except ValueError:
        return None


class QemuMigration:
    """The migration commands of the QEMU behind one QMP session."""

    def __init__(self, qmp: QMPSession) -> None:
        self.qmp = qmp

    # ---- setup ----
    async def set_capabilities(self, capabilities: Mapping[str, bool]) -> None:
        """``migrate-set-capabilities`` with ``events`` always on (MIGRATION events)."""
        caps = {**capabilities, "events": True}
        await self.qmp.execute("migrate-set-capabilities", {
            "capabilities": [{"capability": k, "state": bool(v)} for k, v in caps.items()]})

    async def set_parameters(self, parameters: Mapping[str, ParameterValue]) -> None:
        """``migrate-set-parameters`` (QEMU applies them mid-flight too)."""
        await self.qmp.execute("migrate-set-parameters", dict(parameters))

    async def parameters(self) -> dict[str, JsonValue]:
        """Every migration parameter as QEMU reports it (``query-migrate-parameters``)."""
        raw = await self.qmp.execute("query-migrate-parameters")
        return validated(ParametersObject, {"values": raw}, "query-migrate-parameters",
                         self.qmp.name).values

    async def announce_parameters(self) -> dict[str, JsonValue]:
        """The ``announce-*`` parameters: when, after an incoming migration completed, QEMU
        announces the guest's MACs (RARP) so the network learns their new port."""
        return {k: v for k, v in (await self.parameters()).items()
                if k.startswith(ANNOUNCE_PREFIX)}

    async def announce_self(self, initial_ms: int = 50, max_ms: int = 550, rounds: int = 5,
                            step_ms: int = 100) -> None:
        """``announce-self``: announce the guest's MACs again now (``rounds`` RARPs, the
        first after ``initial_ms``, spaced by ``step_ms`` growing up to ``max_ms``)."""
        await self.qmp.execute("announce-self", {"initial": initial_ms, "max": max_ms,
                                                 "rounds": rounds, "step": step_ms})

    # ---- TLS ----
    async def run(self, commands: list[Command]) -> None:
        """Send ``commands`` (``migration_tls``'s) in order; the first refusal raises."""
        for name, arguments in commands:
            await self.qmp.execute(name, dict(arguments))

    async def clear_tls(self) -> None:
        """Clear the TLS parameters and delete every migration TLS object of this QEMU
        (``migration_tls.teardown_commands``); idempotent."""
        raw = await self.qmp.execute("qom-list", {"path": "/objects"})
        children = validated(QomChildren, {"children": raw}, "qom-list", self.qmp.name).children
        await self.run(migration_tls.teardown_commands(c.model_dump() for c in children))

    async def uses_tls(self) -> bool:
        """Whether the migration parameters name TLS credentials now."""
        return migration_tls.uses_tls(await self.parameters())

    # ---- status ----
    async def query(self, timeout: float = 10.0) -> QueryMigrate:
        """``query-migrate``: status and progress (``none`` before any migration)."""
        return await self.qmp.query(QueryMigrate, "query-migrate", timeout=timeout)

    # ---- source ----
    async def migrate(self, uri: str) -> None:
        """``migrate`` to ``uri`` (``tcp:HOST:PORT``, checked by the caller)."""
        await self.qmp.execute("migrate", {"uri": uri})

    async def cancel(self) -> None:
        """``migrate_cancel``: the stream breaks off, the VM keeps running; nothing
        happens when nothing migrates."""
        await self.qmp.execute("migrate_cancel")

    async def start_postcopy(self) -> None:
        """``migrate-start-postcopy``: the source stops after this pass and the destination
        runs the guest, fetching the pages it lacks (needs ``postcopy-ram``)."""
        await self.qmp.execute("migrate-start-postcopy")

    async def resume(self, uri: str) -> None:
        """``migrate`` with ``resume``: a paused post-copy reconnects to the destination's
        ``recover`` uri and goes on where it was."""
        await self.qmp.execute("migrate", {"uri": uri, "resume": True})

    # ---- destination ----
    async def incoming(self, uri: str) -> None:
        """``migrate-incoming`` on a QEMU started with ``-incoming defer``: listen on
        ``uri`` (``tcp:IP:0`` lets the kernel pick the port)."""
        await self.qmp.execute("migrate-incoming", {"uri": uri})

    async def listening_port(self) -> int:
        """The port the incoming QEMU listens on, read back from ``query-migrate``.

        Raises Unavailable (``MIGRATION_LISTEN_FAILED``) if it reports none."""
        listening = await self.query()
        port = next((a.port for a in listening.socket_address or [] if a.port), None)
        if port is None:
            raise Unavailable("MIGRATION_LISTEN_FAILED",
                              f"{self.qmp.name}: QEMU listens on no port "
                              f"({listening.model_dump(by_alias=True, exclude_none=True)})",
                              "see the VM's qemu.log")
        return port

    async def recover(self, uri: str) -> None:
        """``migrate-recover`` (out of band): a paused post-copy destination listens on
        ``uri`` for its source's ``resume``."""
        await self.qmp.execute("migrate-recover", {"uri": uri}, oob=True)

    # ---- either side ----
    async def pause(self) -> None:
        """``migrate-pause`` (out of band): a post-copy whose stream hangs goes
        ``postcopy-paused`` so that it can be recovered."""
        await self.qmp.execute("migrate-pause", oob=True)

    # ---- before a start ----
    async def sample_dirty_rate(self, calc_time_ms: int,
                                sample_pages: int = DIRTY_RATE_SAMPLE_PAGES,
                                grace_s: float = DIRTY_RATE_GRACE_S) -> DirtyRateSample:
        """Sample the guest's dirty rate over ``calc_time_ms`` (``calc-dirty-rate`` in
        milliseconds, then ``query-dirty-rate`` until measured). A QEMU before 8.2 measures
        whole seconds only: it samples ``calc_time_ms`` rounded up to seconds.

        Raises Unavailable (``DIRTY_RATE_UNAVAILABLE``) without a measurement within the
        sampling time plus ``grace_s``."""
        try:
            await self.qmp.execute("calc-dirty-rate", {
                "calc-time": calc_time_ms, "calc-time-unit": "millisecond",
                "sample-pages": sample_pages})
            took_ms = calc_time_ms
        except QMPCommandFailed:  # no calc-time-unit before QEMU 8.2
            took_ms = 1000 * max(1, math.ceil(calc_time_ms / 1000))
            await self.qmp.execute("calc-dirty-rate", {"calc-time": took_ms // 1000,
                                                       "sample-pages": sample_pages})
        limit = took_ms / 1000 + grace_s
        try:
            async with asyncio.timeout(limit):
                while True:
                    await asyncio.sleep(min(0.1, took_ms / 4000))
                    info = await self.qmp.query(DirtyRateInfo, "query-dirty-rate")
                    if info.status == "measured":
                        return DirtyRateSample(float(info.dirty_rate or 0), took_ms)
        except TimeoutError:
            raise Unavailable("DIRTY_RATE_UNAVAILABLE", f"{self.qmp.name}: QEMU measured no "
                              f"dirty rate within {limit:.0f} s",
                              "the migration can start without a prediction") from None
