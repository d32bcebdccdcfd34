"""The cluster's CPU baseline (like VMware EVC): a named QEMU CPU model plus the features that
every host of the cluster offers.

A VM started with ``baseline_cpu_string(baseline)`` (and ``enforce``, which the agents add)
exposes only features every host has, so it can move to any host of the cluster.
Feature names are compared with ``_`` and ``-`` as one spelling.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from segue.checks.cpu import canonical_feature

BASE_MODEL = "qemu64"


@dataclass(frozen=True)
class Baseline:
    """The base model and the features added to it (canonical spellings)."""

    model: str = BASE_MODEL
    features: frozenset[str] = field(default_factory=frozenset)


def _canonical(features: Iterable[str]) -> frozenset[str]:
    return frozenset(canonical_feature(f) for f in features)


def compute_baseline(host_features: Mapping[str, Iterable[str]]) -> Baseline:
    """The intersection of every host's features on ``BASE_MODEL``; empty without hosts."""
    sets = [_canonical(features) for features in host_features.values()]
    if not sets:
        return Baseline()
    return Baseline(BASE_MODEL, frozenset.intersection(*sets))


def baseline_cpu_string(baseline: Baseline) -> str:
    """The ``cpu_model`` a VM runs with: ``qemu64,+aes,+avx,...`` (sorted, deterministic)."""
    return ",".join([baseline.model, *(f"+{f}" for f in sorted(baseline.features))])


def missing_for_host(baseline: Baseline, host_features: Iterable[str]) -> list[str]:
    """The baseline features a host does not offer, sorted (empty: it supports the baseline)."""
    return sorted(baseline.features - _canonical(host_features))
