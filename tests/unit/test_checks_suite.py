"""run_checks: every check reports, failures never hide each other; facts parsing."""

from __future__ import annotations

from checks_factory import codes, ctx, host

from segue.checks import CHECKS, errors_of, host_facts_from_dict, run_checks, worst


def test_a_healthy_migration_passes_every_check_in_table_order() -> None:
    results = run_checks(ctx())
    assert [r.check for r in results] == list(CHECKS)
    assert all(r.severity == "ok" for r in results) and worst(results) == "ok"
    assert all(r.to_dict()["code"] == f"{r.check.upper()}_OK" for r in results)


def test_all_failures_are_reported_at_once() -> None:
    dest = host("host2", maintenance=True, port_groups=[],
                memory={"total_mib": 1024, "available_mib": 100},
                cpu={"logical_cpus": 1, "features": ["lm"]})
    results = run_checks(ctx(dest=dest))
    assert set(codes(errors_of(results))) == {
        "HOST_IN_MAINTENANCE", "CPU_FEATURE_MISSING", "PORTGROUP_MISSING",
        "INSUFFICIENT_MEMORY"}
    assert {r.check for r in results} == set(CHECKS)  # the passing ones still report
    assert worst(results) == "error"


def test_facts_parsing_tolerates_missing_parts() -> None:
    facts = host_facts_from_dict("h9", {"cpu": {"features": ["aes"]}})
    assert facts.name == "h9" and facts.cpu.features == ["aes"] and facts.cpu.logical_cpus == 0
    assert facts.memory.available_mib == 0 and facts.migration.speed_mbps is None
    assert facts.port_groups == [] and facts.qemu.machines == []
