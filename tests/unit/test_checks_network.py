"""Migration network and port group checks."""

from __future__ import annotations

import pytest
from checks_factory import codes, ctx, facts, host, vm

from segue.checks import PathProbe
from segue.checks.network import check_migration_network, check_port_groups
from segue.domain.vm import NicSpec


def nic(name: str, **changes: object) -> dict[str, object]:
    return dict(facts(name)["migration"]) | changes


def test_network_passes_with_a_tested_path() -> None:
    results = check_migration_network(ctx())
    assert codes(results) == ["NETWORK_OK"] and results[0].facts["rtt_ms"] == 0.25


@pytest.mark.parametrize(("changes", "code"), [
    ({"present": False}, "MIGRATION_NIC_MISSING"),
    ({"interface": None}, "MIGRATION_NIC_MISSING"),
    ({"up": False}, "MIGRATION_NIC_DOWN"),
    ({"addresses": []}, "MIGRATION_NIC_NO_ADDRESS"),
    ({"speed_mbps": 100}, "MIGRATION_LINK_SLOW"),
])
def test_network_fails_for_a_bad_interface(changes: dict[str, object], code: str) -> None:
    dest = host("host2", migration=nic("host2", **changes))
    results = check_migration_network(ctx(dest=dest, probe=None))
    assert codes(results) == [code] and results[0].severity == "error"
    assert results[0].facts["host"] == "host2"


@pytest.mark.parametrize(("speed", "code"), [(1000, "MIGRATION_LINK_UNDER_10G"),
                                             (None, "MIGRATION_LINK_SPEED_UNKNOWN")])
def test_slowish_or_unknown_links_are_warnings(speed: int | None, code: str) -> None:
    results = check_migration_network(ctx(source=host("host1", migration=nic(
        "host1", speed_mbps=speed))))
    assert codes(results) == [code] and results[0].severity == "warning"


def test_network_fails_when_the_path_is_unreachable() -> None:
    probe = PathProbe(ok=False, dest_address="10.0.1.2", port=40000,
                      source_address="10.0.1.1", error="timed out")
    results = check_migration_network(ctx(probe=probe))
    assert codes(results) == ["MIGRATION_PATH_UNREACHABLE"]
    assert "timed out" in results[0].message and results[0].facts["port"] == 40000


def test_network_fails_when_the_path_was_not_tested() -> None:
    assert codes(check_migration_network(ctx(probe=None))) == ["MIGRATION_PATH_UNTESTED"]


def test_port_groups_pass_when_present_and_up() -> None:
    results = check_port_groups(ctx())
    assert codes(results) == ["PORT_GROUPS_OK"] and results[0].facts["port_groups"] == ["vm-net"]


def test_port_groups_fail_missing_or_down() -> None:
    spec = vm(nics=[NicSpec("vm-net", "52:54:00:00:00:01"), NicSpec("db-net", "52:54:00:00:00:02"),
                    NicSpec("mgmt", "52:54:00:00:00:03")])
    groups = [{"name": "vm-net", "bridge": "br-vm", "exists": True, "up": False},
              {"name": "mgmt", "bridge": "br-m", "exists": False, "up": False}]
    results = check_port_groups(ctx(vm=spec, dest=host("host2", port_groups=groups)))
    assert codes(results) == ["PORTGROUP_MISSING", "PORTGROUP_MISSING", "PORTGROUP_DOWN"]
    assert [r.facts["port_group"] for r in results] == ["db-net", "mgmt", "vm-net"]
    assert "br-vm" in results[2].message
