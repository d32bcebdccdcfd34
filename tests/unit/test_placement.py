"""Placement (``segue.placement.planner``): every host scored or excluded, with reasons; as
tables of one change from a healthy three-host cluster."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from checks_factory import ctx, host, vm

from segue.checks import CheckResult
from segue.checks.result import error
from segue.placement import HostSlot, Placement, PlacementRequest, Resident, Rule, place
from segue.placement.planner import score_of

HOSTS = ("host1", "host2", "host3")


def slot(name: str, *, tags: tuple[str, ...] = (), reserved: int = 0,
         policy: tuple[CheckResult, ...] = (), record: dict[str, Any] | None = None,
         **facts: Any) -> HostSlot:
    rec = host(name, **(record or {}), **facts)
    return HostSlot(rec, frozenset(tags), reserved, ctx(source=host("host1"), dest=rec),
                    policy)


def request(*slots: HostSlot, source: str | None = "host1", rules: tuple[Rule, ...] = (),
            residents: tuple[Resident, ...] = (), tags: tuple[str, ...] = (),
            **vm_changes: Any) -> PlacementRequest:
    slots = slots or tuple(slot(h) for h in HOSTS)
    return PlacementRequest(vm(**vm_changes), slots, frozenset(tags), source, residents, rules)


def codes(p: Placement, name: str) -> list[str]:
    return [r.code for e in p.excluded if e.host == name for r in e.reasons]


def order(p: Placement) -> list[str]:
    return [c.host for c in p.candidates]


def test_every_host_is_scored_or_excluded_and_the_source_is_excluded() -> None:
    p = place(request())
    assert order(p) == ["host2", "host3"]  # equal load: by name
    assert codes(p, "host1") == ["MIGRATION_SAME_HOST"]
    assert p.choice is not None and p.choice.host == "host2"


@pytest.mark.parametrize(("change", "code", "kind"), [
    ({"record": {"connected": False}}, "HOST_DISCONNECTED", "host_state"),
    ({"record": {"maintenance": True}}, "HOST_IN_MAINTENANCE", "host_state"),
    ({"record": {"migration_enabled": False}}, "HOST_MIGRATION_DISABLED", "host_state"),
    ({"record": {"reachable": False}}, "AGENT_UNREACHABLE", "host_state"),
    ({"memory": {"total_mib": 16384, "available_mib": 300}}, "INSUFFICIENT_MEMORY",
     "capacity"),
    ({"reserved": 8000}, "INSUFFICIENT_MEMORY", "capacity"),
    ({"port_groups": []}, "PORTGROUP_MISSING", "check"),
    ({"datastores": []}, "DATASTORE_NOT_SHARED", "check"),
    ({"policy": (error("policy", "POLICY_DENIED", "policy pci: no", ""),)}, "POLICY_DENIED",
     "policy"),
])
def test_a_host_a_migration_would_refuse_is_excluded(change: dict[str, Any], code: str,
                                                     kind: str) -> None:
    p = place(request(slot("host1"), slot("host2", **change), slot("host3")))
    assert order(p) == ["host3"]
    excluded = next(e for e in p.excluded if e.host == "host2")
    assert code in [r.code for r in excluded.reasons]
    assert kind in [r.kind for r in excluded.reasons if r.code == code]


def test_vcpus_beyond_the_overcommit_bound_exclude() -> None:
    residents = tuple(Resident(f"v{i}", "host2", 8) for i in range(4))  # 32 = 8 CPUs x 4
    p = place(request(residents=residents))
    assert codes(p, "host2") == ["VCPU_OVERCOMMIT"]
    assert order(p) == ["host3"]


def test_an_incoming_move_counts_its_vcpus_at_its_destination() -> None:
    residents = (*(Resident(f"v{i}", "host2", 8) for i in range(3)),
                 Resident("mover", "host1", 8, moving_to="host2"))
    p = place(request(residents=residents))  # 24 + 8 incoming + 1 > 32
    assert codes(p, "host2") == ["VCPU_OVERCOMMIT"]
    assert order(p) == ["host3"]
    assert place(request(residents=residents[:3])).candidates[0].host == "host3"
    assert "host2" in order(place(request(residents=residents[:3])))


def test_the_less_loaded_host_wins_and_reservations_count() -> None:
    p = place(request(slot("host2", reserved=2000), slot("host3")))
    assert order(p) == ["host3", "host2"]
    assert p.candidates[0].score > p.candidates[1].score


@pytest.mark.parametrize(("m", "c", "score"), [
    (0.0, 0.0, 100.0), (1.0, 1.0, 0.0), (0.5, 0.5, 50.0), (0.8, 0.0, 40.0), (0.2, 0.6, 50.0),
])
def test_the_score_formula(m: float, c: float, score: float) -> None:
    assert score_of(m, c) == score


def test_a_balanced_host_beats_one_short_of_a_resource() -> None:
    assert score_of(0.4, 0.4) > score_of(0.1, 0.7)


RULES = {
    "must-host": Rule("gpu", "vm-host", vms=frozenset({"web1"}), host_tag="gpu"),
    "anti": Rule("apart", "anti-affinity", vms=frozenset({"web1", "db1"})),
    "affinity": Rule("together", "affinity", vms=frozenset({"web1", "db1"})),
    "tagged": Rule("gpu", "vm-host", vm_tag="ml", host_tag="gpu"),
}


@pytest.mark.parametrize(("rule", "tags", "allowed"), [
    ("must-host", (), ["host3"]),
    ("anti", (), ["host3"]),
    ("affinity", (), ["host2"]),
    ("tagged", ("ml",), ["host3"]),
    ("tagged", (), ["host2", "host3"]),  # the VM is not tagged: the rule does not bind it
])
def test_must_rules_exclude_naming_the_rule(rule: str, tags: tuple[str, ...],
                                            allowed: list[str]) -> None:
    p = place(request(slot("host1"), slot("host2"), slot("host3", tags=("gpu",)),
                      rules=(RULES[rule],), residents=(Resident("db1", "host2", 1),),
                      tags=tags))
    assert sorted(order(p)) == allowed
    for e in p.excluded:
        if e.host != "host1":
            assert [r.rule for r in e.reasons] == [RULES[rule].name]
            assert e.reasons[0].code == "RULE_VIOLATION"


def test_should_rules_rank_after_but_keep_the_host_with_the_reason() -> None:
    should = replace(RULES["must-host"], strength="should")
    p = place(request(slot("host1"), slot("host2"), slot("host3", tags=("gpu",), reserved=4000),
                      rules=(should,)))
    assert order(p) == ["host3", "host2"]  # host3 keeps the rule despite its lower score
    assert [r.code for r in p.candidates[1].broken_should] == ["RULE_SHOULD_BROKEN"]
    assert p.candidates[1].broken_should[0].rule == "gpu"


def test_a_migrating_vm_counts_on_both_hosts_for_anti_affinity() -> None:
    p = place(request(rules=(RULES["anti"],),
                      residents=(Resident("db1", "host1", 1, moving_to="host2"),)))
    assert "RULE_VIOLATION" in codes(p, "host2")
    assert order(p) == ["host3"]


def test_a_split_affinity_group_is_kept_by_no_host() -> None:
    rule = Rule("together", "affinity", vms=frozenset({"web1", "db1", "db2"}))
    p = place(request(rules=(rule,), residents=(Resident("db1", "host2", 1),
                                                Resident("db2", "host3", 1))))
    assert p.candidates == ()


def test_a_new_vm_skips_the_migration_only_checks() -> None:
    p = place(request(slot("host1", record={"migration_enabled": False}),
                      slot("host2", datastores=[]), slot("host3", record={"maintenance": True}),
                      source=None))
    assert order(p) == ["host1"]
    assert codes(p, "host2") == ["DATASTORE_NOT_MOUNTED"]
    assert codes(p, "host3") == ["HOST_IN_MAINTENANCE"]


def test_a_migration_without_a_context_is_excluded_not_guessed() -> None:
    p = place(request(slot("host1"), replace(slot("host2"), context=None)))
    assert codes(p, "host2") == ["CHECKS_NOT_RUN"]


def test_the_same_input_in_any_order_gives_the_same_answer() -> None:
    slots = [slot("host4"), slot("host2"), slot("host3", reserved=100), slot("host1")]
    first = place(request(*slots))
    assert place(request(*reversed(slots))) == first
    assert order(first) == ["host2", "host4", "host3"]
