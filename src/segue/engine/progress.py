"""What a migration has done and has left, from QEMU's ``query-migrate`` (pure).

Rates are in bytes per second, times in seconds, sizes in bytes. The ETA is remaining
bytes over the measured throughput net of the dirty rate: it grows when the guest dirties
faster, and is ``None`` (not a made-up number) while the transfer does not gain on the guest.
The convergence indicator is ``dirty_ratio`` (dirty rate over throughput: below 1 the copy
gains on the guest) with ``converging``; in post-copy every page moves once, so it converges.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

ACTIVE_STATES = frozenset({"setup", "active", "pre-switchover", "device", "postcopy-active",
                           "postcopy-paused", "postcopy-recover", "wait-unplug", "cancelling"})


@dataclass(frozen=True)
class Progress:
    status: str
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def progress_from_query(info: dict[str, Any]) -> Progress:
    """Fold a ``query-migrate`` answer into a Progress."""
    ram = info.get("ram") or {}
    status = str(info.get("status", "none"))
    page_size = int(ram.get("page-size") or 4096)
    dirty_rate = float(ram.get("dirty-pages-rate") or 0) * page_size
    throughput = float(ram.get("mbps") or 0) * 1e6 / 8
    remaining = int(ram.get("remaining") or 0)
    return Progress(
        status=status,
        transferred=int(ram.get("transferred") or 0),
        remaining=remaining,
        total=int(ram.get("total") or 0),
        dirty_rate=dirty_rate,
        throughput=throughput,
        iteration=int(ram.get("dirty-sync-count") or 0),
        expected_downtime_ms=_opt(info.get("expected-downtime")),
        downtime_ms=_opt(info.get("downtime")),
        total_time_ms=_opt(info.get("total-time")),
        setup_time_ms=_opt(info.get("setup-time")),
        eta_s=eta_seconds(remaining, throughput, dirty_rate) if status == "active" else None,
        converging=_converging(status, throughput, dirty_rate),
        error=info.get("error-desc"),
        dirty_ratio=round(dirty_rate / throughput, 3) if throughput else None,
    )


def _converging(status: str, throughput: float, dirty_rate: float) -> bool | None:
    if status.startswith("postcopy"):
        return True
    return (throughput > dirty_rate) if status == "active" and throughput else None


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


def eta_seconds(remaining: int, throughput: float, dirty_rate: float) -> float | None:
    """Seconds to send ``remaining`` bytes while the guest dirties at ``dirty_rate``."""
    net = throughput - dirty_rate
    if remaining <= 0:
        return 0.0
    if net <= 0:
        return None
    return remaining / net
