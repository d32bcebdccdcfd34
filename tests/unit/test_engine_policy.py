"""The migration policy: tables of inputs and the decisions expected of them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pytest

from segue.engine.course import decide
from segue.engine.policy import (
    DEFAULT_LINK_BPS,
    UNCAPPED_BANDWIDTH,
    PolicyState,
    choose_downtime,
    initial_settings,
    initial_state,
    link_estimate,
    multifd_channels,
    multipass_risk,
    oldest_version,
    postcopy_preempt,
    qemu_unsafe_for_multipass,
    xbzrle_cache,
)
from segue.engine.prediction import predict, sampled
from segue.engine.progress import Progress

MiB = 2**20


@dataclass(frozen=True)
class Opts:
    downtime_limit_ms: int | None = None
    max_bandwidth_mibs: int | None = None
    deadline_s: float = 600.0
    allow_postcopy: bool = True
    max_downtime_ms: int | None = None  # None: the cluster's bound (300 ms by default)


def sample(status: str = "active", remaining: int = 100 * MiB, iteration: int = 1,
           dirty: float = 0.0, throughput: float = 100 * MiB) -> Progress:
    return Progress(status=status, transferred=0, remaining=remaining, total=256 * MiB,
                    dirty_rate=dirty, throughput=throughput, iteration=iteration,
                    expected_downtime_ms=None, downtime_ms=None, total_time_ms=None,
                    setup_time_ms=None, eta_s=None, converging=None)


BUSY = {"throttle-trigger-threshold": 30, "cpu-throttle-initial": 40,
        "cpu-throttle-increment": 20}


@pytest.mark.parametrize(("opts", "caps", "params"), [
    # post-copy allowed: auto-converge for a guest pre-copy converges on only slowly
    (Opts(), {"events": True, "postcopy-ram": True, "auto-converge": True, "multifd": False,
      "xbzrle": False, "postcopy-blocktime": True},
     {"downtime-limit": 300, "max-bandwidth": UNCAPPED_BANDWIDTH, **BUSY}),
    (Opts(max_bandwidth_mibs=16, downtime_limit_ms=100),
     {"events": True, "postcopy-ram": True, "auto-converge": True, "multifd": False,
      "xbzrle": False, "postcopy-blocktime": True},
     {"downtime-limit": 100, "max-bandwidth": 16 * MiB, "max-postcopy-bandwidth": 16 * MiB,
      **BUSY}),
    (Opts(allow_postcopy=False),
     {"events": True, "postcopy-ram": False, "auto-converge": True, "multifd": False,
      "xbzrle": False, "postcopy-blocktime": False},
     {"downtime-limit": 300, "max-bandwidth": UNCAPPED_BANDWIDTH,
      "cpu-throttle-initial": 20, "cpu-throttle-increment": 10}),
])
def test_initial_settings(opts: Opts, caps: dict[str, bool], params: dict[str, Any]) -> None:
    settings = initial_settings(opts)
    assert settings.capabilities == caps
    assert settings.parameters == params
    assert all(settings.reasons)


@pytest.mark.parametrize(("opts", "measured", "expected"), [
    (Opts(), None, DEFAULT_LINK_BPS),
    (Opts(), 50e6, 50e6),
    (Opts(max_bandwidth_mibs=16), None, 16 * MiB),
    (Opts(max_bandwidth_mibs=16), 1e6, 1e6),
])
def test_link_estimate(opts: Opts, measured: float | None, expected: float) -> None:
    assert link_estimate(opts, measured) == expected


@pytest.mark.parametrize(("memory", "link", "dirty", "downtime", "converges", "total", "iters"), [
    (256 * MiB, 128 * MiB, 0.0, 300, True, 2.0, 2),  # one pass, nothing dirtied
    (256 * MiB, 128 * MiB, 32 * MiB, 300, True, 2.0 + 0.5 + 0.125, 3),
    (256 * MiB, 16 * MiB, 40e6, 300, False, 16.0 + 16.0, 30),  # dirty > link
    (256 * MiB, 16 * MiB, 15.9 * MiB, 300, False, None, 30),  # too close to the link
])
def test_predict(memory: int, link: float, dirty: float, downtime: int, converges: bool,
                 total: float | None, iters: int) -> None:
    p = predict(memory, link, dirty, downtime)
    assert p.converges is converges and p.iterations == iters and p.reason
    if total is not None:
        assert p.total_s == pytest.approx(total)
    assert set(p.to_summary()) >= {"predicted_converges", "predicted_total_s"}


def _run(samples: list[Progress], opts: Opts = Opts(), elapsed: float = 1.0,
         state: PolicyState | None = None) -> tuple[PolicyState, list[tuple[str, Any]]]:
    state = state or initial_state(opts)
    out: list[tuple[str, Any]] = []
    for s in samples:
        state, actions = decide(state, s, elapsed, opts)
        out += [(a.kind, a.parameters) for a in actions]
        assert all(a.reason for a in actions)
    return state, out


STALLED = [sample(iteration=i, remaining=50 * MiB) for i in (2, 3, 4)]

DECISIONS = [
    ("converging: nothing", [sample(iteration=i, remaining=(100 - 20 * i) * MiB)
                             for i in range(1, 5)], Opts(), []),
    ("setup: nothing", [sample(status="setup")], Opts(), []),
    ("first pass, dirty > throughput: wait for the pass",
     [sample(iteration=1, dirty=200 * MiB)], Opts(), []),
    ("dirty >= throughput after pass 1: post-copy",
     [sample(iteration=2, dirty=120 * MiB)], Opts(), [("start_postcopy", {})]),
    ("dirty >= throughput, post-copy forbidden: no switch",
     [sample(iteration=2, dirty=120 * MiB)], Opts(allow_postcopy=False), []),
    # the user's higher bound (was the default of 2000 ms before the bound)
    ("stall: downtime x1.5", STALLED, Opts(max_downtime_ms=2000),
     [("set_parameters", {"downtime-limit": 450})]),
    ("stall: downtime capped at the user maximum", STALLED, Opts(max_downtime_ms=400),
     [("set_parameters", {"downtime-limit": 400})]),
    # the default target is the default bound: nothing above it, post-copy at once
    ("stall at the cluster's bound: post-copy, no longer pause", STALLED, Opts(),
     [("start_postcopy", {})]),
]


@pytest.mark.parametrize(("case", "samples", "opts", "expected"), DECISIONS,
                         ids=[d[0] for d in DECISIONS])
def test_decide(case: str, samples: list[Progress], opts: Opts,
                expected: list[tuple[str, Any]]) -> None:
    assert _run(samples, opts)[1] == expected


@pytest.mark.parametrize(("opts", "last"), [
    (Opts(), ("start_postcopy", {})),
    (Opts(allow_postcopy=False), ("set_parameters", {"cpu-throttle-increment": 20})),
])
def test_stall_at_max_downtime_escalates(opts: Opts, last: tuple[str, Any]) -> None:
    state = initial_state(opts)
    state = replace(state, downtime_ms=state.bound_ms)
    assert _run(STALLED, opts, state=state)[1] == [last]


def test_escalation_ladder_over_a_long_stall() -> None:
    samples = [sample(iteration=i, remaining=50 * MiB) for i in range(2, 40)]
    state, actions = _run(samples, Opts(max_downtime_ms=700))
    assert actions == [("set_parameters", {"downtime-limit": 450}),
                       ("set_parameters", {"downtime-limit": 675}),
                       ("set_parameters", {"downtime-limit": 700}),
                       ("start_postcopy", {})]
    assert state.postcopy


def test_throttle_is_raised_up_to_its_maximum() -> None:
    opts = Opts(allow_postcopy=False, max_downtime_ms=300)
    samples = [sample(iteration=i, remaining=50 * MiB) for i in range(2, 40)]
    assert _run(samples, opts)[1] == [("set_parameters", {"cpu-throttle-increment": 20}),
                                      ("set_parameters", {"cpu-throttle-increment": 40})]


@pytest.mark.parametrize(("state", "status", "expected"), [
    (None, "active", [("abort", {})]),
    (None, "setup", [("abort", {})]),
    (PolicyState(downtime_ms=300, postcopy=True), "postcopy-active", []),  # never abort
    (None, "completed", []),
])
def test_deadline(state: PolicyState | None, status: str, expected: list[Any]) -> None:
    assert _run([sample(status=status)], Opts(deadline_s=10), elapsed=11, state=state)[1] \
        == expected


def test_after_postcopy_nothing_more() -> None:
    state = PolicyState(downtime_ms=300, postcopy=True)
    assert _run(STALLED, Opts(), state=state)[1] == []


@pytest.mark.parametrize(("dirty", "allow", "status", "iteration", "expected"), [
    (40e6, True, "active", 1, []),  # predicted not to converge: the first pass first
    (40e6, True, "active", 2, [("start_postcopy", {})]),  # ... then post-copy at once
    (40e6, True, "setup", 2, []),  # QEMU refuses the switch before it copies
    (40e6, False, "active", 2, []),  # not allowed: pre-copy and throttling
    (1e6, True, "active", 2, []),  # predicted to converge: pre-copy
])
def test_postcopy_after_the_first_pass_when_predicted_not_to_converge(
        dirty: float, allow: bool, status: str, iteration: int, expected: list[Any]) -> None:
    opts = Opts(max_bandwidth_mibs=16, allow_postcopy=allow)
    state = initial_state(opts, predict(256 * MiB, 16 * MiB, dirty, 300))
    got = _run([sample(status=status, iteration=iteration, remaining=200 * MiB)], opts,
               state=state)[1]
    assert got == expected


@pytest.mark.parametrize(("opts", "memory", "link", "dirty", "expected"), [
    (Opts(downtime_limit_ms=300), 256 * MiB, 46 * MiB, 0.0, 300),  # the user's, as given
    (Opts(), 256 * MiB, 46 * MiB, 0.0, 20),  # idle: the smallest target costs nothing
    (Opts(), 256 * MiB, 46 * MiB, 0.2 * MiB, 20),  # an idle kernel's bookkeeping
    (Opts(), 256 * MiB, 46 * MiB, 11 * MiB, 20),  # busy: 2 more passes, ~the same time
    # 65 %: up to 40 MiB/s within the sample's range, where 20 ms would take over 30
    # passes of the whole memory: 200 ms (the first pass's working set corrects it)
    (Opts(), 256 * MiB, 46 * MiB, 30 * MiB, 200),
    # 75 %: the sample's range reaches the link: nothing converges for sure, post-copy after
    # the first pass unless that pass shows otherwise
    (Opts(), 256 * MiB, 46 * MiB, 35 * MiB, 20),
    # 87 %: was 100 ms (predicted from the sampled rate alone); same as 75 % now
    (Opts(), 256 * MiB, 46 * MiB, 40 * MiB, 20),
    (Opts(), 256 * MiB, 46 * MiB, 69 * MiB, 20),  # 150 %: nothing converges, post-copy will
    # ... without post-copy: the bound (was the user's maximum, 2000 ms by default)
    (Opts(allow_postcopy=False), 256 * MiB, 46 * MiB, 69 * MiB, 300),
    (Opts(allow_postcopy=False, max_downtime_ms=400), 256 * MiB, 46 * MiB, 69 * MiB, 300),
    (Opts(), 256 * MiB, 800 * MiB, 8 * MiB, 20),  # a fast link: small targets converge
])
def test_choose_downtime(opts: Opts, memory: int, link: float, dirty: float,
                         expected: int) -> None:
    bound = opts.max_downtime_ms or 300
    chosen, reason = choose_downtime(opts, bound, sampled(memory, link, dirty))
    assert chosen == expected, reason
    assert f"{expected} ms" in reason


def test_chosen_downtime_goes_to_qemu_and_the_state() -> None:
    settings = initial_settings(Opts(), 50)
    assert settings.parameters["downtime-limit"] == 50
    assert initial_state(Opts(), downtime_ms=50).downtime_ms == 50
    assert initial_state(Opts()).downtime_ms == 300  # nothing measured: the default


@pytest.mark.parametrize(("accel", "version", "unsafe"), [
    ("tcg", "7.2.19", True), ("tcg", "8.0.0", False), ("kvm", "7.2.19", False),
    ("tcg", None, True), ("tcg", "weird", True), (None, "7.2.0", False),
])
def test_qemu_unsafe_for_multipass(accel: str | None, version: str | None,
                                   unsafe: bool) -> None:
    assert qemu_unsafe_for_multipass(accel, version) is unsafe


@pytest.mark.parametrize(("accel", "link", "dirty", "risky"), [
    ("tcg", 46 * MiB, 11 * MiB, True),  # slow first pass, busy guest
    ("tcg", 46 * MiB, 0.5 * MiB, False),  # idle guest
    ("tcg", 800 * MiB, 8 * MiB, False),  # passes within a second: found intact
    ("kvm", 46 * MiB, 11 * MiB, False),  # hardware dirty logging
])
def test_multipass_risk(accel: str, link: float, dirty: float, risky: bool) -> None:
    reason = multipass_risk(accel, "7.2.19", 256 * MiB, link, dirty)
    assert (reason is not None) is risky
    if risky:
        assert reason and "7.2.19" in reason


@pytest.mark.parametrize(("allow", "status", "expected"), [
    (True, "active", [("start_postcopy", {})]),  # risky passes: post-copy during pass 1
    (True, "setup", []),
    (False, "active", []),  # not allowed: pre-copy anyway (the job warns)
])
def test_postcopy_at_once_for_a_multipass_risk(allow: bool, status: str,
                                               expected: list[Any]) -> None:
    opts = Opts(allow_postcopy=allow)
    converging = predict(256 * MiB, 46 * MiB, 11 * MiB, 50)
    assert converging.converges
    state = initial_state(opts, converging, 50, risk="TCG with QEMU 7.2 ...")
    assert _run([sample(status=status)], opts, state=state)[1] == expected


GBIT = 1e9 / 8  # bytes/s


@pytest.mark.parametrize(("opts", "nic", "cpus", "version", "channels", "why"), [
    (Opts(), 25 * GBIT, 16, "10.0.2", 0, "cannot combine multifd with post-copy"),
    (Opts(), 25 * GBIT, 16, "10.1.0", 8, "multifd with 8 channels"),  # 10.1 combines them
    (Opts(allow_postcopy=False), 25 * GBIT, 16, "10.0.2", 8, "25 Gbit/s"),
    (Opts(allow_postcopy=False), 25 * GBIT, 6, "10.0.2", 3, "6 CPUs"),
    (Opts(allow_postcopy=False), 10 * GBIT, 4, "10.0.2", 2, "multifd with 2 channels"),
    (Opts(allow_postcopy=False), 1 * GBIT, 16, "10.0.2", 0, "fills a migration NIC 1 Gbit/s"),
    (Opts(allow_postcopy=False), None, 16, "10.0.2", 0, "unknown speed"),
    (Opts(allow_postcopy=False), 25 * GBIT, 2, "10.0.2", 0, "2 CPUs"),  # this lab's hosts
])
def test_multifd_channels(opts: Opts, nic: float | None, cpus: int, version: str,
                          channels: int, why: str) -> None:
    got, reason = multifd_channels(opts, nic, cpus, version)
    assert got == channels and why in reason, reason


def test_multifd_goes_to_qemu_with_its_channels() -> None:
    settings = initial_settings(Opts(allow_postcopy=False), 50, multifd=4)
    assert settings.capabilities["multifd"] is True
    assert settings.parameters["multifd-channels"] == 4
    assert "multifd-channels" not in initial_settings(Opts(), 50).parameters


@pytest.mark.parametrize(("versions", "oldest"), [
    (["10.0.2", "7.2.22"], "7.2.22"),  # not the string order
    (["10.1.0", "10.0.2"], "10.0.2"),
    (["", "10.0.2"], ""),  # unknown counts as oldest
    ([], None),
])
def test_oldest_version(versions: list[str], oldest: str | None) -> None:
    assert oldest_version(versions) == oldest


@pytest.mark.parametrize(("link", "dirty", "multifd", "cache", "why"), [
    (46 * MiB, 0.0, 0, 0, "dirties 0.0 MiB/s"),  # idle: nothing is re-sent
    (46 * MiB, 3 * MiB, 0, 0, "7% of the link"),  # too little to pay for the encoding
    (46 * MiB, 11 * MiB, 0, 64 * MiB, "24% of the link"),  # 11 x 5.6 s = 61 MiB: the floor
    (46 * MiB, 34 * MiB, 0, 128 * MiB, "74% of the link"),  # 189 MiB a pass, at most RAM/2
    (1200 * MiB, 300 * MiB, 0, 0, "outruns its encoding"),  # > 10 Gbit/s
    (46 * MiB, 34 * MiB, 4, 0, "multifd"),
])
def test_xbzrle_cache(link: float, dirty: float, multifd: int, cache: int, why: str) -> None:
    got, reason = xbzrle_cache(256 * MiB, link, dirty, multifd)
    assert got == cache and why in reason, reason
    assert got & (got - 1) == 0  # a power of two (QEMU wants one), or 0


def test_xbzrle_goes_to_qemu_with_its_cache() -> None:
    settings = initial_settings(Opts(), 50, xbzrle_cache=64 * MiB)
    assert settings.capabilities["xbzrle"] is True
    assert settings.parameters["xbzrle-cache-size"] == 64 * MiB


@pytest.mark.parametrize(("allow", "version", "caps"), [
    (True, "10.0.2", {"postcopy-ram": True, "postcopy-preempt": True}),
    (False, "10.0.2", {"postcopy-ram": False, "postcopy-preempt": False}),  # named: off
    (True, "7.2.22", {"postcopy-ram": True, "postcopy-preempt": False}),  # known, not ripe
    (True, "6.2.0", {"postcopy-ram": True}),  # unnamed: too old to be asked
])
def test_postcopy_preempt(allow: bool, version: str, caps: dict[str, bool]) -> None:
    opts = Opts(allow_postcopy=allow)
    settings = initial_settings(opts, 50, preempt=postcopy_preempt(opts, version))
    got = {k: v for k, v in settings.capabilities.items()
           if k.startswith("postcopy") and k != "postcopy-blocktime"}
    assert got == caps
    # the destination counts the guest's wait for faulted pages whenever post-copy may run
    assert settings.capabilities["postcopy-blocktime"] is allow


@pytest.mark.parametrize(("dirty", "expected"), [
    (11 * MiB, []),  # 25 % of the link: pre-copy
    (34 * MiB, []),  # 75 %: slow, but it converges: pre-copy (the shorter blackout)
    (69 * MiB, [("start_postcopy", {})]),  # 150 %: one pass, then post-copy
])
def test_postcopy_after_the_first_pass_only_without_convergence(
        dirty: float, expected: list[Any]) -> None:
    guess = predict(256 * MiB, 46 * MiB, dirty, 20)
    assert guess.hybrid_s > 0
    state = initial_state(Opts(), guess, 20)
    assert _run([sample(iteration=1, remaining=200 * MiB)], state=state)[1] == []
    assert _run([sample(iteration=2, remaining=40 * MiB)], state=state)[1] == expected
