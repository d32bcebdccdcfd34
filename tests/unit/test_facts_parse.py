"""Pure parsers of host facts."""

from __future__ import annotations

import pytest

from segue.agent.facts_parse import (
    NON_FEATURE_PROPS,
    choose_accel,
    features_from_expansion,
    machines_from_query,
    offered_features,
    parse_cpu_model_name,
    parse_link_speed,
    parse_meminfo,
)

MEMINFO = """\
MemTotal:       24731708 kB
MemFree:        21982492 kB
MemAvailable:   24032908 kB
Buffers:          123456 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""


def test_parse_meminfo_in_mib() -> None:
    assert parse_meminfo(MEMINFO) == (24731708 // 1024, 24032908 // 1024)
    assert parse_meminfo("MemAvailable: 2048 kB\nMemTotal: 4096 kB\n") == (4, 2)


@pytest.mark.parametrize(("text", "missing"), [
    ("MemTotal: 4096 kB\nMemFree: 1024 kB\n", "MemAvailable"),
    ("MemAvailable: 4096 kB\n", "MemTotal"),
    ("", "MemTotal"),
    ("MemTotal: lots\nMemAvailable: 1024 kB\n", "MemTotal"),
])
def test_parse_meminfo_missing_key(text: str, missing: str) -> None:
    with pytest.raises(ValueError, match=missing):
        parse_meminfo(text)


def test_parse_cpu_model_name() -> None:
    cpuinfo = ("processor\t: 0\nvendor_id\t: GenuineIntel\n"
               "model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n\n"
               "processor\t: 1\nmodel name\t: Other CPU\n")
    assert parse_cpu_model_name(cpuinfo) == "Intel(R) Xeon(R) CPU @ 2.20GHz"
    assert parse_cpu_model_name("processor\t: 0\nmodel\t\t: 85\n") == "unknown"
    assert parse_cpu_model_name("") == "unknown"


@pytest.mark.parametrize(("requested", "usable", "modules", "accel", "reason_has"), [
    ("tcg", True, {"kvm_intel"}, "tcg", "tcg requested"),
    ("kvm", True, {"kvm_intel"}, "kvm", "kvm requested and usable"),
    ("kvm", True, {"kvm_amd"}, "kvm", "usable"),
    ("kvm", False, {"kvm_intel"}, "tcg", "not usable"),
    ("kvm", True, {"kvm_pvm"}, "tcg", "not usable"),
    ("kvm", True, set(), "tcg", "not usable"),
    ("auto", True, {"kvm_intel"}, "kvm", "hardware KVM"),
    ("auto", True, {"kvm_amd", "kvm_pvm"}, "kvm", "hardware KVM"),
    ("auto", True, {"kvm_pvm"}, "tcg", "kvm_pvm"),
    ("auto", False, {"kvm_pvm"}, "tcg", "kvm_pvm"),
    ("auto", False, {"kvm_intel"}, "tcg", "no usable /dev/kvm"),
    ("auto", False, set(), "tcg", "no usable /dev/kvm"),
    ("auto", True, set(), "tcg", "no usable /dev/kvm"),
])
def test_choose_accel(requested: str, usable: bool, modules: set[str], accel: str,
                      reason_has: str) -> None:
    chosen, reason = choose_accel(requested, usable, modules)
    assert chosen == accel
    assert reason_has in reason


def test_features_from_expansion_keeps_only_enabled_features() -> None:
    expansion = {"model": {"name": "max", "props": {
        "sse4.2": True, "avx2": True, "vmx": False, "pmu": True, "migratable": True,
        "enforce": True, "x-force-features": True, "x-intel-pt-auto-level": True,
        "x-something-new": True, "family": 6, "model-id": "QEMU TCG CPU", "lm": True,
        "kvm": True, "hv-passthrough": True,
    }}}
    assert features_from_expansion(expansion) == ["avx2", "lm", "sse4.2"]


def test_features_from_expansion_of_nothing() -> None:
    assert features_from_expansion({}) == []
    assert features_from_expansion({"model": {"name": "max"}}) == []


def test_non_feature_props_are_not_features() -> None:
    props = dict.fromkeys(NON_FEATURE_PROPS, True)
    assert features_from_expansion({"model": {"props": props}}) == []


def test_machines_from_query() -> None:
    answer = [
        {"name": "pc-q35-7.2", "alias": "q35", "cpu-max": 288, "deprecated": False},
        {"name": "pc-i440fx-7.2", "alias": "pc", "is-default": True, "cpu-max": 255},
        {"name": "pc-i440fx-7.1", "cpu-max": 255},
        {"name": "none", "cpu-max": 1},
        {"name": "microvm", "alias": "", "cpu-max": 288},
    ]
    names, aliases = machines_from_query(answer)
    assert names == ["microvm", "none", "pc-i440fx-7.1", "pc-i440fx-7.2", "pc-q35-7.2"]
    assert aliases == {"q35": "pc-q35-7.2", "pc": "pc-i440fx-7.2"}


def test_machines_from_query_empty() -> None:
    assert machines_from_query([]) == ([], {})


@pytest.mark.parametrize(("text", "speed"), [
    ("10000\n", 10000), ("1000", 1000), ("-1\n", None), ("", None), ("\n", None),
    ("0", None), ("unknown", None),
])
def test_parse_link_speed(text: str, speed: int | None) -> None:
    assert parse_link_speed(text) == speed


def test_offered_features_drop_the_excluded_under_either_spelling() -> None:
    features = ["aes", "avx2", "fpu", "lahf-lm", "lahf_lm"]
    assert offered_features(features, ["avx2", "lahf_lm"]) == ["aes", "fpu"]
    assert offered_features(features, []) == features
