"""The policy's course while QEMU copies, corrected from the passes: tables of a sampled rate,
the passes QEMU then reports, and what the policy must do at each pass boundary (the model is
``segue.engine.prediction``'s, the decisions ``segue.engine.course``'s)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from engine_fakes import host_facts
from precopy_samples import LINK, MEM, MiB, passes

from segue.api.migration import MigrationOptionsBody
from segue.engine.course import decide
from segue.engine.policies import SeguePolicy
from segue.engine.policy import initial_state
from segue.engine.prediction import Estimate, predict, sampled


def course(sampled_mibs: float, dirty_sets_mib: list[float], **options: Any
           ) -> list[tuple[int, str, dict[str, Any]]]:
    """(iteration, kind, parameters) of every action Segue's policy takes over ``passes``,
    planned from ``sampled_mibs`` over ``LINK``."""
    policy = SeguePolicy(MigrationOptionsBody(**options))
    policy.plan(MEM, LINK, sampled_mibs * MiB, host_facts("host1"))
    got = []
    for at, s in passes(dirty_sets_mib):
        for action in policy.decide(s, at):
            assert action.reason
            if action.kind == "note" or action.summary:  # a correction's: what it predicts
                assert action.summary["corrected_at_iteration"] == s.iteration
            got.append((s.iteration, action.kind, dict(action.parameters)))
    return got


NOTE, POSTCOPY = "note", "start_postcopy"
CORRECTIONS = [
    # predicted not to converge (34 MiB/s sampled, up to 45: the link), seen to converge:
    # pass 1 saturates at the 64 MiB working set (post-copy put off: the bottom of the
    # sampled range converges), pass 2 measures 34 MiB/s: the post-copy is called off
    ("75 %: post-copy planned, then called off", 34, [64, 47.3, 35, 26], {},
     [(2, NOTE, {}), (3, NOTE, {})]),
    # predicted to converge (11 MiB/s sampled), seen not to: pass 2 re-dirties all 64 MiB
    ("predicted to converge, seen not to: post-copy", 11, [64, 64, 64], {},
     [(2, NOTE, {}), (3, POSTCOPY, {})]),
    ("... without post-copy: the bound, then the throttle", 11, [64, 64, 64],
     {"allow_postcopy": False},
     [(2, NOTE, {}), (3, "set_parameters", {"downtime-limit": 300}),
      (4, "set_parameters", {"cpu-throttle-increment": 20})]),
    # 150 %: pass 1 saturates at 64 MiB, and even the sampled range's bottom re-dirties it
    # all in a pass: post-copy right after the first pass, as before
    ("150 %: post-copy after the first pass", 69, [64], {}, [(2, POSTCOPY, {})]),
    # 8 MiB rewritten at 100 MiB/s (300 ms sampled: 26.7 MiB/s); the old model sees 100 MiB/s
    # over the memory and goes to post-copy; the working set fits a 200 ms pass
    # (one choice up per pass)
    ("a hot set smaller than memory converges", 26.7, [8, 8, 8, 8, 8], {},
     [(2, NOTE, {}), (3, "set_parameters", {"downtime-limit": 50}),
      (4, "set_parameters", {"downtime-limit": 100}),
      (5, "set_parameters", {"downtime-limit": 200})]),
    # the user's own target: kept while it converges, else raised as far as needed (within
    # the bound: 8 MiB at 46 MiB/s takes 174 ms), never a post-copy while a target does
    ("the user's 20 ms raised for the hot set", 26.7, [8, 8, 8], {"downtime_limit_ms": 20},
     [(2, NOTE, {}), (3, "set_parameters", {"downtime-limit": 200})]),
    ("the user's 1000 ms, above the bound, kept", 34, [64, 47.3, 35],
     {"downtime_limit_ms": 1000}, [(2, NOTE, {})]),
    # ... and the user's higher bound lets it go further than 300 ms
    ("the user's bound: 64 MiB at the link fits 2000 ms", 11, [64, 64, 64],
     {"downtime_limit_ms": 50, "max_downtime_ms": 2000},
     [(2, NOTE, {}), (3, "set_parameters", {"downtime-limit": 2000})]),
    # 90 %: each pass shrinks by 10 %, which the stall ladder would take for a stall; the
    # corrections see it converge and keep it
    ("90 %: no stall escalation while it converges", 41,
     [64, 57.6, 51.8, 46.7, 42, 37.8, 34, 30.6], {},
     [(2, NOTE, {}), (3, NOTE, {}), (3, "set_parameters", {"downtime-limit": 50}),
      (4, "set_parameters", {"downtime-limit": 100})]),
    # one short pass calling for a far larger target (its rate measured over its bytes, the
    # noisiest kind) moves it up one choice; the next pass, back to the trend, keeps it
    ("75 %: one noisy pass moves the target one step", 34,
     [64, 47.3, 35, 26, 19, 10, 11, 5, 3.7, 2.7], {},
     [(2, NOTE, {}), (3, NOTE, {}), (8, "set_parameters", {"downtime-limit": 50}),
      (9, "set_parameters", {"downtime-limit": 100})]),
]


@pytest.mark.parametrize(("case", "sample", "dirty_sets", "options", "expected"), CORRECTIONS,
                         ids=[c[0] for c in CORRECTIONS])
def test_the_course_is_corrected_from_the_passes(
        case: str, sample: float, dirty_sets: list[float], options: dict[str, Any],
        expected: list[tuple[int, str, dict[str, Any]]]) -> None:
    assert course(sample, dirty_sets, **options) == expected


def test_the_old_model_sent_the_small_hot_set_to_post_copy() -> None:
    """The row above: without the working set, 100 MiB/s over a 46 MiB/s link never
    converges under the bound."""
    assert not predict(MEM, LINK, 100 * MiB, 300).converges
    assert predict(MEM, LINK, 100 * MiB, 200, working_set=8 * MiB, pending=8 * MiB).converges


UNCERTAIN = [
    # a sample reading 50 MiB/s for a guest dirtying 41 (within the sample's noise): taken
    # at its word, pre-copy could not converge; its range's bottom (37) does: a pass
    # measures 41 and pre-copy goes on
    ("a high sample: a pass to measure, pre-copy goes on", 50, [64, 57, 50.5, 45],
     [(2, NOTE, {}), (3, NOTE, {}), (3, "set_parameters", {"downtime-limit": 50})]),
    # the same sample for a guest dirtying faster than the link: post-copy one pass later
    ("a high sample: a pass to measure, then post-copy", 50, [64, 64], [(2, NOTE, {}),
                                                                       (3, POSTCOPY, {})]),
]


@pytest.mark.parametrize(("case", "sample", "dirty_sets", "expected"), UNCERTAIN,
                         ids=[c[0] for c in UNCERTAIN])
def test_post_copy_waits_for_a_measured_pass_while_the_sample_is_uncertain(
        case: str, sample: float, dirty_sets: list[float],
        expected: list[tuple[int, str, dict[str, Any]]]) -> None:
    assert course(sample, dirty_sets) == expected


@pytest.mark.parametrize(("low", "high", "expected"), [
    (50, 50, [(2, POSTCOPY, {})]),  # taken at its word (no range): post-copy at once
    (37, 63, [(2, NOTE, {})]),  # its range (the Poisson count of 50 MiB/s): one more pass
])
def test_the_uncertainty_margin_decides_the_first_correction(
        low: float, high: float, expected: list[tuple[int, str, dict[str, Any]]]) -> None:
    options = MigrationOptionsBody()
    model = Estimate(MEM, LINK, 50 * MiB, low * MiB, high * MiB, MEM, MEM, "sampled")
    state = initial_state(options, model.predict(20, model.dirty_high), 20, model=model)
    got = []
    for at, s in passes([64, 57]):
        state, actions = decide(state, s, at, options)
        got += [(s.iteration, a.kind, dict(a.parameters)) for a in actions]
    assert got[:1] == expected


def test_a_planned_post_copy_still_starts_without_a_correction() -> None:
    """No pass boundary seen (the first sample is already past the first pass): the plan
    made before the start holds."""
    options = MigrationOptionsBody()
    model = sampled(MEM, LINK, 69 * MiB)
    state = initial_state(options, model.predict(20, model.dirty_high), 20, model=model)
    state, actions = decide(state, passes([64])[-1][1], 6.0, options)
    assert [a.kind for a in actions] == [POSTCOPY]


def test_a_user_request_is_not_held_by_a_correction() -> None:
    policy = SeguePolicy(MigrationOptionsBody())
    policy.plan(MEM, LINK, 34 * MiB, host_facts("host1"))
    samples = passes([64])
    for at, s in samples[:-1]:
        policy.decide(s, at)
    policy.request_postcopy("asked by the user")
    at, boundary = samples[-1]
    assert [a.kind for a in policy.decide(boundary, at)] == [POSTCOPY]


def test_a_wobbling_rate_does_not_move_the_target() -> None:
    """After the target is set, passes whose rate moves by a few % keep it."""
    got = course(41, [64, 57.6, 52.5, 46.7, 42.5, 37.8, 34.4, 30.6])
    assert [a for a in got if a[1] == "set_parameters"] == [
        (3, "set_parameters", {"downtime-limit": 50}),
        (4, "set_parameters", {"downtime-limit": 100})]


def test_the_corrected_prediction_and_its_reason() -> None:
    policy = SeguePolicy(MigrationOptionsBody())
    policy.plan(MEM, LINK, 34 * MiB, host_facts("host1"))
    actions = []
    for at, s in passes([64, 47.3]):
        actions += policy.decide(s, at)
    last = actions[-1]
    assert "pass 2 dirtied 47.3 MiB" in last.reason and "called off" in last.reason
    assert last.summary["corrected_converges"] is True
    assert last.summary["corrected_downtime_ms"] <= 20  # type: ignore[operator]
    # QEMU's 7 s so far plus what is left: ~4 s of passes shrinking by a quarter each
    assert 9 < last.summary["corrected_total_s"] < 13  # type: ignore[operator]


@pytest.mark.parametrize(("dirty_sets", "expected"), [
    # passes converging (50 % of the link): QEMU's instantaneous rates (XBZRLE's encoded
    # bytes, a link shared with another migration) do not send it to post-copy
    ([64, 32, 16, 8, 4], []),
    # passes re-dirtying everything: the correction itself goes to post-copy
    ([64, 64, 64], [POSTCOPY]),
])
def test_a_converging_verdict_outweighs_an_instantaneous_outpaced_sample(
        dirty_sets: list[float], expected: list[str]) -> None:
    policy = SeguePolicy(MigrationOptionsBody())
    policy.plan(MEM, LINK, 23 * MiB, host_facts("host1"))
    kinds = []
    for at, s in passes(dirty_sets):
        # every sample from the second pass on: dirtying faster than QEMU's "mbps"
        if s.iteration >= 2:
            s = replace(s, dirty_rate=11 * MiB, throughput=8 * MiB)
        kinds += [a.kind for a in policy.decide(s, at) if a.kind == POSTCOPY]
    assert kinds == expected
