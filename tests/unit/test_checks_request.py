"""Request sanity and destination host state checks."""

from __future__ import annotations

from checks_factory import codes, ctx, host

from segue.checks.request import check_host_state, check_request


def test_request_passes_for_a_running_vm() -> None:
    results = check_request(ctx())
    assert codes(results) == ["REQUEST_OK"] and results[0].severity == "ok"


def test_request_lists_every_problem() -> None:
    results = check_request(ctx(vm_state="stopped", dest=host("host1"), in_flight="m-1"))
    assert codes(results) == ["VM_NOT_RUNNING", "MIGRATION_SAME_HOST", "MIGRATION_IN_PROGRESS"]
    assert all(r.severity == "error" and r.hint for r in results)
    assert results[0].facts == {"state": "stopped"}
    assert "m-1" in results[2].hint


def test_host_state_passes_for_a_healthy_destination() -> None:
    assert codes(check_host_state(ctx())) == ["HOST_STATE_OK"]


def test_host_state_fails_for_each_reason() -> None:
    dest = host("host2", connected=False, maintenance=True, migration_enabled=False,
                reachable=False)
    results = check_host_state(ctx(dest=dest))
    assert codes(results) == ["HOST_DISCONNECTED", "AGENT_UNREACHABLE", "HOST_IN_MAINTENANCE",
                              "HOST_MIGRATION_DISABLED"]
    assert "segue host enable-migration host2" in results[3].hint
    assert "connection refused" in results[1].message
