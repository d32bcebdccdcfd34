"""The migration benchmark's summary maths (pure): runs in, rows out (``report.py`` prints
them).

A *run* is one measured move of a scenario's guests with one policy (a dict, as written to
``results.json``'s ``runs``); a *row* summarises every run of one (scenario, policy).

Statistics, over the runs where the value exists (a run that did not converge has no
blackout, downtime or copy time):

- median: ``statistics.median`` (the mean of the two middle values when their number is even),
  as the benchmark has always reported it;
- p95: nearest rank: the smallest value with at least 95 % of the values at or below it, the
  value at rank ceil(0.95 n) of the sorted values (1-based). It is always a value that was
  measured, and with fewer than 20 runs it is the maximum: 5 runs cannot tell a p95 apart
  from the worst run, and the table does not pretend they can;
- max: the worst run.

Prediction error (Segue's runs; a peer predicts nothing): relative, (predicted - actual) /
actual, of the total time (``predicted_total_s`` against ``actual_total_s``) and of the
downtime (``predicted_downtime_ms`` against QEMU's ``qemu_downtime_ms``); missing where
either side is missing or the actual is 0; and the downtime's absolute error in ms
(``downtime_error_ms``), which says more than a ratio when QEMU's downtime is a few ms (as
after post-copy). A row shows the median of each signed error (its bias: + means the model
promised more than happened) and the p95 and maximum of its size.

A row keeps the keys it has always had (``blackout_ms``, ``qemu_downtime_ms``, ``copy_s``,
``total_s`` as medians, ``converged``, ``memory_ok`` ...) and adds ``*_p95`` and ``*_max``
beside each, ``copy_vs_limit_max``, ``memory_verified`` (how many runs' memory checked out),
the prediction errors' ``*_error_bias``, ``*_error_p95``, ``*_error_max``, ``*_error_n`` (over
how many runs) and, for scenarios of several guests,
``blackout_ms_each`` (per guest: median, p95, max).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

P95 = 95.0
SPREAD_KEYS = ("blackout_ms", "qemu_downtime_ms", "copy_s", "total_s", "source_cpu_s")
ERROR_KEYS = ("total_error", "downtime_error", "downtime_error_ms")


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0 < q <= 100) of ``values`` by nearest rank: the value at
    1-based rank ceil(q/100 * n) of the sorted values. Raises ValueError when ``values`` is
    empty or ``q`` is outside (0, 100]."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile q must be in (0, 100], got {q}")
    # q * n first: q / 100 * n can land just above an integer (0.07 * 100 is
    # 7.000000000000001), and its ceiling would skip a rank
    rank = max(1, math.ceil(q * len(ordered) / 100))
    return ordered[rank - 1]


def spread(values: Iterable[float | None]) -> dict[str, float | None]:
    """Median, p95 (nearest rank) and maximum of the values that exist; all None if none."""
    got = [v for v in values if v is not None]
    if not got:
        return {"median": None, "p95": None, "max": None}
    return {"median": statistics.median(got), "p95": percentile(got, P95), "max": max(got)}


def relative_error(predicted: object, actual: object) -> float | None:
    """(predicted - actual) / actual, or None when either is not a number or actual is 0."""
    if not _number(predicted) or not _number(actual) or actual == 0:
        return None
    assert isinstance(predicted, int | float) and isinstance(actual, int | float)
    return (predicted - actual) / actual


def difference(predicted: object, actual: object) -> float | None:
    """predicted - actual, or None when either is not a number."""
    if not _number(predicted) or not _number(actual):
        return None
    assert isinstance(predicted, int | float) and isinstance(actual, int | float)
    return float(predicted - actual)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def run_result(converged: bool, reason: str | None, summary: Mapping[str, Any]
               ) -> dict[str, Any]:
    """A run's numbers from its job's summary (``segue.engine.job``): the keys the
    benchmark has always recorded, plus the prediction and its errors where the policy
    predicted anything. A run that did not converge keeps only its outcome (and the bytes
    it sent, if the summary has them)."""
    copy_ms = summary.get("qemu_total_ms")
    predicted = {key: summary.get(key) for key in
                 ("predicted_total_s", "actual_total_s", "predicted_downtime_ms")}
    result: dict[str, Any] = {
        "converged": converged, "reason": reason,
        "total_s": summary.get("total_s") if converged else None,
        "copy_s": copy_ms / 1000 if converged and _number(copy_ms) and copy_ms else None,
        "qemu_downtime_ms": summary.get("qemu_downtime_ms") if converged else None,
        "bytes": summary.get("bytes_sent"),
        "iterations": summary.get("iterations") if converged else None,
        # how much auto-converge slowed the guest (the most, and for how long)
        "throttle_max_pct": summary.get("throttle_max_pct") if converged else None,
        "throttled_s": summary.get("throttled_s") if converged else None,
        # after a post-copy: how long the guest's vCPUs waited for faulted pages
        "postcopy_blocktime_ms": summary.get("postcopy_blocktime_ms") if converged else None,
        **predicted,
        "total_error": relative_error(predicted["predicted_total_s"],
                                      predicted["actual_total_s"]) if converged else None,
        "downtime_error": relative_error(predicted["predicted_downtime_ms"],
                                         summary.get("qemu_downtime_ms")) if converged else None,
        "downtime_error_ms": difference(predicted["predicted_downtime_ms"],
                                        summary.get("qemu_downtime_ms")) if converged else None,
    }
    return result


def worse_of(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One run of several guests moved at once, judged by its worse guest: converged and
    memory_ok only if every guest's did, the largest blackout, downtime, copy and total time,
    the larger prediction error (by size), the bytes of all guests (the link carried them
    all), every guest's reason; ``guests`` keeps each guest's own result. A time is None
    when any guest has none (one that did not converge has no blackout)."""
    each = list(results.values())
    merged: dict[str, Any] = {
        "converged": all(r.get("converged") for r in each),
        "memory_ok": all(r.get("memory_ok") for r in each),
        "reason": "; ".join(f"{vm}: {r['reason']}" for vm, r in results.items()
                            if r.get("reason")) or None,
        "bytes": sum(r.get("bytes") or 0 for r in each),
        "lost": sum(r.get("lost") or 0 for r in each),
        "postcopy": any(r.get("postcopy") for r in each),
        "guests": {vm: dict(r) for vm, r in results.items()},
    }
    for key in (*SPREAD_KEYS, "iterations", "downtime_target_ms"):
        values = [r.get(key) for r in each]
        got = [v for v in values if v is not None]
        merged[key] = max(got) if got and len(got) == len(values) else None
    for key in ERROR_KEYS:
        errors = [r[key] for r in each if r.get(key) is not None]
        merged[key] = max(errors, key=abs) if errors else None
    return merged


def summarize(runs: Sequence[Mapping[str, Any]], scenarios: Sequence[str],
              policies: Sequence[str], limits_s: Mapping[str, float | None]
              ) -> list[dict[str, Any]]:
    """One row per (scenario, policy) with runs, in the given orders; ``limits_s``: each
    scenario's physical limit (touched RAM / measured bandwidth), None where unknown."""
    rows = []
    for scenario in scenarios:
        for policy in policies:
            mine = [r for r in runs if r["scenario"] == scenario and r["policy"] == policy]
            if mine:
                rows.append(summarize_one(scenario, policy, mine, limits_s.get(scenario)))
    return rows


def summarize_one(scenario: str, policy: str, runs: Sequence[Mapping[str, Any]],
                  limit_s: float | None) -> dict[str, Any]:
    """The row of one (scenario, policy): see the module doc for its keys."""
    row: dict[str, Any] = {
        "scenario": scenario, "policy": policy, "runs": len(runs),
        "converged": sum(bool(r["converged"]) for r in runs),
        "memory_ok": all(r["memory_ok"] for r in runs),
        "memory_verified": sum(bool(r["memory_ok"]) for r in runs),
    }
    for key in SPREAD_KEYS:
        got = spread(r.get(key) for r in runs)
        row[key], row[f"{key}_p95"], row[f"{key}_max"] = got["median"], got["p95"], got["max"]
    copy = row["copy_s"]
    row["copy_vs_limit"] = copy / limit_s if copy and limit_s else None
    row["copy_vs_limit_max"] = row["copy_s_max"] / limit_s if copy and limit_s else None
    sent = spread(r.get("bytes") for r in runs)["median"]
    row["bytes_mib"] = (sent or 0) / 2**20
    for key in ERROR_KEYS:
        errors = [r[key] for r in runs if r.get(key) is not None]
        sizes = spread(abs(e) for e in errors)
        row[f"{key}_bias"] = statistics.median(errors) if errors else None
        row[f"{key}_p95"], row[f"{key}_max"] = sizes["p95"], sizes["max"]
        row[f"{key}_n"] = len(errors)
    each = _each_guest(runs)
    if each:
        row["blackout_ms_each"] = each
    return row


def _each_guest(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per guest of a several-guest scenario: its blackout's median, p95 and maximum."""
    names = sorted({vm for r in runs for vm in r.get("guests") or {}})
    return {vm: spread((r.get("guests") or {}).get(vm, {}).get("blackout_ms") for r in runs)
            for vm in names}
