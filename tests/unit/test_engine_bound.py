"""The downtime bound: no target the policy chooses or escalates to by itself above it (300 ms
by default, the cluster's, or the migration's own); the user's explicit target kept; past it,
post-copy or the throttle. Tables of options and measurements, and what must come of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from engine_fakes import host_facts
from precopy_samples import passes

from segue.api.migration import MigrationOptionsBody
from segue.engine.course import decide
from segue.engine.policies import SeguePolicy
from segue.engine.policy import (
    choose_downtime,
    downtime_bound,
    initial_settings,
    initial_state,
)
from segue.engine.prediction import sampled
from segue.engine.progress import Progress

MiB = 2**20
MEM, LINK = 256 * MiB, 46.4 * MiB  # the run: 46.4 MiB/s measured


@dataclass(frozen=True)
class Opts:
    downtime_limit_ms: int | None = None
    max_bandwidth_mibs: int | None = None
    deadline_s: float = 600.0
    allow_postcopy: bool = True
    max_downtime_ms: int | None = None


@pytest.mark.parametrize(("opts", "cluster", "bound", "why"), [
    (Opts(), 300, 300, "300 ms, the cluster's"),
    (Opts(), 150, 150, "150 ms, the cluster's"),  # max_auto_downtime_ms in controller.toml
    (Opts(max_downtime_ms=2000), 300, 2000, "2000 ms, set for this migration"),
    (Opts(max_downtime_ms=100), 300, 100, "100 ms, set for this migration"),
])
def test_downtime_bound(opts: Opts, cluster: int, bound: int, why: str) -> None:
    assert downtime_bound(opts, cluster) == (bound, f"downtime bound {why}")


RATES = [0, 0.2, 5, 11, 20, 25, 30, 34, 38, 40, 42, 44, 46, 50, 69, 100]  # MiB/s


@pytest.mark.parametrize("dirty", RATES)
@pytest.mark.parametrize(("opts", "bound"), [
    (Opts(), 300), (Opts(allow_postcopy=False), 300), (Opts(), 100), (Opts(), 20),
    (Opts(allow_postcopy=False), 50),
])
def test_no_chosen_target_above_the_bound(opts: Opts, bound: int, dirty: float) -> None:
    """Whatever the sampled rate: 42 MiB/s over 46.4 once chose 2000 ms and paused a guest
    for 1.9 s."""
    chosen, reason = choose_downtime(opts, bound, sampled(MEM, LINK, dirty * MiB))
    assert chosen <= bound, reason


@pytest.mark.parametrize(("opts", "dirty", "expected", "why"), [
    # the case: the sample close to the link. Was 1000-2000 ms (the only targets
    # predicted to converge); now the smallest, and post-copy after the first pass
    (Opts(), 42, 20, "post-copy after the first pass"),
    (Opts(allow_postcopy=False), 42, 300, "auto-converge throttles"),  # the bound, no more
    # the user asks for more: a higher bound...
    (Opts(allow_postcopy=False, max_downtime_ms=2000), 69, 2000, "auto-converge"),
    # ... or a target, kept as given even above the bound
    (Opts(downtime_limit_ms=1000), 42, 1000, "above the 300 ms bound as asked"),
    (Opts(downtime_limit_ms=100), 42, 100, "set by the user"),
])
def test_a_target_above_the_bound_only_when_the_user_asks(
        opts: Opts, dirty: float, expected: int, why: str) -> None:
    bound = downtime_bound(opts)[0]
    chosen, reason = choose_downtime(opts, bound, sampled(MEM, LINK, dirty * MiB))
    assert chosen == expected and why in reason, reason


def stalled(iterations: range) -> list[Progress]:
    return [Progress(status="active", transferred=0,  # type: ignore[arg-type]
                     remaining=50 * MiB, total=MEM, dirty_rate=0.0, throughput=100 * MiB,
                     iteration=i, expected_downtime_ms=None, downtime_ms=None,
                     total_time_ms=None, setup_time_ms=None, eta_s=None, converging=None)
            for i in iterations]


@pytest.mark.parametrize(("opts", "start", "targets", "last"), [
    # from 20 ms, x1.5 up to the 300 ms bound, then post-copy
    (Opts(), 20, [30, 45, 67, 100, 150, 225, 300], ("start_postcopy", {})),
    # ... without post-copy: then the throttle
    (Opts(allow_postcopy=False), 20, [30, 45, 67, 100, 150, 225, 300],
     ("set_parameters", {"cpu-throttle-increment": 20})),
    # a user's higher bound: escalation goes on to it
    (Opts(max_downtime_ms=500), 200, [300, 450, 500], ("start_postcopy", {})),
    # the user's own target above the bound: kept, never escalated
    (Opts(downtime_limit_ms=1000), None, [], ("start_postcopy", {})),
    (Opts(downtime_limit_ms=1000, allow_postcopy=False), None, [],
     ("set_parameters", {"cpu-throttle-increment": 20})),
])
def test_escalation_stops_at_the_bound(opts: Opts, start: int | None, targets: list[int],
                                       last: tuple[str, Any]) -> None:
    state = initial_state(opts, downtime_ms=start)
    raised: list[int] = []
    actions: list[tuple[str, Any]] = []
    for s in stalled(range(2, 60)):
        state, got = decide(state, s, 1.0, opts)
        for a in got:
            actions.append((a.kind, a.parameters))
            if "downtime-limit" in a.parameters:
                raised.append(int(a.parameters["downtime-limit"]))
    assert raised == targets
    assert next(a for a in actions if "downtime-limit" not in a[1]) == last
    assert state.downtime_ms == (targets[-1] if targets else opts.downtime_limit_ms)


@pytest.mark.parametrize(("opts", "downtime", "param", "reason"), [
    (Opts(), None, 300, "downtime target 300 ms (not escalated: the bound is 300 ms)"),
    (Opts(max_downtime_ms=100), None, 100, "downtime target 100 ms (not escalated"),
    (Opts(), 20, 20, "downtime target 20 ms (escalates up to the 300 ms bound)"),
    (Opts(downtime_limit_ms=1000), None, 1000, "downtime target 1000 ms (not escalated"),
])
def test_the_bound_in_the_settings(opts: Opts, downtime: int | None, param: int,
                                   reason: str) -> None:
    settings = initial_settings(opts, downtime)
    assert settings.parameters["downtime-limit"] == param
    assert any(r.startswith(reason) for r in settings.reasons), settings.reasons


def test_a_correction_stays_within_the_bound() -> None:
    """Without post-copy, a guest seen not to converge (pass 2 re-dirties all 64 MiB) gets
    the bound, not more (the migration's own bound here)."""
    options = MigrationOptionsBody(allow_postcopy=False, max_downtime_ms=500)
    state = initial_state(options, downtime_ms=20, model=sampled(MEM, 46 * MiB, 11 * MiB))
    targets = []
    for at, s in passes([64, 64]):
        state, actions = decide(state, s, at, options)
        targets += [a.parameters["downtime-limit"] for a in actions
                    if "downtime-limit" in a.parameters]
    assert targets == [500]


@pytest.mark.parametrize(("options", "cluster", "bound", "why"), [
    (MigrationOptionsBody(), 300, 300, "the cluster's"),
    (MigrationOptionsBody(), 150, 150, "the cluster's"),
    (MigrationOptionsBody(max_downtime_ms=1000), 150, 1000, "set for this migration"),
])
def test_segue_policy_takes_the_clusters_bound_and_records_it(
        options: MigrationOptionsBody, cluster: int, bound: int, why: str) -> None:
    policy = SeguePolicy(options, cluster)
    plan = policy.plan(MEM, LINK, 42 * MiB, host_facts("host1"))
    assert plan.summary["downtime_bound_ms"] == bound
    assert why in str(plan.summary["downtime_bound_reason"]) and why in plan.notes[0]
    assert policy.state.bound_ms == bound and policy.downtime_ms <= bound
    assert policy.settings().parameters["downtime-limit"] <= bound
