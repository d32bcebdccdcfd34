"""CPU and compatibility checks."""

from __future__ import annotations

from checks_factory import FEATURES, codes, ctx, facts, host, vm

from segue.checks.cpu import check_compatibility, check_cpu, missing_features


def test_cpu_passes_when_the_destination_offers_every_feature() -> None:
    results = check_cpu(ctx())  # lahf-lm on the VM matches lahf_lm on the host
    assert codes(results) == ["CPU_OK"] and results[0].facts == {"features": 3}


def test_cpu_fails_listing_the_missing_features() -> None:
    small = facts("host2")["cpu"] | {"features": ["lm", "sse2"]}
    results = check_cpu(ctx(dest=host("host2", cpu=small),
                             vm_cpu_features=frozenset({"lm", "sse2", "aes", "avx"})))
    assert codes(results) == ["CPU_FEATURE_MISSING"] and results[0].severity == "error"
    assert results[0].facts["missing"] == ["aes", "avx"]
    assert "aes, avx" in results[0].message and "baseline" in results[0].hint


def test_cpu_fails_when_the_vm_cpu_is_unknown() -> None:
    results = check_cpu(ctx(vm_cpu_features=None))
    assert codes(results) == ["CPU_FEATURES_UNKNOWN"] and results[0].severity == "error"


def test_missing_features_treats_underscore_and_dash_as_one() -> None:
    assert missing_features(["lahf-lm", "x2apic"], FEATURES) == ["x2apic"]


def test_compatibility_passes_for_the_same_machine() -> None:
    assert codes(check_compatibility(ctx())) == ["COMPATIBILITY_OK"]


def test_compatibility_fails_for_a_missing_machine_type() -> None:
    old_qemu = {"binary": "q", "version": "6.2.0", "machines": ["pc-i440fx-6.2"],
                "machine_aliases": {"pc": "pc-i440fx-6.2"}}
    results = check_compatibility(ctx(dest=host("host2", qemu=old_qemu)))
    assert codes(results) == ["MACHINE_TYPE_MISSING"]
    assert results[0].facts["resolved"] == "pc-i440fx-7.2"


def test_compatibility_fails_when_an_alias_means_another_machine() -> None:
    qemu = {"binary": "q", "version": "8.0.0", "machines": ["pc-i440fx-7.2", "pc-i440fx-8.0"],
            "machine_aliases": {"pc": "pc-i440fx-8.0"}}
    results = check_compatibility(ctx(dest=host("host2", qemu=qemu)))
    assert codes(results) == ["MACHINE_TYPE_MISMATCH"]
    assert "pc-i440fx-7.2" in results[0].hint


def test_compatibility_fails_for_a_host_passthrough_cpu() -> None:
    results = check_compatibility(ctx(vm=vm(cpu_model="host,+aes")))
    assert codes(results) == ["CPU_HOST_PASSTHROUGH"] and results[0].severity == "error"
