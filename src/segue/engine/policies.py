"""The policy a migration job is given: the ``MigrationPolicy`` protocol, and Segue's own.

A job (``segue.engine.job``) asks its policy, in this order: ``choose_streams`` (from both
hosts' facts, before the destination listens), ``plan`` (from the link and dirty-rate
measurement when ``measures``, else from nothing), ``settings`` (the capabilities and
parameters both QEMUs get before ``migrate``), then ``decide`` on every progress sample, whose
``Action``s the job applies and notes. ``request_postcopy`` passes on a user's request to
switch to post-copy now. A policy object serves one job: it keeps that job's state.

``SeguePolicy`` applies ``segue.engine.policy`` before the start and ``segue.engine.course``
on every sample (pure functions, documented there), with the model of
``segue.engine.prediction``. Other
policies (the benchmark's peers, ``benchmarks/peers.py``) implement the same protocol, so the
same job drives every one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

from pydantic import JsonValue

from segue.api.migration import MigrationOptionsBody
from segue.domain.host import HostFacts
from segue.engine import course, policy, prediction
from segue.engine.policy import Action, Settings
from segue.engine.progress import Progress


@dataclass(frozen=True)
class Plan:
    """What a policy concluded before the start: ``summary`` (stored as the job's summary,
    kept in the final one) and ``notes`` (stored in the job's record, in order)."""

    summary: dict[str, JsonValue] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


class MigrationPolicy(Protocol):
    """What a job asks of its policy (see the module doc for the order)."""

    @property
    def name(self) -> str: ...

    @property
    def measures(self) -> bool:
        """Whether the job measures the link and samples the dirty rate for ``plan``."""
        ...

    @property
    def downtime_ms(self) -> int:
        """The downtime target in force now (reported in the job's summary)."""
        ...

    def choose_streams(self, source: HostFacts, dest: HostFacts) -> str:
        """Settle what both QEMUs need before the destination listens; the reason noted."""
        ...

    def plan(self, memory: int, link_bps: float | None, dirty_bps: float | None,
             source: HostFacts) -> Plan:
        """Settle the settings from the measurement (None: not measured)."""
        ...

    def settings(self) -> Settings:
        """Capabilities and parameters for both QEMUs, with the reasons."""
        ...

    def decide(self, progress: Progress, elapsed_s: float) -> list[Action]:
        """The actions for one sample (``elapsed_s``: since the job started)."""
        ...

    def request_postcopy(self, reason: str) -> None:
        """Start post-copy at the next sample (the user asked)."""
        ...


class SeguePolicy:
    """Segue's policy for one job with the user's ``options``; ``cluster_max_downtime_ms``:
    the cluster's downtime bound, for a migration that does not set its own
    (``policy.downtime_bound``)."""

    name = "segue"
    measures = True

    def __init__(self, options: MigrationOptionsBody,
                 cluster_max_downtime_ms: int = policy.DEFAULT_MAX_AUTO_DOWNTIME_MS) -> None:
        self.options = options
        self.multifd = 0
        self.preempt: bool | None = None
        self.bound_ms, self.bound_reason = policy.downtime_bound(options,
                                                                 cluster_max_downtime_ms)
        self._settings = policy.initial_settings(options, bound_ms=self.bound_ms)
        self.state = policy.initial_state(options, bound_ms=self.bound_ms)

    @property
    def downtime_ms(self) -> int:
        return self.state.downtime_ms

    def settings(self) -> Settings:
        return self._settings

    def choose_streams(self, source: HostFacts, dest: HostFacts) -> str:
        """Multifd or one stream, and the post-copy preempt channel, from both hosts' facts
        (the destination needs them before it listens, so before anything is measured)."""
        speeds = [f.migration.speed_mbps or 0 for f in (source, dest)]
        nic_bps = min(speeds) * 1e6 / 8 if all(speeds) else None
        cpus = min(max(1, f.cpu.logical_cpus) for f in (source, dest))
        oldest = policy.oldest_version([f.qemu.version for f in (source, dest)])
        self.multifd, why = policy.multifd_channels(self.options, nic_bps, cpus, oldest)
        self.preempt = policy.postcopy_preempt(self.options, oldest)
        self._settings = policy.initial_settings(self.options, multifd=self.multifd,
                                                 preempt=self.preempt, bound_ms=self.bound_ms)
        return why

    def plan(self, memory: int, link_bps: float | None, dirty_bps: float | None,
             source: HostFacts) -> Plan:
        """The downtime target within the bound, the prediction (at the sampled rate; the
        decisions at the edges of its range) and the early post-copy decision."""
        options = self.options
        link = policy.link_estimate(options, link_bps)
        model = prediction.sampled(memory, link, dirty_bps or 0.0)
        downtime, why = policy.choose_downtime(options, self.bound_ms, model)
        cache, cache_why = policy.xbzrle_cache(memory, link, dirty_bps or 0.0, self.multifd)
        self._settings = policy.initial_settings(options, downtime, self.multifd, cache,
                                                 self.preempt, self.bound_ms)
        summary: dict[str, JsonValue] = {
            "link_measured_mibs": round(link_bps / 2**20, 1) if link_bps else None,
            "link_estimate_mibs": round(link / 2**20, 1), "downtime_target_ms": downtime,
            "downtime_reason": why, "downtime_bound_ms": self.bound_ms,
            "downtime_bound_reason": self.bound_reason, "xbzrle_cache_mib": cache // 2**20,
            "xbzrle_reason": cache_why}
        if dirty_bps is None:
            self.state = policy.initial_state(options, downtime_ms=downtime,
                                              bound_ms=self.bound_ms)
            return Plan(summary, (self.bound_reason, why))
        guess = model.predict(downtime)
        worst = model.predict(downtime, model.dirty_high)
        risk = policy.multipass_risk(source.cpu.accel, source.qemu.version, memory, link,
                                     dirty_bps)
        self.state = policy.initial_state(options, worst, downtime, risk,
                                          bound_ms=self.bound_ms, model=model)
        planned = self.state.early_postcopy_predicted
        summary.update({"sampled_dirty_rate_mibs": round(dirty_bps / 2**20, 2),
                        "sampled_dirty_range_mibs": model.range_mibs(),
                        **guess.to_summary(postcopy_after_first_pass=planned),
                        "postcopy_at_once": self.state.early_postcopy})
        course_ = "one pass, then post-copy unless that pass shows otherwise" if planned \
            else "pre-copy"
        notes = [self.bound_reason, f"{why}; prediction: {guess.reason}; planned: {course_}, "
                                    f"about {guess.hybrid_s if planned else guess.total_s:.1f} s"]
        if risk and not options.allow_postcopy:
            notes.append(f"warning: {risk}; post-copy is not allowed, so pre-copy runs anyway")
        return Plan(summary, tuple(notes))

    def decide(self, progress: Progress, elapsed_s: float) -> list[Action]:
        self.state, actions = course.decide(self.state, progress, elapsed_s, self.options)
        return actions

    def request_postcopy(self, reason: str) -> None:
        if not self.state.postcopy:
            self.state = replace(self.state, early_postcopy=reason,
                                 early_postcopy_iteration=0, early_postcopy_predicted=False)
