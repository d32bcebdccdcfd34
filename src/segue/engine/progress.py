"""What a migration has done and has left, from QEMU's ``query-migrate`` (pure).

Rates are in bytes per second, times in seconds, sizes in bytes. The ETA is remaining
bytes over the measured throughput net of the dirty rate: it grows when the guest dirties
faster, and is ``None`` (not a made-up number) while the transfer does not gain on the guest.
The convergence indicator is ``dirty_ratio`` (dirty rate over throughput: below 1 the copy
gains on the guest) with ``converging``; in post-copy every page moves once, so it converges.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pydantic import JsonValue

from segue.api.qemu import MigrationStatus, QueryMigrate, RamStats


@dataclass(frozen=True)
class Progress:
    status: MigrationStatus
    transferred: int
    remaining: int
    total: int
    dirty_rate: float
    throughput: float
    iteration: int
    expected_downtime_ms: float | None
    downtime_ms: float | None
    total_time_ms: float | None
    setup_time_ms: float | None
    eta_s: float | None
    converging: bool | None
    error: str | None = None
    dirty_ratio: float | None = None
    throttle_pct: int = 0  # how much auto-converge slows the guest's vCPUs now

    def to_dict(self) -> dict[str, JsonValue]:
        """The sample as stored and shown (``segue.api.migration.ProgressSample``)."""
        out: dict[str, JsonValue] = asdict(self)
        out["status"] = MigrationStatus(self.status).value
        return out


def progress_from_query(info: QueryMigrate) -> Progress:
    """Fold a ``query-migrate`` answer into a Progress."""
    ram = info.ram or RamStats()
    status = info.status
    dirty_rate = float(ram.dirty_pages_rate) * (ram.page_size or 4096)
    throughput = float(ram.mbps) * 1e6 / 8
    return Progress(
        status=status,
        transferred=ram.transferred,
        remaining=ram.remaining,
        total=ram.total,
        dirty_rate=dirty_rate,
        throughput=throughput,
        iteration=ram.dirty_sync_count,
        expected_downtime_ms=info.expected_downtime,
        downtime_ms=info.downtime,
        total_time_ms=info.total_time,
        setup_time_ms=info.setup_time,
        eta_s=(eta_seconds(ram.remaining, throughput, dirty_rate)
               if status == MigrationStatus.ACTIVE else None),
        converging=_converging(status, throughput, dirty_rate),
        error=info.error_desc,
        dirty_ratio=round(dirty_rate / throughput, 3) if throughput else None,
        throttle_pct=info.cpu_throttle_percentage,
    )


def _converging(status: MigrationStatus, throughput: float, dirty_rate: float) -> bool | None:
    if status.postcopy:
        return True
    return (throughput > dirty_rate) if status == MigrationStatus.ACTIVE and throughput else None


def eta_seconds(remaining: int, throughput: float, dirty_rate: float) -> float | None:
    """Seconds to send ``remaining`` bytes while the guest dirties at ``dirty_rate``."""
    net = throughput - dirty_rate
    if remaining <= 0:
        return 0.0
    if net <= 0:
        return None
    return remaining / net
