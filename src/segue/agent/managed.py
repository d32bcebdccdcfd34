"""One VM of this host as the agent tracks it: spec, QEMU process, QMP session, events.

QEMU is asked, not remembered, wherever it can answer: ``refresh_state`` reads its run
state (``query-status``), ``migration`` its ``query-migrate``. A post-copy destination whose
main thread waits for a page answers nothing in band; its migration status then comes from
its last MIGRATION event (``QueryMigrate.from_event``), which QEMU's monitor thread still
delivers.

Errors: none of its own; QMP failures are absorbed here (the watcher notices a dead QEMU).
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field

from segue.api.agent import VMEvent
from segue.api.qemu import MigrationStatus, QueryMigrate
from segue.domain.errors import SegueError
from segue.domain.vm import VMSpec, VMState, state_from_qmp_status
from segue.qemu import process
from segue.qemu.argv import RuntimePaths
from segue.qemu.machine import QemuMachine
from segue.qemu.migration import QemuMigration
from segue.qemu.qmp import QMPEvent, QMPSession

EVENTS_KEPT = 1000
QUERY_TIMEOUT_S = 3.0  # a QEMU that does not answer within this is busy or gone


@dataclass
class ManagedVM:
    """A VM this agent owns (or receives), and what it knows of its QEMU."""

    spec: VMSpec
    runtime: RuntimePaths
    pid: int | None = None
    qmp: QMPSession | None = None
    watcher: asyncio.Task[None] | None = None
    state: VMState = VMState.STOPPED
    started_at: float | None = None
    last_exit: str | None = None
    adopted: bool = False
    incoming: str | None = None  # migration id while this host is its unclaimed destination
    generation: int | None = None  # the lease generation this host holds it at (None: none)
    lease_renewed_at: float | None = None  # monotonic time of the last renewal
    fenced: str | None = None  # why it must never run here again (its lease is another's)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    events: deque[VMEvent] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))
    event_seq: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    def record_event(self, event: QMPEvent) -> VMEvent:
        """Keep the event (numbered) and append it to the VM's events log."""
        self.event_seq += 1
        entry = VMEvent(seq=self.event_seq, event=event.event, timestamp=event.at,
                        data=dict(event.data))
        self.events.append(entry)
        with self.runtime.events_log.open("a") as f:
            f.write(entry.model_dump_json() + "\n")
        return entry

    def process_alive(self) -> bool:
        return self.pid is not None and process.pid_alive(self.pid)

    def live_state(self) -> VMState:
        """The run state as last known, ``stopped`` once its QEMU process is gone."""
        return self.state if self.process_alive() else VMState.STOPPED

    def machine(self) -> QemuMachine | None:
        """Run control of its QEMU, None without a QMP session."""
        return QemuMachine(self.qmp) if self.qmp is not None else None

    async def refresh_state(self) -> None:
        """Ask QEMU for the run state (kept as it was if QEMU does not answer)."""
        if self.qmp is None or not self.qmp.connected:
            return
        try:
            status = await QemuMachine(self.qmp).status(timeout=QUERY_TIMEOUT_S)
        except SegueError:
            return  # the watcher notices a dead QEMU; keep the last known state
        self.state = state_from_qmp_status(status)

    async def migration(self) -> QueryMigrate:
        """QEMU's ``query-migrate`` (status ``none`` without a QEMU), or the status of its
        last MIGRATION event, marked ``from_event``, when QEMU does not answer."""
        if self.qmp is None or not self.qmp.connected:
            return QueryMigrate()
        try:
            return await QemuMigration(self.qmp).query(timeout=QUERY_TIMEOUT_S)
        except SegueError:
            return self.last_migration_event()

    def last_migration_event(self) -> QueryMigrate:
        last = next((e for e in reversed(self.events) if e.event == "MIGRATION"), None)
        try:
            status = MigrationStatus(str((last.data if last else {}).get("status")))
        except ValueError:
            return QueryMigrate()
        return QueryMigrate(status=status, from_event=True)


def read_incoming(runtime: RuntimePaths) -> str | None:
    """The migration id in the VM's role file, or None if it is no unclaimed destination."""
    try:
        data = json.loads(runtime.role_file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("role") != "incoming":
        return None
    return str(data.get("migration_id", ""))
