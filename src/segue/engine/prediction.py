"""The pre-copy model (pure): whether pre-copy converges and how long it takes, from the link,
the guest's dirty rate and its working set, with the uncertainty of what was measured; and
its correction from the passes QEMU reports while it copies.

The model: pass 1 sends the guest's memory; each later pass re-sends what the guest dirtied
during the previous one, ``min(working set, rate x pass time)``: the guest dirties pages it
has not yet dirtied in this pass at ``rate`` until it has touched its whole working set
(re-writing a page already dirty costs nothing more). Pre-copy converges once a pass fits in
the downtime target (``link x target`` bytes) within ``MAX_PREDICTED_ITERATIONS`` passes; the
predicted downtime is that last pass's data over the link (the fixed cost of a switchover,
device state and stop/resume, is not modelled: the job records the difference).

Where the numbers come from, and how sure they are:

- the rate: QEMU's ``calc-dirty-rate`` over ``SAMPLE_PERIOD_S``, sampled while the
  destination QEMU starts (so it costs the move nothing). QEMU hashes
  ``SAMPLE_PAGES_PER_GIB`` sampled pages at the start and the end and counts those that
  changed: what it reports is the distinct pages dirtied over the period, over the period.
  The count k of changed sampled pages is about Poisson: ``sampled`` gives the rate within
  ``SAMPLE_Z`` x sqrt(k + 1) sampled pages' worth (+1: a count of 0 still hides a rate of up
  to a page or so), never narrower than ±``SAMPLE_FLOOR`` (the guest's own rate varies from
  one period to the next). A QEMU before 8.2 samples whole seconds: its range is then
  narrower than this one, which errs on the safe side. At 34 MiB/s on a 256 MiB guest that
  is 23-45 MiB/s: on a 46 MiB/s link, the difference between a few passes and none
  converging. So a target is chosen only if it converges at the top of that range, and the
  policy gives up on pre-copy only when not even the bottom converges (``verdict``); in
  between, a pass measures the rate.
- the working set: from the first pass's own dirty sync, not from a longer sample. At QEMU's
  second dirty sync, ``remaining`` is what the guest dirtied during pass 1, a period of
  memory/link seconds (5.5 s for 256 MiB at 46 MiB/s) that saturates at the working set for
  any guest fast enough for it to matter. It costs no time at all: a second
  ``calc-dirty-rate`` period before the start would add its length to every move (the
  300 ms one is already hidden behind the destination's start, a longer one would not be)
  and still be shorter than the first pass. Nothing decided before that sync needs it: the
  downtime target only matters at the end and QEMU takes a new one mid-flight, and post-copy
  for a guest that outruns pre-copy starts after the first full pass anyway (the
  destination then faults only for what the guest re-dirtied). Until then the working set is
  the memory.
- the correction (``observe``, ``correct``): at every pass boundary seen between two samples
  (QEMU's dirty-sync count up by one), the pass replaces the sampled numbers: the dirty set
  is what QEMU just synced; the pass's time is the time between the passes' first samples
  when that is ``TIMED_PASS_S`` or more (also giving the link's throughput), else its bytes
  over the link; a rate (dirty set over pass time) well under the last estimate (under the
  sampled range, or ``SATURATED_SHARE`` of a measured rate) says the pass saw the whole
  working set (the working set is then that dirty set, the rate stays), else it is the
  guest's rate, now measured (no range: the pass's pages are counted, not sampled).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import JsonValue

from segue.engine.progress import Progress

MiB = 2**20
GIB = 2**30
MAX_PREDICTED_ITERATIONS = 30
DOWNTIME_WEIGHT = 10.0  # seconds of total time one second of downtime is worth
SAMPLE_PERIOD_S = 0.3  # the agent's calc-dirty-rate period (segue.agent.outgoing)
SAMPLE_PAGES_PER_GIB = 4096  # what the agent asks QEMU to sample (segue.qemu.migration)
SAMPLE_Z = 2.0  # standard deviations of the sampled count: ~98 % one-sided
SAMPLE_FLOOR = 0.1  # the narrowest range around a sampled rate, relative
TIMED_PASS_S = 2.0  # a pass this long is timed by its samples (±0.2 s polling is <10 %)
SATURATED_SHARE = 0.7  # a measured rate this far under the last one: the working set ran out

Verdict = Literal["converges", "uncertain", "does not converge"]


@dataclass(frozen=True)
class Prediction:
    """What pre-copy is expected to take. ``total_s``: the copy if it converges, else one
    pass then post-copy (``hybrid_s``); ``downtime_ms``: the last pass's data over the link
    when it converges, else 0 (post-copy stops the guest for its device state only)."""

    converges: bool
    total_s: float
    iterations: int
    reason: str
    hybrid_s: float = 0.0
    downtime_ms: float = 0.0

    def to_summary(self, postcopy_after_first_pass: bool = False) -> dict[str, JsonValue]:
        """The ``predicted_*`` summary keys for the course planned: pre-copy, or (with
        ``postcopy_after_first_pass``) one pass then post-copy."""
        hybrid = postcopy_after_first_pass or not self.converges
        return {"predicted_converges": self.converges,
                "predicted_total_s": round(self.hybrid_s if hybrid else self.total_s, 2),
                "predicted_hybrid_s": round(self.hybrid_s, 2),
                "predicted_iterations": self.iterations,
                "predicted_downtime_ms": 0.0 if hybrid else round(self.downtime_ms, 1),
                "prediction": self.reason}


def predict(memory: float, link_bps: float, dirty_bps: float, downtime_ms: int,
            working_set: float | None = None, pending: float | None = None) -> Prediction:
    """Model pre-copy (module doc): the next pass sends ``pending`` (default: the whole
    ``memory``), each later one what the guest dirtied during the previous one, bounded by
    ``working_set`` (default: ``memory``)."""
    hot = min(working_set or memory, memory)
    budget = link_bps * downtime_ms / 1000
    start = memory if pending is None else pending
    first = start / link_bps
    hybrid = first + min(dirty_bps * first, hot) / link_bps
    rates = f"dirty {dirty_bps / MiB:.1f} MiB/s vs link {link_bps / MiB:.1f} MiB/s"
    if hot < memory:
        rates += f", working set {hot / MiB:.0f} MiB"
    left, total = float(start), 0.0
    for iteration in range(1, MAX_PREDICTED_ITERATIONS + 1):
        if left <= budget:
            return Prediction(True, total + left / link_bps, iteration,
                              f"{rates}: pre-copy converges in {iteration} passes", hybrid,
                              1000 * left / link_bps)
        pass_s = left / link_bps
        total += pass_s
        left = min(dirty_bps * pass_s, hot)
    return Prediction(False, hybrid, MAX_PREDICTED_ITERATIONS,
                      f"{rates}: pre-copy alone does not converge within {downtime_ms} ms "
                      "downtime", hybrid)


@dataclass(frozen=True)
class Estimate:
    """The model's inputs: the guest's ``memory`` and the ``link_bps``; its dirty rate
    ``dirty_bps``, within [``dirty_low``, ``dirty_high``]; its ``working_set`` (the memory
    until a pass measured it); ``pending``: what the next pass sends (the memory before the
    start); ``basis``: where the numbers come from, in words."""

    memory: float
    link_bps: float
    dirty_bps: float
    dirty_low: float
    dirty_high: float
    working_set: float
    pending: float
    basis: str

    def predict(self, downtime_ms: int, dirty_bps: float | None = None) -> Prediction:
        """The prediction at the estimate's rate (or at ``dirty_bps``, e.g. a bound)."""
        rate = self.dirty_bps if dirty_bps is None else dirty_bps
        return predict(self.memory, self.link_bps, rate, downtime_ms, self.working_set,
                       self.pending)

    def range_mibs(self) -> list[JsonValue]:
        return [round(self.dirty_low / MiB, 1), round(self.dirty_high / MiB, 1)]


def sampled(memory: float, link_bps: float, dirty_bps: float,
            period_s: float = SAMPLE_PERIOD_S) -> Estimate:
    """The estimate before the start, from one ``calc-dirty-rate`` sample over ``period_s``
    (the range of the module doc; the working set unknown: the memory)."""
    pages = max(1.0, memory / GIB * SAMPLE_PAGES_PER_GIB)
    page_rate = memory / (pages * period_s)  # bytes/s one changed sampled page stands for
    count = dirty_bps / page_rate
    spread = max(SAMPLE_Z * math.sqrt(count + 1) * page_rate, SAMPLE_FLOOR * dirty_bps)
    low, high = max(0.0, dirty_bps - spread), dirty_bps + spread
    return Estimate(memory, link_bps, dirty_bps, low, high, memory, memory,
                    f"sampled {dirty_bps / MiB:.1f} MiB/s dirty ({low / MiB:.1f}-"
                    f"{high / MiB:.1f}) over {link_bps / MiB:.1f} MiB/s")


def cost(model: Estimate, target_ms: int) -> float:
    """What a downtime target costs, in seconds: the predicted ``total_s`` at the top of the
    rate's range plus ``DOWNTIME_WEIGHT`` x the target; infinite when it does not converge
    there."""
    guess = model.predict(target_ms, model.dirty_high)
    return guess.total_s + DOWNTIME_WEIGHT * target_ms / 1000 if guess.converges else math.inf


def best_target(model: Estimate, choices: Sequence[int]) -> tuple[int, Prediction] | None:
    """Of the downtime targets ``choices``, the one with the least ``cost`` among those that
    converge even at the top of the rate's range (the smaller on a tie), with its prediction
    there; None when none does."""
    costs = {c: cost(model, c) for c in choices}
    pick = min(costs, key=lambda c: (costs[c], c))
    if math.isinf(costs[pick]):
        return None
    return pick, model.predict(pick, model.dirty_high)


def verdict(model: Estimate, choices: Sequence[int]) -> Verdict:
    """``converges`` when some target of ``choices`` converges at the top of the rate's range,
    ``does not converge`` when not even the largest does at its bottom, else ``uncertain``
    (only a sampled rate has a range: an observed one decides)."""
    if best_target(model, choices) is not None:
        return "converges"
    if model.predict(max(choices), model.dirty_low).converges:
        return "uncertain"
    return "does not converge"


@dataclass(frozen=True)
class Mark:
    """One sample as the correction reads it (``at_s``: seconds since the job started)."""

    iteration: int
    transferred: int
    remaining: int
    at_s: float


@dataclass(frozen=True)
class Passes:
    """What the samples told of the passes so far: the ``last`` sample, the first sample of
    the current pass (``start``) and the dirty set the current pass started with."""

    last: Mark | None = None
    start: Mark | None = None
    dirty_set: float | None = None


@dataclass(frozen=True)
class Observation:
    """A pass boundary seen between two samples: ``iteration`` (QEMU's dirty-sync count)
    starts with ``dirty_set`` bytes, dirtied during the previous pass, which took ``timed_s``
    between its first sample and this one, sent ``sent`` bytes and started with
    ``previous_set`` (None: not observed, e.g. the first pass)."""

    iteration: int
    dirty_set: float
    timed_s: float
    sent: float
    previous_set: float | None


def observe(passes: Passes, progress: Progress, at_s: float
            ) -> tuple[Passes, Observation | None]:
    """Fold one active sample in; the Observation when it is the first sample of the pass
    right after the previous sample's, whose first sample was seen. The dirty set is the
    ``remaining`` QEMU reports plus what it sent of the new pass before this sample (what it
    sent since the last sample, less what the old pass still had to send then)."""
    now = Mark(progress.iteration, progress.transferred, progress.remaining, at_s)
    last, start = passes.last, passes.start
    if last is None:  # the first sample starts a pass only in the first pass
        return Passes(last=now, start=now if now.iteration == 1 else None), None
    if now.iteration == last.iteration:
        return replace(passes, last=now), None
    if now.iteration != last.iteration + 1 or start is None:
        return Passes(last=now, start=now), None  # passes went by unseen
    dirty = now.remaining + max(0, now.transferred - last.transferred - last.remaining)
    seen = Observation(now.iteration, float(dirty), now.at_s - start.at_s,
                       float(now.transferred - start.transferred), passes.dirty_set)
    return Passes(last=now, start=now, dirty_set=float(dirty)), seen


def correct(model: Estimate, seen: Observation) -> Estimate:
    """The estimate once the pass before ``seen`` is known (module doc): the link and the
    rate measured where the pass allows, the working set where it saturated."""
    timed = seen.timed_s >= TIMED_PASS_S and seen.sent > 0
    link = seen.sent / seen.timed_s if timed else model.link_bps
    # a short pass is timed by its bytes: the samples' ±0.2 s would swamp it
    short = not timed and seen.previous_set is not None
    pass_s = (seen.previous_set or 0.0) / link if short else seen.timed_s
    if pass_s <= 0:
        return model
    rate = seen.dirty_set / pass_s
    done = f"pass {seen.iteration - 1} dirtied {seen.dirty_set / MiB:.1f} MiB in {pass_s:.1f} s"
    speed = f"over {link / MiB:.1f} MiB/s"
    if rate < min(model.dirty_low, SATURATED_SHARE * model.dirty_bps):
        # far less than the guest dirties: it ran out of new pages to dirty
        return replace(model, link_bps=link, working_set=seen.dirty_set,
                       pending=seen.dirty_set,
                       basis=f"{done}: its working set ({rate / MiB:.1f} MiB/s, under "
                             f"{model.dirty_low / MiB:.1f} MiB/s) {speed}")
    return replace(model, link_bps=link, dirty_bps=rate, dirty_low=rate, dirty_high=rate,
                   working_set=max(model.working_set, seen.dirty_set), pending=seen.dirty_set,
                   basis=f"{done}: {rate / MiB:.1f} MiB/s dirty {speed}")


def prediction_errors(summary: Mapping[str, JsonValue]) -> dict[str, JsonValue]:
    """Prediction against outcome, from a job's summary: ``predicted_total_error`` and
    ``predicted_downtime_error`` ((predicted - actual) / actual, None where either is
    missing or the actual is 0), ``predicted_downtime_error_ms`` (predicted - actual), and
    ``corrected_total_error``, ``corrected_downtime_error`` for the last correction's."""
    def number(key: str) -> float | None:
        value = summary.get(key)
        return float(value) if isinstance(value, int | float) else None

    def relative(predicted: float | None, actual: float | None) -> float | None:
        return round((predicted - actual) / actual, 3) if predicted is not None and actual \
            else None

    total, downtime = number("actual_total_s"), number("qemu_downtime_ms")
    predicted_downtime = number("predicted_downtime_ms")
    return {"predicted_total_error": relative(number("predicted_total_s"), total),
            "predicted_downtime_error": relative(predicted_downtime, downtime),
            "predicted_downtime_error_ms": (round(predicted_downtime - downtime, 1)
                                            if predicted_downtime is not None
                                            and downtime is not None else None),
            "corrected_total_error": relative(number("corrected_total_s"), total),
            "corrected_downtime_error": relative(number("corrected_downtime_ms"), downtime)}
