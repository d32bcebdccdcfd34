"""The migration benchmark's summary maths (``benchmarks/stats.py``), its scenarios' sizes
(``benchmarks/scenarios.py``) and its tables (``benchmarks/report.py``): pure, no lab."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from report import fmt, guests_table, main_table, prediction_table
from scenarios import SCENARIOS, Scenario, guests_needed, limits_s
from stats import (
    difference,
    percentile,
    relative_error,
    run_result,
    spread,
    summarize,
    summarize_one,
    worse_of,
)

MiB = 2**20


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([7.0], 50, 7.0),                        # one run: every percentile is that run
    ([7.0], 95, 7.0),
    ([3.0, 1.0], 50, 1.0),                   # rank ceil(0.5 * 2) = 1
    ([3.0, 1.0], 95, 3.0),                   # rank ceil(1.9) = 2: the maximum
    ([1.0, 2.0, 3.0], 50, 2.0),
    ([4.0, 1.0, 3.0, 2.0], 95, 4.0),         # n < 5: p95 is the maximum
    ([5.0, 1.0, 4.0, 2.0, 3.0], 95, 5.0),    # 5 runs: rank ceil(4.75) = 5, the maximum
    ([5.0, 1.0, 4.0, 2.0, 3.0], 80, 4.0),    # rank ceil(4.0) = 4, exactly
    ([5.0, 1.0, 4.0, 2.0, 3.0], 20, 1.0),
    ([float(v) for v in range(1, 21)], 95, 19.0),   # 20 runs: rank 19, not the maximum
    ([float(v) for v in range(1, 22)], 95, 20.0),   # 21 runs: rank ceil(19.95) = 20
    ([float(v) for v in range(1, 101)], 95, 95.0),
    ([float(v) for v in range(1, 101)], 100, 100.0),
    ([float(v) for v in range(1, 101)], 7, 7.0),      # 7 / 100 * 100 is not exactly 7
    ([2.0, 2.0, 9.0], 50, 2.0),              # ties
])
def test_percentile_is_by_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


@pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], 0), ([1.0], 101), ([1.0], -5)])
def test_percentile_refuses_no_values_and_a_q_out_of_range(values: list[float],
                                                           q: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, q)


@pytest.mark.parametrize(("values", "expected"), [
    ([], (None, None, None)),
    ([None, None], (None, None, None)),       # no run converged: nothing to show
    ([80.0], (80.0, 80.0, 80.0)),
    ([80.0, None, 120.0], (100.0, 120.0, 120.0)),   # median of two: their mean
    ([100.0, 90.0, 1965.0], (100.0, 1965.0, 1965.0)),  # the one long pause shows at p95
    ([1.0, 2.0, 3.0, 4.0, 50.0], (3.0, 50.0, 50.0)),
])
def test_spread_is_median_p95_max_of_what_exists(values: list[float | None],
                                                 expected: tuple[float | None, ...]) -> None:
    got = spread(values)
    assert (got["median"], got["p95"], got["max"]) == expected


@pytest.mark.parametrize(("predicted", "actual", "expected"), [
    (6.0, 4.0, 0.5),        # promised more than happened
    (2.0, 4.0, -0.5),
    (4, 4, 0.0),
    (20, 65.0, (20 - 65) / 65),
    (1.0, 0, None),         # nothing to be relative to
    (None, 4.0, None),
    (4.0, None, None),
    (True, 4.0, None),      # a flag is not a time
    ("4", 4.0, None),
])
def test_relative_error(predicted: object, actual: object, expected: float | None) -> None:
    assert relative_error(predicted, actual) == expected


@pytest.mark.parametrize(("predicted", "actual", "expected"), [
    (20, 65.0, -45.0),
    (300, 2, 298.0),        # post-copy's few ms of downtime: a ratio would say +14900 %
    (5, 0, 5.0),
    (None, 2, None),
    (5, False, None),
])
def test_difference(predicted: object, actual: object, expected: float | None) -> None:
    assert difference(predicted, actual) == expected


@pytest.mark.parametrize(("value", "unit", "shown"), [
    (None, "ms", "-"), (1965.4, "ms", "1965"), (3.305, "s", "3.31"), (0.1, "%", "10%"),
    (-0.456, "%", "-46%"), (0.1, "%+", "+10%"), (-25.0, "ms+", "-25"), (4.0, "ms+", "+4"),
])
def test_fmt(value: float | None, unit: str, shown: str) -> None:
    assert fmt(value, unit) == shown


SUMMARY: dict[str, Any] = {
    "total_s": 5.3, "qemu_total_ms": 4300, "qemu_downtime_ms": 50, "bytes_sent": 200 * MiB,
    "iterations": 7, "predicted_total_s": 4.0, "actual_total_s": 4.3,
    "predicted_downtime_ms": 100}


def test_a_converged_runs_numbers_and_prediction_errors_come_from_its_summary() -> None:
    r = run_result(True, None, SUMMARY)
    assert (r["converged"], r["total_s"], r["copy_s"], r["qemu_downtime_ms"]) == (
        True, 5.3, 4.3, 50)
    assert (r["bytes"], r["iterations"], r["reason"]) == (200 * MiB, 7, None)
    assert r["total_error"] == pytest.approx((4.0 - 4.3) / 4.3)
    assert r["downtime_error"] == pytest.approx(1.0)
    assert r["downtime_error_ms"] == 50.0
    assert (r["predicted_total_s"], r["predicted_downtime_ms"]) == (4.0, 100)


def test_a_run_that_did_not_converge_keeps_its_outcome_and_bytes_only() -> None:
    r = run_result(False, "not done within the 30 s deadline", SUMMARY)
    assert not r["converged"]
    assert r["reason"] == "not done within the 30 s deadline"
    assert [r[k] for k in ("total_s", "copy_s", "qemu_downtime_ms", "iterations",
                           "total_error", "downtime_error", "downtime_error_ms")] == [None] * 7
    assert r["bytes"] == 200 * MiB


def test_a_summary_without_a_prediction_has_no_errors() -> None:
    """A peer's job predicts nothing; a summary from before ``predicted_downtime_ms``
    has the total time's error only."""
    peer = run_result(True, None, {"qemu_total_ms": 3200, "qemu_downtime_ms": 3})
    assert (peer["total_error"], peer["downtime_error"], peer["copy_s"]) == (None, None, 3.2)
    older = run_result(True, None, {k: v for k, v in SUMMARY.items()
                                    if k != "predicted_downtime_ms"})
    assert older["total_error"] is not None
    assert older["downtime_error"] is None


def guest(blackout: float | None, *, converged: bool = True, memory_ok: bool = True,
          total_error: float | None = None, **more: Any) -> dict[str, Any]:
    return {"converged": converged, "memory_ok": memory_ok, "blackout_ms": blackout,
            "qemu_downtime_ms": blackout and blackout - 40, "copy_s": 9.0, "total_s": 10.0,
            "bytes": 300 * MiB, "lost": 5, "iterations": 4, "reason": None,
            "total_error": total_error, "downtime_error": None, **more}


def test_a_pair_is_judged_by_its_worse_guest_and_keeps_both() -> None:
    run = worse_of({"bench1": guest(120.0, total_error=0.2),
                    "bench2": guest(450.0, total_error=-0.5, copy_s=11.0)})
    assert run["converged"] and run["memory_ok"]
    assert (run["blackout_ms"], run["qemu_downtime_ms"], run["copy_s"]) == (450.0, 410.0, 11.0)
    assert run["total_error"] == -0.5           # the larger error by size, sign kept
    assert run["bytes"] == 600 * MiB            # the link carried both
    assert run["lost"] == 10
    assert run["guests"]["bench1"]["blackout_ms"] == 120.0
    assert run["guests"]["bench2"]["blackout_ms"] == 450.0


def test_a_pair_with_a_guest_that_did_not_converge_did_not_converge() -> None:
    run = worse_of({"bench1": guest(120.0),
                    "bench2": guest(None, converged=False, memory_ok=False,
                                    reason="not done within the 30 s deadline")})
    assert not run["converged"] and not run["memory_ok"]
    assert run["blackout_ms"] is None           # no worse blackout to show: it never ended
    assert run["reason"] == "bench2: not done within the 30 s deadline"


OLD_ROW_KEYS = {"scenario", "policy", "runs", "converged", "blackout_ms", "qemu_downtime_ms",
                "total_s", "copy_s", "copy_vs_limit", "bytes_mib", "memory_ok"}


def bench_run(blackout: float | None, *, scenario: str = "dirty-75", policy: str = "segue",
              **more: Any) -> dict[str, Any]:
    return {"scenario": scenario, "policy": policy, **guest(blackout, **more)}


def test_a_row_shows_median_p95_and_max_beside_the_keys_it_always_had() -> None:
    runs = [bench_run(b) for b in (80.0, 90.0, 100.0, 110.0)]
    runs.append(bench_run(1965.0, copy_s=20.0))
    row = summarize_one("dirty-75", "segue", runs, limit_s=5.0)
    assert set(row) >= OLD_ROW_KEYS
    assert (row["blackout_ms"], row["blackout_ms_p95"], row["blackout_ms_max"]) == (
        100.0, 1965.0, 1965.0)
    assert (row["copy_s"], row["copy_s_max"]) == (9.0, 20.0)
    assert (row["copy_vs_limit"], row["copy_vs_limit_max"]) == (9.0 / 5.0, 20.0 / 5.0)
    assert (row["runs"], row["converged"], row["memory_verified"]) == (5, 5, 5)
    assert row["bytes_mib"] == 300


def test_a_row_counts_converged_and_verified_runs_and_ignores_missing_values() -> None:
    runs = [bench_run(100.0), bench_run(None, converged=False),
            bench_run(300.0, memory_ok=False)]
    row = summarize_one("dirty-150", "qemu", runs, limit_s=None)
    assert (row["runs"], row["converged"], row["memory_verified"]) == (3, 2, 2)
    assert row["memory_ok"] is False
    assert (row["blackout_ms"], row["blackout_ms_max"]) == (200.0, 300.0)
    assert row["copy_vs_limit"] is None and row["copy_vs_limit_max"] is None


def test_a_rows_prediction_error_is_bias_then_size() -> None:
    runs = [bench_run(100.0, total_error=e) for e in (-0.1, 0.05, 0.3, -0.6)]
    runs.append(bench_run(100.0))               # a run without a prediction is skipped
    row = summarize_one("idle", "segue", runs, limit_s=None)
    assert row["total_error_bias"] == pytest.approx((-0.1 + 0.05) / 2)
    assert (row["total_error_p95"], row["total_error_max"], row["total_error_n"]) == (
        0.6, 0.6, 4)
    assert (row["downtime_error_bias"], row["downtime_error_max"],
            row["downtime_error_n"]) == (None, None, 0)


def test_a_pair_row_keeps_each_guests_blackout() -> None:
    runs = [dict(bench_run(None, scenario="pair"), **worse_of(
        {"bench1": guest(a), "bench2": guest(b)})) for a, b in ((100, 300), (120, 110))]
    row = summarize_one("pair", "segue", runs, limit_s=None)
    assert (row["blackout_ms"], row["blackout_ms_max"]) == (210.0, 300)
    assert row["blackout_ms_each"]["bench1"] == {"median": 110.0, "p95": 120, "max": 120}
    assert row["blackout_ms_each"]["bench2"] == {"median": 205.0, "p95": 300, "max": 300}


def test_summarize_gives_rows_in_the_given_orders_and_skips_what_did_not_run() -> None:
    runs = [bench_run(1.0, scenario=s, policy=p)
            for s in ("idle", "pair") for p in ("nova", "segue")]
    rows = summarize(runs, ["pair", "idle", "sparse"], ["segue", "nova", "qemu"],
                     {"idle": 2.0})
    assert [(r["scenario"], r["policy"]) for r in rows] == [
        ("pair", "segue"), ("pair", "nova"), ("idle", "segue"), ("idle", "nova")]
    assert rows[2]["copy_vs_limit"] == 4.5 and rows[0]["copy_vs_limit"] is None


def test_an_older_results_runs_summarize_without_the_new_keys() -> None:
    old = {"scenario": "idle", "policy": "qemu", "converged": True, "total_s": 3.6,
           "copy_s": 3.2, "qemu_downtime_ms": 231.0, "bytes": 157311592, "iterations": 3,
           "reason": None, "blackout_ms": 307.6, "lost": 186, "memory_ok": True, "rep": 0}
    row = summarize_one("idle", "qemu", [old], limit_s=3.2)
    assert (row["blackout_ms"], row["blackout_ms_p95"], row["copy_vs_limit"]) == (
        307.6, 307.6, 1.0)
    assert row["total_error_n"] == 0 and "blackout_ms_each" not in row


@pytest.mark.parametrize(("name", "rate_mibs", "touched_mib"), [
    ("idle", 0, 150),
    ("dirty-75", 34, 150),           # 75 % of 46.4 MiB/s
    ("dirty-150", 69, 150),
    ("sparse", 4, 150 + 64),         # its hot set is 64 MiB larger than the main guest's
    ("pair", 11, 2 * 150),           # two main guests, each at 25 %
])
def test_each_scenarios_rate_and_touched_ram(name: str, rate_mibs: int,
                                             touched_mib: int) -> None:
    scenario = SCENARIOS[name]
    assert scenario.dirty_mibs(46.4 * MiB) == rate_mibs
    assert scenario.touched_bytes(150 * MiB) == touched_mib * MiB


def test_the_sparse_guests_working_set_exceeds_what_the_link_carries_in_300_ms() -> None:
    link = 46.4 * MiB
    sparse = SCENARIOS["sparse"]
    hot = sparse.to_json()["hot_mib"]
    assert isinstance(hot, list) and hot[0] * MiB > 0.3 * link
    assert sparse.dirty_mibs(link) < 0.25 * link / MiB      # but it writes slowly


def test_limits_and_guests_needed() -> None:
    assert limits_s(["idle", "pair"], 150 * MiB, 50 * MiB) == {"idle": 3.0, "pair": 6.0}
    assert limits_s(["idle"], None, 50 * MiB) == {"idle": None}
    assert guests_needed(["idle", "dirty-75"]) == ["bench1"]
    assert guests_needed(["pair", "sparse"]) == ["bench1", "bench2", "sparse1"]
    assert Scenario("x", 0.5).guests == ("bench1",)


def test_the_tables_show_every_row_and_dashes_for_what_is_missing() -> None:
    rows = [summarize_one("dirty-150", "qemu", [bench_run(None, converged=False)], None),
            summarize_one("idle", "segue", [bench_run(100.0, total_error=0.1)], 3.0)]
    table = main_table(rows)
    assert len(table) == 3 + len(rows)
    assert table[3].split()[:3] == ["dirty-150", "qemu", "0/1"] and " - " in table[3]
    assert "100    100    100" in table[4]
    predicted = prediction_table(rows)
    assert len(predicted) == 4 and "+10%" in predicted[3]     # the segue row only
    assert guests_table(rows) == []


def test_the_guests_table_has_each_guest_and_the_worse() -> None:
    runs = [dict(bench_run(None, scenario="pair"), **worse_of(
        {"bench1": guest(100.0), "bench2": guest(300.0)}))]
    table = guests_table([summarize_one("pair", "nova", runs, None)])
    assert [line.split()[2] for line in table[2:]] == ["bench1", "bench2", "worse"]
    assert table[-1].split()[3:] == ["300", "300", "300"]
