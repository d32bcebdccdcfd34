"""The migration policy (pure): what to ask of QEMU before and during a live migration.

Inputs are numbers only (VM memory, a link bandwidth estimate, the dirty rate QEMU sampled
before the start, the ``Progress`` samples, seconds elapsed, the user's options); outputs are
QEMU capabilities/parameters and ``Action``s, each with the reason it was taken, which the
job stores (``segue.engine.job``, through its ``JobStore``). Nothing here does I/O or reads
a clock; ``segue.engine.policies.SeguePolicy`` is the object a job drives these through.
What to do on each sample while QEMU copies is ``segue.engine.course.decide``; the model of
pre-copy it predicts with, and corrects from the passes, is ``segue.engine.prediction``.

Choices (QEMU 8.0 and newer; ``make setup`` installs 10.0; what changes on 7.2 is said):

- bandwidth is not capped unless the user capped it.
- the link estimate is measured (a TCP stream between the two migration addresses just
  before the start, capped by the user's bandwidth cap), not assumed (``link_estimate``).
- the downtime target never goes above a bound users would not notice by itself: the
  migration's ``max_downtime_ms``, else the cluster's (``max_auto_downtime_ms`` in the
  controller's configuration, ``DEFAULT_MAX_AUTO_DOWNTIME_MS`` by default; ``downtime_bound``).
  A target above it only when the user asks: ``downtime_limit_ms`` (kept as given, never
  escalated) or a higher ``max_downtime_ms``. Measured: a 2 s target chosen because the
  sampled rate came close to the link paused a guest for 1.9 s where every peer stayed
  under 0.6 s; post-copy or throttling cost such a guest far less than that pause.
- the target is the user's ``downtime_limit_ms`` if given; else it is chosen from the
  measurement (``choose_downtime``): of ``DOWNTIME_CHOICES`` up to the bound that the model
  (``segue.engine.prediction``) predicts to converge even at the top of the sampled rate's
  range, the one with the least predicted total time plus ``DOWNTIME_WEIGHT`` x downtime
  (a second of paused guest weighs as much as ten more seconds of copying while it runs).
  A large target on a slow link makes QEMU stop the guest while megabytes remain (300 ms at
  46 MiB/s is 14 MiB, so ~250 ms of downtime for an idle guest); a small one costs an idle
  guest nothing, and a busy guest gets the target that lets it converge. When none
  converges there: the smallest with post-copy allowed (post-copy after the first pass,
  unless that pass shows pre-copy converges), else the bound (auto-converge throttles).
- the prediction is corrected at every pass boundary (``segue.engine.prediction``: the
  pass's own dirty set, time and throughput replace the sampled numbers, and bound the dirty
  set by the working set the first pass measured): a migration seen to converge keeps going
  (a planned post-copy is called off) with the best target for what was seen; one seen not
  to converge under the bound goes to post-copy at once (or, without post-copy, to the
  bound with auto-converge); one still uncertain gets one more pass to measure. Each change
  of course is an ``Action`` with its reason, carrying the corrected prediction for the
  job's summary.
- multifd (several streams) only where one stream cannot fill the link: a migration NIC of
  10 Gbit/s or more and CPUs to spare (``multifd_channels``); decided from the hosts' facts,
  since both QEMUs need it before ``migrate``.
- XBZRLE where a guest keeps re-dirtying pages over a link that is the bottleneck
  (``xbzrle_cache``): re-sent pages go as differences.
- ``postcopy-blocktime`` with post-copy: the destination counts how long the guest's vCPUs
  waited for pages it faulted on (read into the job's summary, ``postcopy_blocktime_ms``):
  what a post-copy costs the guest, beside the switchover.
- ``postcopy-preempt`` with post-copy on QEMU >= 8.0 (``postcopy_preempt``): the pages a
  post-copy guest faults on do not queue behind the background stream.
- ``postcopy-ram`` must be set on both QEMUs before ``migrate``: it is set up front when the
  user allows post-copy (it costs nothing until ``migrate-start-postcopy``).
- ``auto-converge`` is a capability fixed before ``migrate``: always on. With post-copy
  allowed, QEMU throttles a guest that re-dirties more than ``BUSY_THROTTLE_TRIGGER`` % of
  what the stream sends, over two dirty syncs a second or more apart (so never during the
  first pass, and never a guest that converges within a few passes anyway), from
  ``BUSY_THROTTLE_INITIAL`` % up: the guest slows for the last seconds of the copy (as
  vSphere's stun during page send does) instead of pausing for a larger target or faulting
  on its hot pages in post-copy. Measured at 75 % of the link (README): without it the
  policy chose between ~3 s more of copying at a 20 ms target and ~250 ms more of pause at
  300 ms, by a pass's noise. A guest that outruns the stream goes to post-copy before the
  throttle starts. With post-copy forbidden QEMU's defaults (50 %, 20 % first, +10 %), and
  the policy raises ``cpu-throttle-increment`` when progress stalls. How much the guest was
  throttled is in the job's summary (``throttle_max_pct``, ``throttled_s``).
- escalation on a stall (two dirty-sync iterations without a lower ``remaining``): first the
  downtime target x1.5 up to the bound; then post-copy (if allowed) or a stronger
  throttle. A dirty rate above what the stream carries (after the first full pass) goes to
  post-copy at once, since no downtime target within reason can then be met.
- a migration predicted (from the sampled dirty rate) not to converge by pre-copy switches to
  post-copy right after the first full pass, once the correction confirms it: further
  passes would be wasted, and after one the destination faults only for the pages the guest
  keeps dirtying. A guest that converges slowly stays in pre-copy: measured at 75 % of the
  link, one pass then post-copy took 4.7 s instead of 8.3 s but its guest stalled 0.8 s on
  page faults instead of 0.15 s; the blackout is what users notice.
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

from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import JsonValue

from segue.api.agent import ParameterValue
from segue.engine.prediction import Estimate, Passes, Prediction, Verdict, best_target

THROTTLE_INITIAL = 20
THROTTLE_INCREMENT = 10
THROTTLE_INCREMENT_MAX = 40
# with post-copy allowed: the throttle for a guest that pre-copy converges on only slowly
BUSY_THROTTLE_TRIGGER = 30  # % of what the stream sent that the guest re-dirtied, twice
BUSY_THROTTLE_INITIAL = 40
BUSY_THROTTLE_INCREMENT = 20
UNCAPPED_BANDWIDTH = 100 * 1024**3  # bytes/s: QEMU's cap set out of the way
DEFAULT_DOWNTIME_MS = 300  # before anything is measured (QEMU's and libvirt's default)
DEFAULT_MAX_AUTO_DOWNTIME_MS = 300  # the cluster's bound unless its configuration says
DEFAULT_LINK_BPS = 125e6  # 1 Gbit/s, when neither a cap nor a measurement is known
DOWNTIME_CHOICES = (20, 50, 100, 200, 300, 500, 1000, 2000)  # ms, tried smallest first
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
    def max_downtime_ms(self) -> int | None: ...


@dataclass(frozen=True)
class Settings:
    """Capabilities and parameters for both QEMUs before ``migrate``, with the reasons."""

    capabilities: dict[str, bool]
    parameters: dict[str, ParameterValue]
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Action:
    """One thing to do now: ``set_parameters`` (``parameters``), ``start_postcopy``,
    ``abort`` (the job fails with ``code``), ``note`` (nothing to apply: a change of the
    policy's own course); ``reason`` says why, in words a user reads; ``summary``: keys the
    job merges into the migration's summary (the corrected prediction)."""

    kind: Literal["set_parameters", "start_postcopy", "abort", "note"]
    reason: str
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    code: str = "MIGRATION_DEADLINE"
    summary: dict[str, JsonValue] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between samples (the job keeps it, the policy replaces it).
    ``bound_ms``: the highest target it may choose or escalate to (``downtime_bound``);
    ``model``: the prediction's inputs, corrected from ``passes`` (None: nothing was
    measured, nothing is corrected); ``verdict``: the last correction's."""

    downtime_ms: int
    bound_ms: int = DEFAULT_MAX_AUTO_DOWNTIME_MS
    throttle_increment: int = THROTTLE_INCREMENT
    best_remaining: int | None = None
    best_iteration: int = 0
    tracked_iteration: int = 0  # the iteration ``best_remaining`` last looked at
    postcopy: bool = False
    early_postcopy: str | None = None  # why post-copy starts early (None: it does not)
    early_postcopy_iteration: int = 1  # from which dirty-sync count (1: during the 1st pass)
    early_postcopy_predicted: bool = False  # planned from the prediction: a correction may
    model: Estimate | None = None  # call it off or put it off
    passes: Passes = field(default_factory=Passes)
    verdict: Verdict | None = None
    corrected_iteration: int = 0  # the pass the last correction started


def downtime_bound(options: PolicyOptions,
                   cluster_ms: int = DEFAULT_MAX_AUTO_DOWNTIME_MS) -> tuple[int, str]:
    """The highest downtime target the policy may choose or escalate to, and why: the
    migration's own ``max_downtime_ms`` if set, else the cluster's ``cluster_ms``. A user's
    ``downtime_limit_ms`` above it is kept as given, never escalated."""
    if options.max_downtime_ms is not None:
        return options.max_downtime_ms, (f"downtime bound {options.max_downtime_ms} ms, set "
                                         "for this migration")
    return cluster_ms, f"downtime bound {cluster_ms} ms, the cluster's"


def target_choices(options: PolicyOptions, bound_ms: int) -> list[int]:
    """The downtime targets the policy may move to, smallest first: ``DOWNTIME_CHOICES`` up
    to the bound (the bound itself if it is below them all); with the user's own target, that
    target first and then those above it up to the bound (as the stall ladder would raise it)."""
    user = options.downtime_limit_ms
    if user:
        return [user, *(c for c in DOWNTIME_CHOICES if user < c <= bound_ms)]
    return [c for c in DOWNTIME_CHOICES if c <= bound_ms] or [bound_ms]


def initial_settings(options: PolicyOptions, downtime_ms: int | None = None,
                     multifd: int = 0, xbzrle_cache: int = 0,
                     preempt: bool | None = None, bound_ms: int | None = None) -> Settings:
    """Capabilities and parameters before ``migrate`` (see the module doc for the choices);
    ``downtime_ms``: the target chosen (``choose_downtime``), else the user's, else
    ``DEFAULT_DOWNTIME_MS`` (at most the bound); ``bound_ms``: the bound (``downtime_bound``;
    by default the migration's, else ``DEFAULT_MAX_AUTO_DOWNTIME_MS``); ``multifd``:
    channels (``multifd_channels``), 0 for one stream;
    ``xbzrle_cache``: bytes of XBZRLE cache (``xbzrle_cache``), 0 for none; ``preempt``:
    ``postcopy-preempt`` on or off (``postcopy_preempt``), None to leave it unnamed (a QEMU
    that does not know it refuses even "off").
    Every capability the policy uses is named, on or off: QEMU keeps them across
    migrations (a VM that arrived one way would leave the same way)."""
    bound = bound_ms if bound_ms is not None else downtime_bound(options)[0]
    downtime = downtime_ms or options.downtime_limit_ms or min(DEFAULT_DOWNTIME_MS, bound)
    caps = {"events": True, "postcopy-ram": options.allow_postcopy, "auto-converge": True,
            "multifd": multifd > 0, "xbzrle": xbzrle_cache > 0,
            "postcopy-blocktime": options.allow_postcopy}
    bandwidth = (options.max_bandwidth_mibs * 1024**2 if options.max_bandwidth_mibs
                 else UNCAPPED_BANDWIDTH)
    params: dict[str, ParameterValue] = {"downtime-limit": downtime,
                              "max-bandwidth": bandwidth}
    if options.max_bandwidth_mibs and options.allow_postcopy:
        params["max-postcopy-bandwidth"] = bandwidth
    cap = options.max_bandwidth_mibs
    reasons = [f"bandwidth capped at {cap} MiB/s by the user" if cap else "bandwidth not capped",
               f"downtime target {downtime} ms (escalates up to the {bound} ms bound)"
               if downtime < bound else f"downtime target {downtime} ms (not escalated: "
                                        f"the bound is {bound} ms)"]
    if options.allow_postcopy:
        params.update({"throttle-trigger-threshold": BUSY_THROTTLE_TRIGGER,
                       "cpu-throttle-initial": BUSY_THROTTLE_INITIAL,
                       "cpu-throttle-increment": BUSY_THROTTLE_INCREMENT})
        reasons.append("post-copy allowed: postcopy-ram set up front")
        reasons.append(f"auto-converge: QEMU throttles a guest that re-dirties more than "
                       f"{BUSY_THROTTLE_TRIGGER} % of what the stream sends over two dirty "
                       f"syncs a second or more apart ({BUSY_THROTTLE_INITIAL} % first, then "
                       f"+{BUSY_THROTTLE_INCREMENT} % at each such pair), so that a guest "
                       "pre-copy converges on only slowly converges sooner at a small target")
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
                  downtime_ms: int | None = None, risk: str | None = None, *,
                  bound_ms: int | None = None, model: Estimate | None = None) -> PolicyState:
    """The state before the first sample. With post-copy allowed: for ``risk``
    (``multipass_risk``'s reason) post-copy starts at once, during the first pass; when
    ``prediction`` says pre-copy does not converge, it is planned right after the first full
    pass (the second dirty sync): the destination then already holds every page the guest did
    not re-dirty, and faults only for the hot ones (at once, a busy guest faulted on most of
    its memory over the link: 1.5 s of blackout measured, against ~0.3 s after a pass); the
    correction at that sync confirms, puts off or calls off that plan (``model`` given).
    ``downtime_ms``: the chosen target (else the user's, else the default, at most the
    bound); ``bound_ms``: as ``initial_settings``."""
    bound = bound_ms if bound_ms is not None else downtime_bound(options)[0]
    early, from_iteration, predicted = None, 1, False
    if options.allow_postcopy:
        if risk is not None:
            early = risk
        elif prediction is not None and not prediction.converges:
            early, from_iteration, predicted = f"predicted: {prediction.reason}", 2, True
    downtime = downtime_ms or options.downtime_limit_ms or min(DEFAULT_DOWNTIME_MS, bound)
    return PolicyState(downtime_ms=downtime, bound_ms=bound, early_postcopy=early,
                       early_postcopy_iteration=from_iteration,
                       early_postcopy_predicted=predicted, model=model)


def choose_downtime(options: PolicyOptions, bound_ms: int, model: Estimate
                    ) -> tuple[int, str]:
    """The downtime target (ms) and why: the user's if given (even above ``bound_ms``);
    else, of the targets up to the bound (``target_choices``), the best that converges even
    at the top of the sampled rate's range (``prediction.best_target``). When none does: the
    smallest with post-copy allowed (post-copy after the first pass unless that pass shows
    otherwise; a large target would let QEMU pause the guest for it instead), else the bound
    (auto-converge throttles the guest; escalation takes it from there)."""
    if options.downtime_limit_ms:
        user = options.downtime_limit_ms
        above = f", above the {bound_ms} ms bound as asked" if user > bound_ms else ""
        return user, f"downtime target {user} ms set by the user{above}"
    choices = target_choices(options, bound_ms)
    seen = f"{model.basis}"
    best = best_target(model, choices)
    if best is not None:
        pick, guess = best
        return pick, (f"downtime target {pick} ms: the best trade of downtime for time "
                       f"({guess.iterations} passes, ~{guess.total_s:.1f} s even at "
                       f"{model.dirty_high / 2**20:.1f} MiB/s dirty; {seen})")
    none = (f"no target up to the {bound_ms} ms bound lets pre-copy converge at up to "
            f"{model.dirty_high / 2**20:.1f} MiB/s dirty ({seen})")
    if options.allow_postcopy:
        return choices[0], (f"downtime target {choices[0]} ms: {none}; post-copy after the "
                            "first pass unless that pass shows pre-copy converges")
    return choices[-1], (f"downtime target {choices[-1]} ms: {none}; post-copy not allowed: "
                         "auto-converge throttles the guest")


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
