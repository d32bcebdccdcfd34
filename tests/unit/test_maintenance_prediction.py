"""The pre-flight's move predictions (``segue.controller.maintenance``): learnt from the
engine's record of the host's last completed migrations (in-memory SQLite), a fixed cost
and the measured link, and each VM's own last copy; the model at the dirty rate measured;
the bare model without a record."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session

from segue.controller.db import Database
from segue.controller.maintenance import MoveHistory, move_history, predicted_move_s
from segue.controller.migration_models import MigrationRow

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def session() -> Iterator[Session]:
    db = Database("sqlite://")
    db.upgrade()
    with Session(db.engine) as s:
        yield s
    db.dispose()


def job(session: Session, n: int, vm: str, source: str, phase: str = "completed",
        **summary: Any) -> None:
    at = T0 + timedelta(minutes=n)
    session.add(MigrationRow(id=f"job-{n}", vm_name=vm, source_host=source, dest_host="h9",
                             phase=phase, created_at=at, updated_at=at, finished_at=at,
                             summary=summary))
    session.flush()


def test_the_host_s_record_gives_the_fixed_cost_the_link_and_each_vm_s_copy(
        session: Session) -> None:
    job(session, 1, "a", "h1", total_s=9.0, qemu_total_ms=4000, link_measured_mibs=40.0)
    job(session, 2, "b", "h1", total_s=7.0, qemu_total_ms=3000, link_measured_mibs=50.0)
    job(session, 3, "a", "h1", total_s=8.0, qemu_total_ms=2000, link_measured_mibs=60.0)
    job(session, 4, "c", "h1", phase="failed", total_s=99.0, qemu_total_ms=1000)
    job(session, 5, "d", "h2", total_s=30.0, qemu_total_ms=1000, link_measured_mibs=1.0)
    history = move_history(session, "h1", ["a", "b", "c", "new"])
    assert history.overhead_s == 5.0  # median of 5, 4, 6: failed and other hosts' left out
    assert history.link_mibs == 50.0
    assert history.copy_s == {"a": 2.0, "b": 3.0}  # a's latest; c failed; new never moved


def test_a_host_without_a_record_learns_from_the_cluster_s_and_an_empty_one_from_none(
        session: Session) -> None:
    assert move_history(session, "h1", ["a"]) == MoveHistory()
    job(session, 1, "x", "h2", total_s=6.0, qemu_total_ms=2000, link_measured_mibs=30.0)
    history = move_history(session, "h1", ["a"])
    assert history.overhead_s == 4.0 and history.link_mibs == 30.0 and history.copy_s == {}


def test_the_prediction_adds_the_fixed_cost_to_the_longer_copy() -> None:
    bare = predicted_move_s(128, 400, 2)
    assert bare > 0
    at_link = predicted_move_s(128, 10_000, 2, MoveHistory(link_mibs=400e6 / 8 / 2**20))
    assert at_link == pytest.approx(bare, abs=0.1)  # a measured 400 Mbit/s link, not 10 G
    slow = predicted_move_s(128, 400, 2, MoveHistory(overhead_s=3.0), "a")
    assert slow == pytest.approx(bare + 3.0, abs=0.1)
    dirty = predicted_move_s(128, 400, 2, MoveHistory(overhead_s=3.0, copy_s={"a": 40.0}),
                             "a")
    assert dirty == 43.0  # its last copy took longer than the model's: dirtying
    assert predicted_move_s(128, 400, 2, MoveHistory(copy_s={"a": 40.0}), "b") == bare
    dirtying = predicted_move_s(128, 400, 2, dirty_mibs=10.0)
    assert dirtying > bare  # the passes resending what the guest dirtied
    assert predicted_move_s(128, 400, 2, dirty_mibs=100.0) > dirtying  # then post-copy
