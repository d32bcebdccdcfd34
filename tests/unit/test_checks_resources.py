"""Resources check: memory (with overhead and reservations) and logical CPUs."""

from __future__ import annotations

from checks_factory import codes, ctx, host, vm

from segue.checks.resources import QEMU_OVERHEAD_MIB, check_resources


def memory(total: int, available: int) -> dict[str, int]:
    return {"total_mib": total, "available_mib": available}


def test_resources_pass_with_room() -> None:
    results = check_resources(ctx())
    assert codes(results) == ["RESOURCES_OK"]
    assert results[0].facts["needed_mib"] == 256 + QEMU_OVERHEAD_MIB


def test_memory_counts_overhead_and_reservations() -> None:
    dest = host("host2", memory=memory(16384, 256 + QEMU_OVERHEAD_MIB + 100))
    assert codes(check_resources(ctx(dest=dest, reserved_mib=100)))[0] != "INSUFFICIENT_MEMORY"
    results = check_resources(ctx(dest=dest, reserved_mib=101))
    assert codes(results) == ["INSUFFICIENT_MEMORY"] and results[0].severity == "error"
    assert results[0].facts["needed_mib"] == 256 + QEMU_OVERHEAD_MIB + 101


def test_high_memory_use_after_the_move_is_a_warning() -> None:
    results = check_resources(ctx(dest=host("host2", memory=memory(4096, 600))))
    assert codes(results) == ["MEMORY_HIGH_AFTER_MOVE"] and results[0].severity == "warning"
    assert results[0].facts["used_after_mib"] == 4096 - 600 + 256 + QEMU_OVERHEAD_MIB


def test_too_few_cpus_fail() -> None:
    cpu = {"host_model": "x", "accel": "tcg", "logical_cpus": 2, "features": []}
    results = check_resources(ctx(vm=vm(vcpus=4), dest=host("host2", cpu=cpu)))
    assert codes(results) == ["INSUFFICIENT_CPUS"] and results[0].facts == {
        "logical_cpus": 2, "vcpus": 4}
