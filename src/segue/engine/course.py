"""The migration policy while QEMU copies (pure): what to do on each ``query-migrate`` sample.

``decide`` takes the ``PolicyState`` that ``segue.engine.policy.initial_state`` built before
the start and returns the next one with the ``Action``s to apply now, each with its reason;
the choices (correction at pass boundaries, planned post-copy, the escalation ladder, the
deadline) are those of ``segue.engine.policy``'s module doc, the model they correct is
``segue.engine.prediction``'s.
"""

from __future__ import annotations

import math
from dataclasses import replace

from pydantic import JsonValue

from segue.engine.policy import (
    THROTTLE_INCREMENT_MAX,
    Action,
    PolicyOptions,
    PolicyState,
    target_choices,
)
from segue.engine.prediction import (
    Estimate,
    Prediction,
    best_target,
    correct,
    cost,
    observe,
    verdict,
)
from segue.engine.progress import Progress

DOWNTIME_STEP = 1.5
STALL_ITERATIONS = 2
RETARGET_GAIN_S = 1.0  # a correction changes a converging target only to save this much cost


def decide(state: PolicyState, progress: Progress, elapsed_s: float,
           options: PolicyOptions) -> tuple[PolicyState, list[Action]]:
    """The next state and the actions for one ``query-migrate`` sample (the module doc): a
    post-copy due at once (a risk, the user's request), else the correction at a pass
    boundary, else a planned post-copy, else the escalation ladder. Never more than one
    change of course per sample."""
    if state.postcopy or progress.status not in ("active", "setup"):
        return state, []
    if elapsed_s > options.deadline_s:
        return state, [Action("abort", f"not converged within the {options.deadline_s:.0f} s "
                                       "deadline")]
    if progress.status != "active":
        return state, []
    state = _track(state, progress)  # every pass's first sample, whatever is decided on it
    if state.early_postcopy and not state.early_postcopy_predicted:
        if progress.iteration < state.early_postcopy_iteration:
            return state, []
        return _postcopy(state, state.early_postcopy)
    state, actions = _correct(state, progress, elapsed_s, options)
    if actions:
        return state, actions
    if state.early_postcopy:
        if progress.iteration < state.early_postcopy_iteration:
            return state, []  # the first pass first
        return _postcopy(state, state.early_postcopy)
    if _outpaced(progress) and options.allow_postcopy and state.verdict != "converges":
        return _postcopy(state, f"dirty rate {progress.dirty_rate / 2**20:.1f} MiB/s >= "
                                f"throughput {progress.throughput / 2**20:.1f} MiB/s after "
                                f"pass {progress.iteration - 1}: pre-copy cannot converge")
    if progress.iteration - state.best_iteration < STALL_ITERATIONS or _corrected_lately(
            state, progress):
        return state, []
    state = replace(state, best_iteration=progress.iteration)
    return _escalate(state, progress, options)


def _correct(state: PolicyState, progress: Progress, elapsed_s: float,
             options: PolicyOptions) -> tuple[PolicyState, list[Action]]:
    """At a pass boundary, the model corrected from the pass (``prediction.correct``) and
    the course it then calls for: a better target, post-copy now, a planned post-copy called
    off or put off one pass; each with its reason and the corrected prediction."""
    if state.model is None:
        return state, []
    passes, seen = observe(state.passes, progress, elapsed_s)
    if seen is None:
        return replace(state, passes=passes), []
    model = correct(state.model, seen)
    choices = target_choices(options, state.bound_ms)
    found = verdict(model, choices)
    changed = found != state.verdict
    state = replace(state, passes=passes, model=model, verdict=found,
                    corrected_iteration=seen.iteration)
    why = f"after pass {seen.iteration - 1}, {model.basis}"
    if found == "converges":
        target = _converging_target(state, model, choices, options)
        return _keep_copying(state, target, model.predict(target), why, changed,
                             _corrected(model.predict(target), progress, elapsed_s))
    summary = _corrected(model.predict(choices[-1]), progress, elapsed_s)
    if found == "does not converge":
        bound = f"pre-copy cannot converge within {choices[-1]} ms of downtime"
        if options.allow_postcopy:
            state, actions = _postcopy(state, f"{why}: {bound}")
            return state, [replace(actions[0], summary=summary)]
        return _at_bound(state, choices[-1], f"{why}: {bound}; post-copy not allowed: "
                                             "auto-converge throttles the guest", summary, changed)
    if state.early_postcopy and progress.iteration >= state.early_postcopy_iteration:
        state = replace(state, early_postcopy_iteration=progress.iteration + 1)
        return state, [Action("note", f"{why}: pre-copy may still converge; post-copy put off "
                                      "one pass to measure the guest's rate", summary=summary)]
    return state, []


def _converging_target(state: PolicyState, model: Estimate, choices: list[int],
                       options: PolicyOptions) -> int:
    """The target for a migration seen to converge: the user's own while it converges, else
    the smallest above it that does; the policy's own choice otherwise (``best_target``),
    kept unless the best saves ``RETARGET_GAIN_S`` (a rate that wobbles by a few % must not
    flap it), and raised by one of ``choices`` per pass at most: a short pass's rate is
    noisy (timed by its bytes), one such pass raised a 20 ms target to 300 ms where the next
    passes (or the throttle) would have converged at 20 ms, and the next pass may inherit
    that rate (read as a working set running out); a guest that needs the higher target
    gets it a few short passes later."""
    if options.downtime_limit_ms:
        return next((c for c in choices if math.isfinite(cost(model, c))), choices[-1])
    target = (best_target(model, choices) or (state.downtime_ms,))[0]
    if cost(model, target) > cost(model, state.downtime_ms) - RETARGET_GAIN_S:
        return state.downtime_ms
    if target > state.downtime_ms:  # up one choice per pass: one pass may be a noisy one
        return next((c for c in choices if c > state.downtime_ms), target)
    return target


def _keep_copying(state: PolicyState, target: int, guess: Prediction, why: str, changed: bool,
                  summary: dict[str, JsonValue]) -> tuple[PolicyState, list[Action]]:
    """Pre-copy converges: the best target for what was seen, a planned post-copy off."""
    course = f"{why}: pre-copy converges ({guess.iterations} passes, ~{guess.total_s:.1f} s)"
    actions: list[Action] = []
    if state.early_postcopy_predicted:
        state = replace(state, early_postcopy=None, early_postcopy_predicted=False)
        actions.append(Action("note", f"{course}: the planned post-copy is called off",
                              summary=summary))
    if target != state.downtime_ms:
        actions.append(Action("set_parameters", f"{course}: downtime target "
                                                f"{state.downtime_ms} -> {target} ms",
                              {"downtime-limit": target}, summary=summary))
        state = replace(state, downtime_ms=target)
    elif changed and not actions:
        actions.append(Action("note", course, summary=summary))
    return state, actions


def _at_bound(state: PolicyState, bound: int, reason: str, summary: dict[str, JsonValue],
              changed: bool) -> tuple[PolicyState, list[Action]]:
    """Pre-copy cannot converge and post-copy is not allowed: the target at the bound (the
    stall ladder raises the throttle from there)."""
    if bound != state.downtime_ms:
        return replace(state, downtime_ms=bound), [Action(
            "set_parameters", f"{reason}: downtime target {state.downtime_ms} -> {bound} ms",
            {"downtime-limit": bound}, summary=summary)]
    return state, [Action("note", reason, summary=summary)] if changed else []


def _corrected(guess: Prediction, progress: Progress, elapsed_s: float
               ) -> dict[str, JsonValue]:
    """The corrected prediction as summary keys: the total from QEMU's start (its time so
    far, else the job's, plus the rest: pre-copy, or one pass then post-copy), the downtime,
    the reason."""
    so_far = progress.total_time_ms / 1000 if progress.total_time_ms else elapsed_s
    return {"corrected_at_iteration": progress.iteration,
            "corrected_total_s": round(so_far + guess.total_s, 2),
            "corrected_downtime_ms": round(guess.downtime_ms, 1),
            "corrected_converges": guess.converges, "correction": guess.reason}


def _outpaced(progress: Progress) -> bool:
    """The guest dirties at least as fast as the stream sends, after the first full pass.
    QEMU's instantaneous rates only: with XBZRLE the stream's rate counts encoded bytes, and
    with another migration on the link it swings, so a correction's verdict from a whole
    pass overrides it (``decide``): two migrations sharing a link sent one guest to
    post-copy on such a sample (1085 ms of blackout) while its passes were converging."""
    return (progress.iteration >= 2 and progress.throughput > 0
            and progress.dirty_rate >= progress.throughput)


def _corrected_lately(state: PolicyState, progress: Progress) -> bool:
    """A correction that saw one of the last two passes found pre-copy converging: it, not
    the stall ladder, decides (the ladder is for what the corrections do not see: no model,
    passes shorter than the samples). At 90 % of the link a pass shrinks what is left by
    only 10 %, which the ladder takes for a stall while pre-copy converges."""
    return state.verdict == "converges" and \
        progress.iteration - state.corrected_iteration < STALL_ITERATIONS


def _track(state: PolicyState, progress: Progress) -> PolicyState:
    """Remember the lowest ``remaining`` at the start of a pass (the first sample of each
    dirty-sync iteration: within a pass ``remaining`` runs down to nothing, and a sample near
    a pass's end would make every later pass look stalled) and the iteration it was seen in."""
    if progress.iteration == state.tracked_iteration:
        return state
    state = replace(state, tracked_iteration=progress.iteration)
    if state.best_remaining is None or progress.remaining < state.best_remaining * 0.9:
        return replace(state, best_remaining=progress.remaining,
                       best_iteration=progress.iteration)
    return state


def _escalate(state: PolicyState, progress: Progress,
              options: PolicyOptions) -> tuple[PolicyState, list[Action]]:
    stalled = (f"{STALL_ITERATIONS} passes without less remaining "
               f"({(state.best_remaining or 0) / 2**20:.1f} MiB at best)")
    if state.downtime_ms < state.bound_ms:
        target = min(state.bound_ms, int(state.downtime_ms * DOWNTIME_STEP))
        return replace(state, downtime_ms=target), [Action(
            "set_parameters", f"{stalled}: downtime target {state.downtime_ms} -> {target} ms",
            {"downtime-limit": target})]
    if options.allow_postcopy:
        return _postcopy(state, f"{stalled} at the {state.bound_ms} ms downtime bound")
    if state.throttle_increment < THROTTLE_INCREMENT_MAX:
        step = min(THROTTLE_INCREMENT_MAX, state.throttle_increment * 2)
        return replace(state, throttle_increment=step), [Action(
            "set_parameters", f"{stalled} at the downtime bound, post-copy not allowed: "
                              f"throttle increment {state.throttle_increment} -> {step} %",
            {"cpu-throttle-increment": step})]
    return state, []


def _postcopy(state: PolicyState, reason: str) -> tuple[PolicyState, list[Action]]:
    return replace(state, postcopy=True), [Action("start_postcopy", f"{reason}: post-copy")]
