"""The job keeps what the policy learns as QEMU copies: a correction's change of course is
noted with its reason, its corrected prediction joins the summary (at once, and in the final
one), and the final summary holds the prediction's errors against QEMU's numbers."""

from __future__ import annotations

import pytest
from engine_fakes import MiB, World, q

from segue.engine.phases import Phase


def a_pass_then_done() -> list:  # type: ignore[type-arg]
    """Pass 1 at 100 MiB/s (20 MiB a sample), pass 2 starts with 64 MiB, then QEMU completes
    in 6.4 s with 12 ms of downtime."""
    first = [q("active", n * 20 * MiB, 256 * MiB - n * 20 * MiB, iteration=1, mbps=838.9)
             for n in range(13)]
    second = [q("active", 270 * MiB, 60 * MiB, iteration=2, mbps=838.9)]
    end = q("completed", 330 * MiB, 0, 3, downtime=12, **{"total-time": 6400, "setup-time": 5})
    return [*first, *second, end]


async def test_the_correction_reaches_the_record_and_the_errors_the_summary() -> None:
    w = World(a_pass_then_done())
    w.src.dirty_mibs = 30.0  # sampled: 30 MiB/s, so pass 1's 64 MiB (25 MiB/s) is a rate
    await w.job().run()
    assert w.store.phases[-1] == Phase.COMPLETED, w.store.notes
    corrected = [n for n in w.store.notes if n.startswith("policy: after pass 1")]
    assert len(corrected) == 1 and "pre-copy converges" in corrected[0], w.store.notes
    s = w.store.summary
    assert s["corrected_at_iteration"] == 2 and s["corrected_converges"] is True
    assert (s["actual_total_s"], s["qemu_downtime_ms"]) == (6.4, 12)
    predicted = s["predicted_total_s"]
    assert isinstance(predicted, float)
    assert s["predicted_total_error"] == pytest.approx((predicted - 6.4) / 6.4, abs=1e-3)
    assert s["predicted_downtime_error_ms"] == pytest.approx(
        float(s["predicted_downtime_ms"]) - 12, abs=0.1)  # type: ignore[arg-type]
    assert s["corrected_total_error"] is not None
    assert s["downtime_bound_ms"] == 300 and "the cluster's" in str(s["downtime_bound_reason"])
