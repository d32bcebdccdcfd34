"""The pre-copy model: the working set, the sample's range, the verdict, the passes observed and
the correction from them, the prediction's errors; tables of inputs and what they must give."""

from __future__ import annotations

from dataclasses import replace

import pytest

from segue.engine.prediction import (
    Estimate,
    Observation,
    Passes,
    best_target,
    correct,
    observe,
    predict,
    prediction_errors,
    sampled,
    verdict,
)
from segue.engine.progress import Progress

MiB = 2**20
MEM, LINK = 256 * MiB, 46 * MiB  # the benchmark's guest and link
UP_TO_300 = [20, 50, 100, 200, 300]


@pytest.mark.parametrize(("dirty", "hot", "downtime", "converges", "iterations"), [
    # a hot set smaller than memory: 8 MiB rewritten at 100 MiB/s fits in a 200 ms pass
    (100 * MiB, 8 * MiB, 200, True, 2),
    (100 * MiB, None, 200, False, 30),  # ... the old model (dirty set bounded by memory)
    (100 * MiB, 8 * MiB, 20, False, 30),  # ... but not in 20 ms: it is re-dirtied every pass
    # 75 % of the link over a 64 MiB working set: fewer passes than over the whole memory
    (34 * MiB, 64 * MiB, 20, True, 17),
    (34 * MiB, None, 20, True, 20),
    # 150 % over 64 MiB: 64 MiB left every pass, more than 300 ms carries (13.8 MiB)
    (69 * MiB, 64 * MiB, 300, False, 30),
    # a working set larger than the budget but a low rate: converges in a few passes
    (5 * MiB, 200 * MiB, 20, True, 4),
])
def test_the_working_set_bounds_what_a_pass_resends(
        dirty: float, hot: float | None, downtime: int, converges: bool,
        iterations: int) -> None:
    p = predict(MEM, LINK, dirty, downtime, working_set=hot)
    assert (p.converges, p.iterations) == (converges, iterations), p.reason
    if hot is not None and hot < MEM:
        assert f"working set {hot / MiB:.0f} MiB" in p.reason


@pytest.mark.parametrize(("pending", "dirty", "downtime", "converges", "total", "downtime_ms"), [
    (8 * MiB, 100 * MiB, 200, True, 8 / 46, 8 / 46 * 1000),  # the last pass is the downtime
    (0.0, 0.0, 20, True, 0.0, 0.0),
    (64 * MiB, 69 * MiB, 300, False, 64 / 46 + 64 / 46, 0.0),  # one pass, then post-copy
])
def test_a_prediction_from_what_the_next_pass_sends(
        pending: float, dirty: float, downtime: int, converges: bool, total: float,
        downtime_ms: float) -> None:
    p = predict(MEM, LINK, dirty, downtime, working_set=64 * MiB, pending=pending)
    assert p.converges is converges
    assert p.total_s == pytest.approx(total)
    assert p.downtime_ms == pytest.approx(downtime_ms)
    assert p.to_summary()["predicted_downtime_ms"] == pytest.approx(downtime_ms, abs=0.1)
    assert p.to_summary(postcopy_after_first_pass=True)["predicted_downtime_ms"] == 0.0


@pytest.mark.parametrize(("dirty", "low", "high"), [
    (0.0, 0.0, 1.7 * MiB),  # no changed page seen still hides ~2 sampled pages' worth
    (11 * MiB, 4.7 * MiB, 17.3 * MiB),  # ~13 changed pages of 1024 sampled: +-57 %
    (34 * MiB, 23.2 * MiB, 44.8 * MiB),  # ~41 pages: +-32 %, up to the 46 MiB/s link
    (69 * MiB, 53.7 * MiB, 84.3 * MiB),  # ~83 pages: +-22 %
    (1000 * MiB, 900 * MiB, 1100 * MiB),  # many pages: never narrower than +-10 %
])
def test_the_sampled_rate_is_a_range(dirty: float, low: float, high: float) -> None:
    model = sampled(MEM, LINK, dirty)
    assert model.dirty_low == pytest.approx(low, abs=0.05 * MiB)
    assert model.dirty_high == pytest.approx(high, abs=0.05 * MiB)
    assert (model.working_set, model.pending) == (MEM, MEM)  # not known before a pass
    assert sampled(4 * MEM, LINK, dirty).dirty_high <= model.dirty_high  # more pages sampled


def measured(rate: float, hot: float = MEM, pending: float = MEM) -> Estimate:
    return Estimate(MEM, LINK, rate, rate, rate, hot, pending, "measured")


@pytest.mark.parametrize(("model", "expected"), [
    (sampled(MEM, LINK, 11 * MiB), "converges"),
    # 34 MiB/s sampled: converges at its bottom, not at its top: a pass must tell
    (sampled(MEM, LINK, 34 * MiB), "uncertain"),
    (sampled(MEM, LINK, 69 * MiB), "does not converge"),
    # measured rates have no range: never uncertain
    (measured(34 * MiB, 64 * MiB, 48 * MiB), "converges"),
    (measured(46 * MiB, 64 * MiB, 64 * MiB), "does not converge"),
    # the working set measured by the first pass, the sampled range kept
    (replace(sampled(MEM, LINK, 34 * MiB), working_set=64 * MiB, pending=64 * MiB),
     "uncertain"),
    (replace(sampled(MEM, LINK, 69 * MiB), working_set=64 * MiB, pending=64 * MiB),
     "does not converge"),
    (replace(sampled(MEM, LINK, 60 * MiB), working_set=8 * MiB, pending=8 * MiB),
     "converges"),
])
def test_verdict(model: Estimate, expected: str) -> None:
    assert verdict(model, UP_TO_300) == expected


@pytest.mark.parametrize(("model", "choices", "expected"), [
    (sampled(MEM, LINK, 0.0), UP_TO_300, 20),  # idle: the smallest costs nothing
    (sampled(MEM, LINK, 30 * MiB), UP_TO_300, 200),  # at the range's top, 20 ms is too slow
    (sampled(MEM, LINK, 30 * MiB), [20, 50, 100], None),  # a lower bound: none for sure
    (replace(sampled(MEM, LINK, 60 * MiB), working_set=8 * MiB, pending=8 * MiB),
     UP_TO_300, 200),  # the hot set in one pass
    (sampled(MEM, LINK, 69 * MiB), UP_TO_300, None),
])
def test_best_target_converges_at_the_top_of_the_range(
        model: Estimate, choices: list[int], expected: int | None) -> None:
    best = best_target(model, choices)
    assert (best[0] if best else None) == expected


def sample(iteration: int, transferred: float, remaining: float) -> Progress:
    return Progress(status="active", transferred=int(transferred),  # type: ignore[arg-type]
                    remaining=int(remaining), total=MEM, dirty_rate=0.0, throughput=LINK,
                    iteration=iteration, expected_downtime_ms=None, downtime_ms=None,
                    total_time_ms=None, setup_time_ms=None, eta_s=None, converging=None)


def _observe(samples: list[tuple[float, Progress]], passes: Passes = Passes()
             ) -> tuple[Passes, list[Observation]]:
    seen = []
    for at, s in samples:
        passes, one = observe(passes, s, at)
        if one is not None:
            seen.append(one)
    return passes, seen


@pytest.mark.parametrize(("case", "samples", "expected"), [
    ("no boundary", [(1.0, sample(1, 10 * MiB, 246 * MiB)),
                     (1.2, sample(1, 19 * MiB, 237 * MiB))], []),
    # pass 2 starts with 64 MiB: 60 remain, and 4 of the 9 MiB sent since went to pass 2
    ("a boundary", [(1.0, sample(1, 100 * MiB, 100 * MiB)),
                    (6.4, sample(1, 250 * MiB, 5 * MiB)),
                    (6.6, sample(2, 259 * MiB, 60 * MiB))],
     [Observation(2, 64 * MiB, 5.6, 159 * MiB, None)]),
    ("the next one knows the pass before", [(1.0, sample(1, 0, 256 * MiB)),
                                            (5.0, sample(2, 200 * MiB, 64 * MiB)),
                                            (6.4, sample(3, 264 * MiB, 48 * MiB))],
     [Observation(2, 64 * MiB, 4.0, 200 * MiB, None),
      Observation(3, 48 * MiB, 1.4, 64 * MiB, 64 * MiB)]),
    ("passes gone by unseen", [(1.0, sample(1, 0, 200 * MiB)),
                               (1.2, sample(3, 300 * MiB, 9 * MiB))], []),
    ("no first sample of the pass", [(1.0, sample(2, 300 * MiB, 9 * MiB)),
                                     (1.2, sample(3, 310 * MiB, 8 * MiB))], []),
])
def test_observe(case: str, samples: list[tuple[float, Progress]],
                 expected: list[Observation]) -> None:
    def numbers(o: Observation) -> tuple[object, ...]:
        return (o.iteration, o.dirty_set / MiB, round(o.timed_s, 6), o.sent / MiB,
                o.previous_set and o.previous_set / MiB)

    assert [numbers(o) for o in _observe(samples)[1]] == [numbers(o) for o in expected], case


SAMPLED_34 = sampled(MEM, LINK, 34 * MiB)  # 23.2-44.8 MiB/s


@pytest.mark.parametrize(("case", "model", "seen", "rate", "hot", "link"), [
    # pass 1 (5.6 s, timed by its samples) dirtied only 64 MiB: 11 MiB/s, far under the
    # sampled range: the guest ran out of new pages, 64 MiB is its working set
    ("pass 1 saturates: the working set", SAMPLED_34,
     Observation(2, 64 * MiB, 5.6, 257.6 * MiB, None), 34, 64, 46),
    # pass 2 (64 MiB, 1.4 s by its bytes: too short to time by samples) dirtied 48 MiB:
    # 34.5 MiB/s, within the range: the guest's rate, now measured
    ("pass 2 measures the rate", replace(SAMPLED_34, working_set=64 * MiB),
     Observation(3, 48 * MiB, 1.4, 64 * MiB, 64 * MiB), 34.5, 64, 46),
    # a measured rate, then a pass dirtying at under 70 % of it: the working set ran out
    ("a later pass saturates", measured(40 * MiB),
     Observation(5, 10 * MiB, 0.4, 20 * MiB, 20 * MiB), 40, 10, 46),
    # a pass dirtying a little less than the measured rate: the rate, not a working set
    ("a rate that wobbles", measured(40 * MiB, 64 * MiB),
     Observation(5, 17 * MiB, 0.4, 20 * MiB, 20 * MiB), 39.1, 64, 46),
    # a long pass times the link too: 200 MiB in 5 s
    ("a long pass measures the link", SAMPLED_34,
     Observation(2, 150 * MiB, 5.0, 200 * MiB, None), 30, MEM / MiB, 40),
])
def test_correct_from_an_observed_pass(case: str, model: Estimate, seen: Observation,
                                       rate: float, hot: float, link: float) -> None:
    got = correct(model, seen)
    assert got.dirty_bps / MiB == pytest.approx(rate, abs=0.1), case
    assert got.working_set / MiB == pytest.approx(hot), case
    assert got.link_bps / MiB == pytest.approx(link, rel=0.01), case
    assert got.pending == seen.dirty_set and got.basis.startswith(f"pass {seen.iteration - 1}")
    if got.dirty_bps != model.dirty_bps:  # measured: no range left
        assert got.dirty_low == got.dirty_high == got.dirty_bps


def test_a_pass_without_time_corrects_nothing() -> None:
    assert correct(SAMPLED_34, Observation(2, 64 * MiB, 0.0, 0.0, None)) == SAMPLED_34


@pytest.mark.parametrize(("summary", "expected"), [
    ({"predicted_total_s": 6.0, "actual_total_s": 5.0, "predicted_downtime_ms": 20.0,
      "qemu_downtime_ms": 50}, (0.2, -0.6, -30.0, None, None)),
    ({"predicted_total_s": 4.0, "actual_total_s": 5.0, "predicted_downtime_ms": 0.0,
      "qemu_downtime_ms": 2, "corrected_total_s": 5.5, "corrected_downtime_ms": 3.0},
     (-0.2, -1.0, -2.0, 0.1, 0.5)),
    ({"predicted_total_s": 4.0, "actual_total_s": 5.0},
     (-0.2, None, None, None, None)),  # no downtime
    ({"actual_total_s": 5.0, "qemu_downtime_ms": 0}, (None,) * 5),  # a peer's
    ({"predicted_downtime_ms": 5.0, "qemu_downtime_ms": 0}, (None, None, 5.0, None, None)),
])
def test_prediction_errors(summary: dict[str, float], expected: tuple[float | None, ...]
                           ) -> None:
    got = prediction_errors(summary)
    assert (got["predicted_total_error"], got["predicted_downtime_error"],
            got["predicted_downtime_error_ms"], got["corrected_total_error"],
            got["corrected_downtime_error"]) == expected
