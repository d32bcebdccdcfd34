"""QEMU's ``query-migrate`` answer as a model, its status as an enum (``qapi/migration.json``).

QEMU adds fields from version to version: these models keep the ones Segue reads and ignore
the rest. The QMP edge (``segue.qemu.migration``) validates QEMU's answer into
``QueryMigrate`` at once; nothing past it handles the raw dict.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import ConfigDict, Field

from segue.api.base import ResponseModel


class MigrationStatus(StrEnum):
    """QEMU's ``MigrationStatus`` (QEMU 7.2 to 10.x), plus ``none`` for no migration."""

    NONE = "none"
    SETUP = "setup"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    ACTIVE = "active"
    POSTCOPY_DEVICE = "postcopy-device"
    POSTCOPY_ACTIVE = "postcopy-active"
    POSTCOPY_PAUSED = "postcopy-paused"
    POSTCOPY_RECOVER_SETUP = "postcopy-recover-setup"
    POSTCOPY_RECOVER = "postcopy-recover"
    COMPLETED = "completed"
    FAILED = "failed"
    COLO = "colo"
    PRE_SWITCHOVER = "pre-switchover"
    DEVICE = "device"
    WAIT_UNPLUG = "wait-unplug"

    @property
    def active(self) -> bool:
        """The migration still runs (it may yet complete, fail or be cancelled)."""
        return self in ACTIVE_STATUSES

    @property
    def postcopy(self) -> bool:
        """QEMU switched to post-copy: the destination holds the newest memory."""
        return self.value.startswith("postcopy")


ACTIVE_STATUSES = frozenset({
    MigrationStatus.SETUP, MigrationStatus.CANCELLING, MigrationStatus.ACTIVE,
    MigrationStatus.POSTCOPY_DEVICE, MigrationStatus.POSTCOPY_ACTIVE,
    MigrationStatus.POSTCOPY_PAUSED, MigrationStatus.POSTCOPY_RECOVER_SETUP,
    MigrationStatus.POSTCOPY_RECOVER, MigrationStatus.PRE_SWITCHOVER, MigrationStatus.DEVICE,
    MigrationStatus.WAIT_UNPLUG, MigrationStatus.COLO,
})


class RamStats(ResponseModel):
    """``query-migrate``'s ``ram`` (bytes; ``mbps`` in Mbit/s; pages per second)."""

    model_config = ConfigDict(populate_by_name=True)

    transferred: int = 0
    remaining: int = 0
    total: int = 0
    mbps: float = 0.0
    dirty_pages_rate: float = Field(0.0, alias="dirty-pages-rate")
    dirty_sync_count: int = Field(0, alias="dirty-sync-count")
    page_size: int = Field(4096, alias="page-size")


class SocketAddress(ResponseModel):
    """One address an incoming QEMU listens on."""

    type: str = "inet"
    host: str | None = None
    port: int | None = None


class QueryMigrate(ResponseModel):
    """QEMU's ``query-migrate`` answer (the fields Segue reads). ``from_event``: QEMU did
    not answer, and ``status`` is that of its last MIGRATION event (a post-copy destination
    whose main thread waits for a page)."""

    model_config = ConfigDict(populate_by_name=True)

    status: MigrationStatus = MigrationStatus.NONE
    ram: RamStats | None = None
    expected_downtime: float | None = Field(None, alias="expected-downtime")
    downtime: float | None = None
    total_time: float | None = Field(None, alias="total-time")
    setup_time: float | None = Field(None, alias="setup-time")
    error_desc: str | None = Field(None, alias="error-desc")
    cpu_throttle_percentage: int = Field(0, alias="cpu-throttle-percentage")
    postcopy_blocktime: int | None = Field(None, alias="postcopy-blocktime")
    postcopy_vcpu_blocktime: list[int] | None = Field(None, alias="postcopy-vcpu-blocktime")
    socket_address: list[SocketAddress] | None = Field(None, alias="socket-address")
    from_event: bool = False
