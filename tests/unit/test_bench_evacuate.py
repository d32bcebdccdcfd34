"""The evacuation benchmark's pure parts (``benchmarks/evacuate.py``): the peers' scheduler
against a fake controller, the per-strategy summary, the first job's time and the ETA at the
measured link; no lab."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from evacuate import (
    MIX,
    eta_at_measured_link,
    first_request_s,
    guests_table,
    scheduled,
    summarize,
    table,
)

from segue.controller.maintenance import predicted_move_s
from segue.domain.errors import Conflict

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class FakeJob:
    def __init__(self, job_id: str, vm: str, dest: str) -> None:
        self.id, self.vm, self.destination, self.phase = job_id, vm, dest, "monitor"


class FakeController:
    """Each job ends on its ``polls``-th look; records the order of requests and the most
    jobs running at once; refuses the VMs in ``refuse``."""

    def __init__(self, polls: int = 2, refuse: tuple[str, ...] = ()) -> None:
        self.polls, self.refuse = polls, refuse
        self.requests: list[tuple[str, str]] = []
        self.looks: dict[str, int] = {}
        self.jobs: dict[str, FakeJob] = {}
        self.running = 0
        self.most = 0

    async def request_migration(self, vm: str, body: Any) -> FakeJob:
        if vm in self.refuse:
            raise Conflict("MIGRATION_IN_PROGRESS", f"{vm} is migrating")
        self.requests.append((vm, body.to))
        job = FakeJob(f"j-{vm}", vm, body.to)
        self.jobs[job.id] = job
        self.running += 1
        self.most = max(self.most, self.running)
        return job

    async def get_migration(self, job_id: str) -> FakeJob:
        job = self.jobs[job_id]
        self.looks[job_id] = self.looks.get(job_id, 0) + 1
        if self.looks[job_id] >= self.polls and job.phase != "completed":
            job.phase = "completed"
            self.running -= 1
        return job


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("evacuate.POLL_S", 0.001)


@pytest.mark.parametrize(("workers", "most"), [(1, 1), (2, 2), (4, 4), (0, 6)])
def test_scheduler_requests_in_the_given_order_with_at_most_workers_at_once(
        workers: int, most: int) -> None:
    fake = FakeController()
    names = sorted(MIX)
    out = asyncio.run(scheduled(fake, names, workers,  # type: ignore[arg-type]
                                lambda i, _vm: ("host2", "host3")[i % 2]))
    assert [vm for vm, _ in fake.requests] == names  # each worker takes the next in order
    assert [dest for _, dest in fake.requests] == ["host2", "host3"] * 3
    assert fake.most == most
    assert all(getattr(job, "phase", None) == "completed" for job in out.values())


def test_scheduler_records_a_refusal_and_moves_on() -> None:
    fake = FakeController(refuse=("g2",))
    out = asyncio.run(scheduled(fake, ["g1", "g2", "g3"], 1,  # type: ignore[arg-type]
                                lambda _i, _vm: "host2"))
    assert out["g2"] == "MIGRATION_IN_PROGRESS: g2 is migrating"
    assert [vm for vm, _ in fake.requests] == ["g1", "g3"]


def guest(blackout: float | None, *, converged: bool = True, asked_s: float = 1.0,
          ended_s: float = 10.0, downtime: float = 50.0) -> dict[str, Any]:
    return {"converged": converged, "memory_ok": True, "blackout_ms": blackout,
            "qemu_downtime_ms": downtime if converged else None, "postcopy": False,
            "requested_at": (T0 + timedelta(seconds=asked_s)).isoformat(),
            "finished_at": (T0 + timedelta(seconds=ended_s)).isoformat()}


def run(strategy: str, total: float | None, guests: dict[str, dict[str, Any]], failures: int = 0,
        eta_error: float | None = None) -> dict[str, Any]:
    return {"strategy": strategy, "total_s": total, "guests": guests, "failures": failures,
            "eta_error": eta_error}


def test_summary_takes_total_over_runs_and_blackout_over_every_guest_of_every_run() -> None:
    runs = [run("segue", 20.0, {"g1": guest(100.0), "g2": guest(300.0)}, eta_error=-0.5),
            run("segue", 30.0, {"g1": guest(200.0), "g2": guest(None, converged=False)},
                failures=1, eta_error=-0.2),
            run("one-at-a-time", 50.0, {"g1": guest(90.0), "g2": guest(110.0)})]
    rows = summarize(runs, ["segue", "2-parallel", "one-at-a-time"])
    assert [r["strategy"] for r in rows] == ["segue", "one-at-a-time"]  # no run: no row
    segue = rows[0]
    assert (segue["total_s"], segue["total_s_max"]) == (25.0, 30.0)
    assert (segue["blackout_ms"], segue["blackout_ms_max"]) == (200.0, 300.0)
    assert segue["failures"] == 1 and segue["moves"] == 4
    assert segue["eta_error"] == pytest.approx(-0.35)
    assert segue["eta_error_max"] == -0.5  # the largest in size, with its sign
    assert segue["blackout_ms_each"] == {"g1": 150.0, "g2": 300.0}
    assert rows[1]["eta_error"] is None
    lines = table(rows)
    assert "-35%" in lines[3] and "1/4" in lines[3]
    assert guests_table(rows)[0].split()[1:3] == ["g1", "light"]


def test_first_request_counts_from_the_start_the_total_implies() -> None:
    # the last job ends at +10 s after a total of 8 s: the run started at +2 s
    assert first_request_s(run("segue", 8.0, {"g1": guest(1.0, asked_s=5.0),
                                              "g2": guest(1.0, asked_s=3.5)})) == 1.5
    assert first_request_s(run("segue", None, {})) is None


def test_eta_at_measured_link_schedules_the_plan_with_the_model() -> None:
    results = {"bandwidth_bytes_per_s": 50e6, "guest_memory_mib": 128,
               "limits": {"max_incoming_per_host": 8}}
    plan = [{"vm": f"g{i}", "dest": ("host2", "host3")[i % 2]} for i in range(1, 6)]
    one = predicted_move_s(128, 400, 2)
    # 5 moves, 2 at once: three rounds
    assert eta_at_measured_link(results, {"plan": plan, "parallel": 2}) == \
        pytest.approx(3 * one)
    assert eta_at_measured_link(results, {"plan": None, "parallel": 2}) is None
