"""Rules (``segue.placement.rules``) and the feasibility check of a rule set
(``segue.placement.feasibility``): each conflict named, each well-formed set accepted."""

from __future__ import annotations

import pytest

from segue.domain.errors import InvalidRequest
from segue.placement import HostRoom, Rule, VMNeed, broken_rules, check_rule, find_conflicts

VMS = [VMNeed(n, 1024, 2, frozenset({"web"} if n.startswith("web") else set()))
       for n in ("a", "b", "c", "web1", "web2", "web3")]
HOSTS = [HostRoom("h1", 4096, 2, frozenset({"rack1"})), HostRoom("h2", 4096, 2,
                                                                 frozenset({"rack1", "gpu"})),
         HostRoom("h3", 2048, 2, frozenset({"rack2"}))]


def rule(name: str, kind: str, *vms: str, strength: str = "must", vm_tag: str | None = None,
         host_tag: str | None = None) -> Rule:
    return Rule(name, kind, strength, frozenset(vms), vm_tag, host_tag)


@pytest.mark.parametrize(("r", "field"), [
    (rule("x", "near", "a", "b"), "kind"),
    (rule("x", "affinity", "a", "b", strength="may"), "strength"),
    (rule("x", "affinity"), "vms"),
    (rule("x", "affinity", "a"), "vms"),
    (rule("x", "vm-host", "a"), "host_tag"),
    (rule("x", "anti-affinity", "a", "b", host_tag="gpu"), "host_tag"),
])
def test_a_malformed_rule_is_refused_naming_the_field(r: Rule, field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        check_rule(r)
    assert err.value.code == "RULE_INVALID"
    assert err.value.details["field"] == field


@pytest.mark.parametrize(("rules", "code", "named"), [
    ([rule("t", "affinity", "a", "b"), rule("s", "anti-affinity", "a", "b")],
     "RULES_CONTRADICT", ("s", "t")),
    ([rule("t", "affinity", "a", "b"), rule("u", "affinity", "b", "c"),
      rule("s", "anti-affinity", "a", "c")], "RULES_CONTRADICT", ("s", "t", "u")),
    ([rule("g", "vm-host", "a", host_tag="nvme")], "RULE_HOST_TAG_UNKNOWN", ("g",)),
    ([rule("g", "vm-host", "a", host_tag="gpu"), rule("r", "vm-host", "a", host_tag="rack2")],
     "RULE_HOSTS_DISJOINT", ("g", "r")),
    ([rule("t", "affinity", "a", "b", "c", "web1", "web2")], "RULE_GROUP_TOO_LARGE", ("t",)),
    ([rule("s", "anti-affinity", "a", "b", "c", "web1")], "RULE_TOO_FEW_HOSTS", ("s",)),
    # three VMs pairwise apart on the two rack1 hosts: no single rule shows it
    ([rule("s1", "anti-affinity", "a", "b"), rule("s2", "anti-affinity", "b", "c"),
      rule("s3", "anti-affinity", "a", "c"), rule("g", "vm-host", "a", "b", "c",
                                                  host_tag="rack1")],
     "RULES_INFEASIBLE", ("g", "s1", "s2", "s3")),
    ([rule("x", "affinity", "a", "ghost")], "RULE_VM_UNKNOWN", ("x",)),
])
def test_a_rule_set_that_cannot_be_met_names_its_conflict(rules: list[Rule], code: str,
                                                          named: tuple[str, ...]) -> None:
    found = find_conflicts(rules, VMS, HOSTS)
    assert [c.code for c in found] == [code]
    assert set(found[0].rules) == set(named)


@pytest.mark.parametrize("rules", [
    [],
    [rule("t", "affinity", "a", "b"), rule("s", "anti-affinity", "a", "c")],
    [rule("s", "anti-affinity", vm_tag="web")],
    [rule("g", "vm-host", "a", host_tag="gpu"), rule("t", "affinity", "a", "b")],
    # should rules never conflict
    [rule("t", "affinity", "a", "b"), rule("s", "anti-affinity", "a", "b", strength="should")],
    [rule("g", "vm-host", "a", host_tag="nvme", strength="should")],
])
def test_a_rule_set_that_can_be_met_is_accepted(rules: list[Rule]) -> None:
    assert find_conflicts(rules, VMS, HOSTS) == []


def test_broken_rules_judges_a_whole_assignment() -> None:
    rules = [rule("t", "affinity", "a", "b"), rule("s", "anti-affinity", "a", "c"),
             rule("g", "vm-host", "c", host_tag="gpu")]
    tags = {h.name: h.tags for h in HOSTS}
    vm_tags = {v.name: v.tags for v in VMS}
    assert broken_rules(rules, {"a": "h1", "b": "h1", "c": "h2"}, tags, vm_tags) == []
    broken = broken_rules(rules, {"a": "h1", "b": "h2", "c": "h1"}, tags, vm_tags)
    assert [r.name for r, _ in broken] == ["g", "s", "t"]
