"""Progress from QEMU's query-migrate answers, and the ETA model."""

from __future__ import annotations

from typing import Any

import pytest

from segue.api.qemu import QueryMigrate
from segue.engine.progress import eta_seconds
from segue.engine.progress import progress_from_query as fold

ACTIVE: dict[str, Any] = {
    "status": "active", "expected-downtime": 300, "total-time": 1500, "setup-time": 12,
    "ram": {"transferred": 100 * 2**20, "remaining": 50 * 2**20, "total": 256 * 2**20,
            "dirty-pages-rate": 2560, "mbps": 800.0, "dirty-sync-count": 3, "page-size": 4096},
}


def progress_from_query(info: dict[str, Any]) -> Any:
    """QEMU's answer as the QMP edge hands it over: validated into ``QueryMigrate``."""
    return fold(QueryMigrate.model_validate(info))


def test_active_migration_fields() -> None:
    p = progress_from_query(ACTIVE)
    assert p.status == "active" and p.iteration == 3
    assert p.transferred == 100 * 2**20 and p.remaining == 50 * 2**20
    assert p.dirty_rate == 2560 * 4096
    assert p.throughput == pytest.approx(100e6)
    assert p.expected_downtime_ms == 300 and p.setup_time_ms == 12
    assert p.converging is True
    assert p.eta_s == pytest.approx(50 * 2**20 / (100e6 - 2560 * 4096))


def test_a_guest_dirtying_faster_than_the_link_has_no_eta() -> None:
    info = {**ACTIVE, "ram": {**ACTIVE["ram"], "dirty-pages-rate": 50_000}}
    p = progress_from_query(info)
    assert p.converging is False and p.eta_s is None


def test_completed_migration_keeps_qemus_downtime() -> None:
    p = progress_from_query({"status": "completed", "downtime": 42, "total-time": 2000,
                             "ram": {"transferred": 10, "total": 20}})
    assert p.downtime_ms == 42 and p.eta_s is None and p.converging is None


def test_failed_migration_carries_the_reason() -> None:
    p = progress_from_query({"status": "failed", "error-desc": "Connection reset by peer"})
    assert p.error == "Connection reset by peer" and p.transferred == 0


def test_empty_answer_is_none_status() -> None:
    assert progress_from_query({}).status == "none"


@pytest.mark.parametrize(("remaining", "throughput", "dirty", "expected"), [
    (0, 0.0, 0.0, 0.0), (100, 10.0, 0.0, 10.0), (100, 10.0, 5.0, 20.0),
    (100, 10.0, 10.0, None), (100, 10.0, 20.0, None),
])
def test_eta(remaining: int, throughput: float, dirty: float, expected: float | None) -> None:
    assert eta_seconds(remaining, throughput, dirty) == expected


def test_convergence_indicator() -> None:
    p = progress_from_query(ACTIVE)
    assert p.dirty_ratio == pytest.approx(round(2560 * 4096 / 100e6, 3))
    slow = progress_from_query({**ACTIVE, "ram": {**ACTIVE["ram"], "dirty-pages-rate": 50_000}})
    assert slow.dirty_ratio is not None and slow.dirty_ratio > 1 and slow.converging is False


@pytest.mark.parametrize("status", ["postcopy-active", "postcopy-paused"])
def test_postcopy_always_converges(status: str) -> None:
    p = progress_from_query({**ACTIVE, "status": status})
    assert p.converging is True and p.eta_s is None
