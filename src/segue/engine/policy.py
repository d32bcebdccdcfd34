"""The migration policy (pure): what to ask of QEMU before and during a live migration.

Inputs are numbers only (VM memory, a link bandwidth estimate, the dirty rate QEMU sampled
before the start, the ``Progress`` samples, seconds elapsed, the user's options); outputs are
QEMU capabilities/parameters and ``Action``s, each with the reason it was taken, which the
job stores (``segue.engine.job``, through its ``JobStore``). Nothing here does I/O or reads
a clock; ``segue.engine.policies.SeguePolicy`` is the object a job drives these through.

Choices (QEMU 8.0 and newer; ``make setup`` installs 10.0; what changes on 7.2 is said):

- bandwidth is not capped unless the user capped it.
- the link estimate is measured (a TCP stream between the two migration addresses just
  before the start, capped by the user's bandwidth cap), not assumed (``link_estimate``).
- the downtime target is the user's ``downtime_limit_ms`` if given; else it is chosen from the
  measurement (``choose_downtime``): of ``DOWNTIME_CHOICES`` that the model predicts to
  converge, the one with the least predicted total time plus ``DOWNTIME_WEIGHT`` x downtime
  (a second of paused guest weighs as much as ten more seconds of copying while it runs).
  A large target on a slow link makes QEMU stop the guest while megabytes remain (300 ms at
  46 MiB/s is 14 MiB, so ~250 ms of downtime for an idle guest); a small one costs an idle
  guest nothing, and a busy guest gets the target that lets it converge.
- multifd (several streams) only where one stream cannot fill the link: a migration NIC of
  10 Gbit/s or more and CPUs to spare (``multifd_channels``); decided from the hosts' facts,
  since both QEMUs need it before ``migrate``.
- XBZRLE where a guest keeps re-dirtying pages over a link that is the bottleneck
  (``xbzrle_cache``): re-sent pages go as differences.
- ``postcopy-preempt`` with post-copy on QEMU >= 8.0 (``postcopy_preempt``): the pages a
  post-copy guest faults on do not queue behind the background stream.
- ``postcopy-ram`` must be set on both QEMUs before ``migrate``: it is set up front when the
  user allows post-copy (it costs nothing until ``migrate-start-postcopy``).
- ``auto-converge`` is also a capability fixed before ``migrate``. With post-copy allowed it
  stays off: post-copy ends any migration in one more pass without slowing the guest for the
  whole copy. With post-copy forbidden it is set up front; QEMU then throttles only when its
  own sync finds the guest dirtying faster than the stream, and the policy raises
  ``cpu-throttle-increment`` when progress stalls.
- escalation on a stall (two dirty-sync iterations without a lower ``remaining``): first the
  downtime target x1.5 up to ``max_downtime_ms``; then post-copy (if allowed) or a stronger
  throttle. A dirty rate above what the stream carries (after the first full pass) goes to
  post-copy at once, since no downtime target within reason can then be met.
- a migration predicted (from the sampled dirty rate) not to converge by pre-copy switches to
  post-copy right after the first full pass: further passes would be wasted, and after one
  the destination faults only for the pages the guest keeps dirtying. A guest that converges
  slowly stays in pre-copy: measured at 75 % of the link, one pass then post-copy took 4.7 s
  instead of 8.3 s but its guest stalled 0.8 s on page faults instead of 0.15 s; the blackout
  is what users notice.
- the user's bandwidth cap applies to post-copy too (``max-postcopy-bandwidth``).
- on a host where multi-pass pre-copy loses guest memory (TCG with QEMU < 8: measured in the
  lab with QEMU 7.2, a guest dirtying memory through slow pre-copy passes comes out with
  stale pages and a corrupted kernel, while QEMU 10.0 moves the same guest intact; a
  post-copy requested during the first pass kept it intact on 7.2 too), a guest that dirties
  memory (sampled rate above ``DIRTY_NOISE_BPS``) over a link whose first pass takes
  ``RISKY_FIRST_PASS_S`` or more goes to post-copy at once (when allowed): there pre-copy
  passes would be slow enough to corrupt it.
- past the deadline: abort, unless post-copy started (then the destination owns the newest
  state and nothing may be rolled back).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from pydantic import JsonValue

from segue.api.agent import ParameterValue
from segue.engine.progress import Progress

DOWNTIME_STEP = 1.5
STALL_ITERATIONS = 2
THROTTLE_INITIAL = 20
THROTTLE_INCREMENT = 10
THROTTLE_INCREMENT_MAX = 40
UNCAPPED_BANDWIDTH = 100 * 1024**3  # bytes/s: QEMU's cap set out of the way
DEFAULT_DOWNTIME_MS = 300  # before anything is measured (QEMU's and libvirt's default)
DEFAULT_LINK_BPS = 125e6  # 1 Gbit/s, when neither a cap nor a measurement is known
MAX_PREDICTED_ITERATIONS = 30
DOWNTIME_CHOICES = (20, 50, 100, 200, 300, 500, 1000, 2000)  # ms, tried smallest first
DOWNTIME_WEIGHT = 10.0  # seconds of total time one second of downtime is worth
DIRTY_NOISE_BPS = 2 * 1024**2  # below this an idle guest's own bookkeeping: not "dirtying"
RISKY_FIRST_PASS_S = 1.0
MULTIFD_MIN_BPS = 1.25e9  # 10 Gbit/s: below this one migration thread fills the link
MULTIFD_MAX_CHANNELS = 8
XBZRLE_MIN_SHARE = 0.1  # dirty rate / link from which re-sent pages are worth encoding
XBZRLE_MAX_LINK_BPS = 1.25e9  # 10 Gbit/s: faster links outrun XBZRLE's encoding
XBZRLE_CACHE_MIN = 64 * 1024**2


class PolicyOptions(Protocol):
    """The user's settings the policy reads (``segue.api.migration.MigrationOptionsBody``)."""

    @property
    def downtime_limit_ms(self) -> int | None: ...
    @property
    def max_bandwidth_mibs(self) -> int | None: ...
    @property
    def deadline_s(self) -> float: ...
    @property
    def allow_postcopy(self) -> bool: ...
    @property
    def max_downtime_ms(self) -> int: ...


@dataclass(frozen=True)
class Settings:
    """Capabilities and parameters for both QEMUs before ``migrate``, with the reasons."""

    capabilities: dict[str, bool]
    parameters: dict[str, ParameterValue]
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Action:
    """One thing to do now: ``set_parameters`` (``parameters``), ``start_postcopy``,
    ``abort`` (the job fails with ``code``); ``reason`` says why, in words a user reads."""

    kind: Literal["set_parameters", "start_postcopy", "abort"]
    reason: str
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    code: str = "MIGRATION_DEADLINE"


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between samples (the job keeps it, the policy replaces it)."""

    downtime_ms: int
    throttle_increment: int = THROTTLE_INCREMENT
    best_remaining: int | None = None
    best_iteration: int = 0
    postcopy: bool = False
    early_postcopy: str | None = None  # why post-copy starts early (None: it does not)
    early_postcopy_iteration: int = 1  # from which dirty-sync count (1: during the 1st pass)


@dataclass(frozen=True)
class Prediction:
    """What pre-copy is expected to take, from the sampled dirty rate."""

    converges: bool
    total_s: float
    iterations: int
    reason: str
    hybrid_s: float = 0.0  # one pre-copy pass, then post-copy of what was dirtied meanwhile

    def to_summary(self) -> dict[str, JsonValue]:
        return {"predicted_converges": self.converges,
                "predicted_total_s": round(self.total_s, 2),
                "predicted_hybrid_s": round(self.hybrid_s, 2),
                "predicted_iterations": self.iterations, "prediction": self.reason}


def initial_settings(options: PolicyOptions, downtime_ms: int | None = None,
                     multifd: int = 0, xbzrle_cache: int = 0,
                     preempt: bool | None = None) -> Settings:
    """Capabilities and parameters before ``migrate`` (see the module doc for the choices);
    ``downtime_ms``: the target chosen (``choose_downtime``), else the user's, else
    ``DEFAULT_DOWNTIME_MS``; ``multifd``: channels (``multifd_channels``), 0 for one stream;
    ``xbzrle_cache``: bytes of XBZRLE cache (``xbzrle_cache``), 0 for none; ``preempt``:
    ``postcopy-preempt`` on or off (``postcopy_preempt``), None to leave it unnamed (a QEMU
    that does not know it refuses even "off").
    Every capability the policy uses is named, on or off: QEMU keeps them across
    migrations (a VM that arrived one way would leave the same way)."""
    downtime = downtime_ms or options.downtime_limit_ms or DEFAULT_DOWNTIME_MS
    caps = {"events": True, "postcopy-ram": options.allow_postcopy,
            "auto-converge": not options.allow_postcopy, "multifd": multifd > 0,
            "xbzrle": xbzrle_cache > 0}
    bandwidth = (options.max_bandwidth_mibs * 1024**2 if options.max_bandwidth_mibs
                 else UNCAPPED_BANDWIDTH)
    params: dict[str, ParameterValue] = {"downtime-limit": downtime,
                              "max-bandwidth": bandwidth}
    if options.max_bandwidth_mibs and options.allow_postcopy:
        params["max-postcopy-bandwidth"] = bandwidth
    cap = options.max_bandwidth_mibs
    reasons = [f"bandwidth capped at {cap} MiB/s by the user" if cap else "bandwidth not capped",
               f"downtime target {downtime} ms "
               f"(escalates up to {options.max_downtime_ms} ms)"]
    if options.allow_postcopy:
        reasons.append("post-copy allowed: postcopy-ram set up front, auto-converge off")
    else:
        params.update({"cpu-throttle-initial": THROTTLE_INITIAL,
                       "cpu-throttle-increment": THROTTLE_INCREMENT})
        reasons.append("post-copy not allowed: auto-converge on (QEMU throttles the guest "
                       "only while it dirties faster than the stream)")
    if preempt is not None:
        caps["postcopy-preempt"] = preempt
        if preempt:
            reasons.append("post-copy page requests on their own channel (postcopy-preempt)")
    if multifd:
        params["multifd-channels"] = multifd
        reasons.append(f"multifd with {multifd} channels")
    if xbzrle_cache:
        params["xbzrle-cache-size"] = xbzrle_cache
        reasons.append(f"XBZRLE with a {xbzrle_cache // 2**20} MiB cache")
    return Settings(caps, params, tuple(reasons))


def postcopy_preempt(options: PolicyOptions, qemu_version: str | None) -> bool | None:
    """``postcopy-preempt`` for both QEMUs (``qemu_version``: the older one). With it, the
    pages a post-copy guest faults on travel on their own channel instead of queueing behind
    the background stream: on QEMU 8.0 or newer, whenever post-copy is allowed. QEMU 7.1 and
    7.2 know it (off: it matured in 8.0), older ones do not (None: not named). It is always
    named where known: QEMU keeps capabilities across migrations, and a VM that arrived with
    it on must not leave with it on towards an older QEMU."""
    version = _version(qemu_version)
    if version < (7, 1):
        return None
    return options.allow_postcopy and version >= (8, 0)


def xbzrle_cache(memory: int, link_bps: float, dirty_bps: float,
                 multifd: int = 0) -> tuple[int, str]:
    """Bytes of XBZRLE cache for the source (0: off) and why. XBZRLE re-sends a page the
    guest dirtied again as its difference from the copy sent before: it pays where a guest
    keeps re-dirtying pages a little (counters, timestamps) and the link is the bottleneck.
    On when the sampled dirty rate is at least ``XBZRLE_MIN_SHARE`` of the link, the link is
    slower than ``XBZRLE_MAX_LINK_BPS`` (faster, its encoding would hold the stream back),
    and no multifd (QEMU does not combine them). The cache holds what the guest dirties
    during one full pass, as a power of two between ``XBZRLE_CACHE_MIN`` and half the RAM.
    Only the source needs it: the destination decodes XBZRLE pages whatever its
    capabilities."""
    share = dirty_bps / link_bps if link_bps else 0.0
    if multifd:
        return 0, "no XBZRLE: QEMU does not combine it with multifd"
    if dirty_bps < DIRTY_NOISE_BPS or share < XBZRLE_MIN_SHARE:
        return 0, (f"no XBZRLE: the guest dirties {dirty_bps / 2**20:.1f} MiB/s, "
                   f"{share:.0%} of the link")
    if link_bps > XBZRLE_MAX_LINK_BPS:
        return 0, (f"no XBZRLE: a {link_bps / 2**20:.0f} MiB/s link outruns its encoding")
    want = dirty_bps * memory / link_bps
    cache = XBZRLE_CACHE_MIN
    while cache < want and cache * 2 <= memory // 2:
        cache *= 2
    return cache, (f"XBZRLE ({cache // 2**20} MiB cache): the guest re-dirties "
                   f"{dirty_bps / 2**20:.1f} MiB/s, {share:.0%} of the link")


def multifd_channels(options: PolicyOptions, nic_bps: float | None, cpus: int,
                     qemu_version: str | None) -> tuple[int, str]:
    """Channels for multifd (0: one stream) and why. Multifd helps where one migration
    thread cannot fill the link: links of ``MULTIFD_MIN_BPS`` (10 Gbit/s) and more, with
    CPUs to spare on both hosts (``cpus``: the fewer of the two; one channel per two CPUs, at
    most ``MULTIFD_MAX_CHANNELS``). QEMU before 10.1 refuses multifd with post-copy: there
    post-copy (convergence guaranteed) wins unless the user forbade it."""
    if options.allow_postcopy and _version(qemu_version) < (10, 1):
        return 0, (f"one stream: QEMU {qemu_version} cannot combine multifd with post-copy, "
                   "and post-copy is allowed")
    if not nic_bps or nic_bps < MULTIFD_MIN_BPS:
        speed = f"{nic_bps * 8 / 1e9:.0f} Gbit/s" if nic_bps else "of unknown speed"
        return 0, f"one stream: it fills a migration NIC {speed}"
    channels = min(MULTIFD_MAX_CHANNELS, cpus // 2)
    if channels < 2:
        return 0, f"one stream: {cpus} CPUs leave none for more migration threads"
    return channels, (f"multifd with {channels} channels: a {nic_bps * 8 / 1e9:.0f} Gbit/s NIC "
                      f"and {cpus} CPUs")


def initial_state(options: PolicyOptions, prediction: Prediction | None = None,
                  downtime_ms: int | None = None, risk: str | None = None) -> PolicyState:
    """The state before the first sample. With post-copy allowed: for ``risk``
    (``multipass_risk``'s reason) post-copy starts at once, during the first pass; when the
    prediction says pre-copy does not converge, it starts right after the first full pass
    (the second dirty sync): the destination then already holds every page the guest did
    not re-dirty, and faults only for the hot ones (at once, a busy guest faulted on most of
    its memory over the link: 1.5 s of blackout measured, against ~0.3 s after a pass).
    ``downtime_ms``: the chosen target (else the user's, else the default)."""
    early, from_iteration = None, 1
    if options.allow_postcopy:
        if risk is not None:
            early = risk
        elif prediction is not None and not prediction.converges:
            early, from_iteration = f"predicted: {prediction.reason}", 2
    downtime = downtime_ms or options.downtime_limit_ms or DEFAULT_DOWNTIME_MS
    return PolicyState(downtime_ms=downtime, early_postcopy=early,
                       early_postcopy_iteration=from_iteration)


def choose_downtime(options: PolicyOptions, memory: int, link_bps: float,
                    dirty_bps: float) -> tuple[int, str]:
    """The downtime target (ms) and why: the user's if given; else, of ``DOWNTIME_CHOICES``
    up to ``max_downtime_ms`` whose predicted pre-copy converges, the one with the least
    ``total_s + DOWNTIME_WEIGHT * downtime`` (the smaller on a tie). When none converges:
    the smallest with post-copy allowed (post-copy ends the copy; a large target would let
    QEMU pause the guest for it instead), else the largest (escalation and throttling take
    it from there)."""
    if options.downtime_limit_ms:
        return options.downtime_limit_ms, f"downtime target {options.downtime_limit_ms} ms " \
                                          "set by the user"
    choices = [c for c in DOWNTIME_CHOICES if c <= options.max_downtime_ms] or \
        [options.max_downtime_ms]
    guesses = {c: predict(memory, link_bps, dirty_bps, c) for c in choices}
    converging = {c: g for c, g in guesses.items() if g.converges}
    if not converging:
        if options.allow_postcopy:  # post-copy ends it after the first pass: keep it short
            low = choices[0]
            return low, (f"downtime target {low} ms: pre-copy cannot converge at "
                         f"{dirty_bps / 2**20:.1f} MiB/s dirty over {link_bps / 2**20:.1f} "
                         "MiB/s; post-copy will end it")
        top = choices[-1]
        return top, (f"downtime target {top} ms: no target up to {top} ms lets pre-copy "
                     f"converge at {dirty_bps / 2**20:.1f} MiB/s dirty over "
                     f"{link_bps / 2**20:.1f} MiB/s")
    pick = min(converging, key=lambda c: (converging[c].total_s + DOWNTIME_WEIGHT * c / 1000,
                                          c))
    return pick, (f"downtime target {pick} ms: the best trade of downtime for time "
                  f"({converging[pick].iterations} passes, ~{converging[pick].total_s:.1f} s) "
                  f"at {dirty_bps / 2**20:.1f} MiB/s dirty over {link_bps / 2**20:.1f} MiB/s")


def multipass_risk(accel: str | None, qemu_version: str | None, memory: int, link_bps: float,
                   dirty_bps: float) -> str | None:
    """Why pre-copy passes are unsafe for this guest on this host, or None.

    Measured here (README, "Known limits"): QEMU before 8.0 running guests under TCG loses
    pages a guest dirties during slow multi-pass pre-copy. A guest dirtying more than
    ``DIRTY_NOISE_BPS`` over a link whose first pass alone takes ``RISKY_FIRST_PASS_S`` or
    more is at risk; fast passes (a few within a second) were found intact."""
    if not qemu_unsafe_for_multipass(accel, qemu_version):
        return None
    first_pass_s = memory / link_bps
    if dirty_bps < DIRTY_NOISE_BPS or first_pass_s < RISKY_FIRST_PASS_S:
        return None
    return (f"TCG with QEMU {qemu_version} loses pages dirtied during slow pre-copy passes; "
            f"this guest dirties {dirty_bps / 2**20:.1f} MiB/s and a first pass takes "
            f"~{first_pass_s:.1f} s")


def qemu_unsafe_for_multipass(accel: str | None, qemu_version: str | None) -> bool:
    """TCG with a QEMU older than 8.0 (see ``multipass_risk``)."""
    return accel == "tcg" and _version(qemu_version) < (8, 0)


def oldest_version(versions: list[str]) -> str | None:
    """The oldest of some QEMU version strings (an unreadable one counts as oldest)."""
    return min(versions, key=_version) if versions else None


def _version(text: str | None) -> tuple[int, int]:
    """(major, minor) of a QEMU version string; (0, 0) when unknown or unreadable."""
    parts = str(text or "").split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return 0, 0


def link_estimate(options: PolicyOptions, measured_bps: float | None = None) -> float:
    """Bytes/s the stream is expected to carry: the user's cap, else a measurement, else
    ``DEFAULT_LINK_BPS``."""
    if options.max_bandwidth_mibs:
        cap = options.max_bandwidth_mibs * 1024**2
        return min(cap, measured_bps) if measured_bps else float(cap)
    return measured_bps or DEFAULT_LINK_BPS


def predict(memory: int, link_bps: float, dirty_bps: float, downtime_ms: int) -> Prediction:
    """Model pre-copy: pass 0 sends ``memory``, each later pass what the guest dirtied during
    the previous one; it converges once a pass fits in the downtime target. ``total_s``
    is the pre-copy time if it converges, else the time of a first pass plus a post-copy
    pass of what was dirtied meanwhile (bounded by ``memory``)."""
    budget = link_bps * downtime_ms / 1000
    first = memory / link_bps
    hybrid = first + min(dirty_bps * first, float(memory)) / link_bps
    pending, total = float(memory), 0.0
    for iteration in range(1, MAX_PREDICTED_ITERATIONS + 1):
        if pending <= budget:
            return Prediction(True, total + pending / link_bps, iteration,
                              f"dirty {dirty_bps / 2**20:.1f} MiB/s < link "
                              f"{link_bps / 2**20:.1f} MiB/s: pre-copy converges "
                              f"in {iteration} passes", hybrid)
        pass_s = pending / link_bps
        total += pass_s
        pending = min(dirty_bps * pass_s, float(memory))
    return Prediction(False, hybrid, MAX_PREDICTED_ITERATIONS,
                      f"dirty {dirty_bps / 2**20:.1f} MiB/s vs link {link_bps / 2**20:.1f} "
                      f"MiB/s: pre-copy alone does not converge within "
                      f"{downtime_ms} ms downtime", hybrid)


def decide(state: PolicyState, progress: Progress, elapsed_s: float,
           options: PolicyOptions) -> tuple[PolicyState, list[Action]]:
    """The next state and the actions for one ``query-migrate`` sample (the escalation
    ladder of the module doc). Never more than one escalation per sample."""
    if state.postcopy or progress.status not in ("active", "setup"):
        return state, []
    if elapsed_s > options.deadline_s:
        return state, [Action("abort", f"not converged within the {options.deadline_s:.0f} s "
                                       "deadline")]
    if progress.status != "active":
        return state, []
    if state.early_postcopy:
        if progress.iteration < state.early_postcopy_iteration:
            return state, []  # the first pass first
        return _postcopy(state, state.early_postcopy)
    if _outpaced(progress) and options.allow_postcopy:
        return _postcopy(state, f"dirty rate {progress.dirty_rate / 2**20:.1f} MiB/s >= "
                                f"throughput {progress.throughput / 2**20:.1f} MiB/s after "
                                f"pass {progress.iteration - 1}: pre-copy cannot converge")
    state = _track(state, progress)
    if progress.iteration - state.best_iteration < STALL_ITERATIONS:
        return state, []
    state = replace(state, best_iteration=progress.iteration)
    return _escalate(state, progress, options)


def _outpaced(progress: Progress) -> bool:
    """The guest dirties at least as fast as the stream sends, after the first full pass."""
    return (progress.iteration >= 2 and progress.throughput > 0
            and progress.dirty_rate >= progress.throughput)


def _track(state: PolicyState, progress: Progress) -> PolicyState:
    """Remember the lowest ``remaining`` and the iteration it was seen in."""
    if state.best_remaining is None or progress.remaining < state.best_remaining * 0.9:
        return replace(state, best_remaining=progress.remaining,
                       best_iteration=progress.iteration)
    return state


def _escalate(state: PolicyState, progress: Progress,
              options: PolicyOptions) -> tuple[PolicyState, list[Action]]:
    stalled = (f"{STALL_ITERATIONS} passes without less remaining "
               f"({(state.best_remaining or 0) / 2**20:.1f} MiB at best)")
    if state.downtime_ms < options.max_downtime_ms:
        target = min(options.max_downtime_ms, int(state.downtime_ms * DOWNTIME_STEP))
        return replace(state, downtime_ms=target), [Action(
            "set_parameters", f"{stalled}: downtime target {state.downtime_ms} -> {target} ms",
            {"downtime-limit": target})]
    if options.allow_postcopy:
        return _postcopy(state, f"{stalled} at the maximum downtime "
                                f"{options.max_downtime_ms} ms")
    if state.throttle_increment < THROTTLE_INCREMENT_MAX:
        step = min(THROTTLE_INCREMENT_MAX, state.throttle_increment * 2)
        return replace(state, throttle_increment=step), [Action(
            "set_parameters", f"{stalled} at the maximum downtime, post-copy not allowed: "
                              f"throttle increment {state.throttle_increment} -> {step} %",
            {"cpu-throttle-increment": step})]
    return state, []


def _postcopy(state: PolicyState, reason: str) -> tuple[PolicyState, list[Action]]:
    return replace(state, postcopy=True), [Action("start_postcopy", f"{reason}: post-copy")]
