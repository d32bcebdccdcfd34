"""The cluster CPU baseline: properties over random clusters (hypothesis)."""

from __future__ import annotations

from checks_factory import ctx, facts, host
from hypothesis import given
from hypothesis import strategies as st

from segue.checks.baseline import (
    Baseline,
    baseline_cpu_string,
    compute_baseline,
    missing_for_host,
)
from segue.checks.cpu import check_cpu

FEATURE_NAMES = ["aes", "avx", "avx2", "lahf_lm", "sse4.2", "x2apic", "pdpe1gb", "rdrand",
                 "bmi1", "bmi2", "fma", "movbe"]
features = st.frozensets(st.sampled_from(FEATURE_NAMES), max_size=len(FEATURE_NAMES))
clusters = st.dictionaries(st.sampled_from([f"host{i}" for i in range(1, 7)]), features,
                           min_size=1, max_size=6)


@given(clusters)
def test_the_baseline_is_supported_by_every_host(cluster: dict[str, frozenset[str]]) -> None:
    baseline = compute_baseline(cluster)
    assert baseline.model == "qemu64"
    assert all(missing_for_host(baseline, host_features) == []
               for host_features in cluster.values())


@given(clusters)
def test_a_vm_on_the_baseline_passes_the_cpu_check_everywhere(
        cluster: dict[str, frozenset[str]]) -> None:
    baseline = compute_baseline(cluster)
    for name, host_features in cluster.items():
        dest = host(name, cpu=facts(name)["cpu"] | {"features": sorted(host_features)})
        results = check_cpu(ctx(dest=dest, vm_cpu_features=baseline.features))
        assert [r.code for r in results] == ["CPU_OK"]


@given(clusters, st.sampled_from(["host7", "host8"]), features)
def test_adding_a_host_never_grows_the_baseline(cluster: dict[str, frozenset[str]],
                                                name: str, extra: frozenset[str]) -> None:
    before = compute_baseline(cluster)
    after = compute_baseline({**cluster, name: extra})
    assert after.features <= before.features


def test_cpu_string_is_sorted_and_deterministic() -> None:
    baseline = compute_baseline({"a": {"sse4.2", "aes", "lahf_lm"}, "b": {"lahf-lm", "aes"}})
    assert baseline == Baseline("qemu64", frozenset({"aes", "lahf-lm"}))
    assert baseline_cpu_string(baseline) == "qemu64,+aes,+lahf-lm"
    assert baseline_cpu_string(compute_baseline({})) == "qemu64"


def test_missing_for_host_names_what_a_lower_host_lacks() -> None:
    baseline = compute_baseline({"a": {"aes", "avx"}})
    assert missing_for_host(baseline, ["aes"]) == ["avx"]
