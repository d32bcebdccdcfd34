"""Whether a rule set can be met at all: refused at creation, with the conflict named.

What is guaranteed, precisely: ``find_conflicts`` returns nothing if and only if there is an
assignment of every VM a ``must`` rule binds, each to one host, that keeps every ``must``
rule, where the VMs put on one host fit its total memory (each VM's memory plus QEMU
overhead) and its vCPU bound (logical CPUs x ``VCPU_OVERCOMMIT``), and every ``must``
vm-host rule names a host tag some host has (a rule that binds no VM yet is refused too when
its tag is on no host: any VM it came to bind could run nowhere). Only the rules' VMs are
counted against capacity (the others can run anywhere), and a migration in flight or a host
that is down does not make a set infeasible: this is about the cluster's hosts, not their
state now. ``should`` rules are never a conflict. The one exception to "if and only if":
a search that needs more than ``SEARCH_BUDGET`` steps answers ``RULES_TOO_COMPLEX``
(refused, though a solution may exist).

Conflicts, in the order they are looked for (each names the rules involved):
``RULE_VM_UNKNOWN`` (a rule names a VM the cluster does not have),
``RULE_HOST_TAG_UNKNOWN`` (a must vm-host rule to a tag no host has),
``RULES_CONTRADICT`` (two VMs that must run together and must run apart),
``RULE_HOSTS_DISJOINT`` (VMs that must run together must also run on host groups no host
is in at once), ``RULE_GROUP_TOO_LARGE`` (VMs that must run together fit no host they may
run on), ``RULE_TOO_FEW_HOSTS`` (an anti-affinity rule binds more VM groups than the hosts
they may run on), ``RULES_INFEASIBLE`` (the search found no assignment), ``RULES_TOO_COMPLEX``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from segue.placement.rules import AFFINITY, ANTI_AFFINITY, VM_HOST, Rule

VCPU_OVERCOMMIT = 4.0  # vCPUs a host may run per logical CPU
SEARCH_BUDGET = 50_000  # assignment steps before giving up (RULES_TOO_COMPLEX)


@dataclass(frozen=True)
class VMNeed:
    """A VM as the feasibility check counts it: memory with QEMU overhead, vCPUs, tags."""

    name: str
    memory_mib: int
    vcpus: int
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True)
class HostRoom:
    """A host's size (not its current use) and tags."""

    name: str
    memory_mib: int
    logical_cpus: int
    tags: frozenset[str] = frozenset()

    @property
    def vcpu_bound(self) -> int:
        return int(self.logical_cpus * VCPU_OVERCOMMIT)


@dataclass(frozen=True)
class RuleConflict:
    """Why a rule set cannot be met: a code, a message naming the rules and VMs, a hint."""

    code: str
    message: str
    hint: str
    rules: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "hint": self.hint,
                "rules": list(self.rules)}


@dataclass(frozen=True)
class _Group:
    """VMs that must run together, the host groups they must run in, their size."""

    vms: tuple[str, ...]
    host_tags: frozenset[str]
    memory_mib: int
    vcpus: int
    rules: tuple[str, ...]


def _groups(must: Sequence[Rule], members: Mapping[str, frozenset[str]],
            needs: Mapping[str, VMNeed]) -> list[_Group]:
    """The bound VMs merged by must affinity (union-find), each group with its tags."""
    parent = {vm: vm for r in must for vm in members[r.name]}

    def root(vm: str) -> str:
        while parent[vm] != vm:
            parent[vm] = parent[parent[vm]]
            vm = parent[vm]
        return vm

    for rule in (r for r in must if r.kind == AFFINITY):
        ordered = sorted(members[rule.name])
        for vm in ordered[1:]:
            parent[root(vm)] = root(ordered[0])
    by_root: dict[str, list[str]] = {}
    for vm in sorted(parent):
        by_root.setdefault(root(vm), []).append(vm)
    groups = []
    for vms in sorted(by_root.values()):
        related = [r for r in must if r.kind in (AFFINITY, VM_HOST)
                   and members[r.name] & set(vms)]
        groups.append(_Group(
            tuple(vms), frozenset(r.host_tag for r in related if r.host_tag is not None),
            sum(needs[v].memory_mib for v in vms), sum(needs[v].vcpus for v in vms),
            tuple(sorted(r.name for r in related))))
    return groups


def _fits(group: _Group, host: HostRoom) -> bool:
    return (group.host_tags <= host.tags and group.memory_mib <= host.memory_mib
            and group.vcpus <= host.vcpu_bound)


def _static(must: Sequence[Rule], members: Mapping[str, frozenset[str]],
            groups: list[_Group], hosts: Sequence[HostRoom]) -> RuleConflict | None:
    """The conflicts found without a search (the module doc's order)."""
    all_tags = frozenset().union(*(h.tags for h in hosts)) if hosts else frozenset()
    for rule in must:
        if rule.kind == VM_HOST and rule.host_tag not in all_tags:
            return RuleConflict("RULE_HOST_TAG_UNKNOWN",
                                f"rule {rule.name}: no host is tagged {rule.host_tag}",
                                f"tag a host {rule.host_tag} (segue host tag), or make the rule "
                                "a should rule", (rule.name,))
    group_of = {vm: g for g in groups for vm in g.vms}
    for rule in (r for r in must if r.kind == ANTI_AFFINITY):
        for g in groups:
            both = sorted(members[rule.name] & set(g.vms))
            if len(both) >= 2:
                together = [r.name for r in must if r.kind == AFFINITY
                            and members[r.name] & set(g.vms)]
                return RuleConflict(
                    "RULES_CONTRADICT",
                    f"anti-affinity {rule.name} keeps {both[0]} and {both[1]} apart, but "
                    f"{', '.join(together)} must keep them together",
                    "drop one of the rules, or make one a should rule",
                    (rule.name, *together))
    for g in groups:
        if not any(g.host_tags <= h.tags for h in hosts):
            return RuleConflict("RULE_HOSTS_DISJOINT",
                                f"{', '.join(g.vms)} must run on a host tagged "
                                f"{' and '.join(sorted(g.host_tags))}, and no host is",
                                "tag a host with all of them, or drop one rule", g.rules)
        if not any(_fits(g, h) for h in hosts):
            return RuleConflict("RULE_GROUP_TOO_LARGE",
                                f"{', '.join(g.vms)} must run together ({g.memory_mib} MiB, "
                                f"{g.vcpus} vCPUs) and fit on no host they may run on",
                                "split the group (drop the affinity rule) or add a larger host",
                                g.rules)
    for rule in (r for r in must if r.kind == ANTI_AFFINITY):
        apart = {group_of[vm].vms: group_of[vm] for vm in members[rule.name]}
        room = {h.name for g in apart.values() for h in hosts if _fits(g, h)}
        if len(apart) > len(room):
            return RuleConflict("RULE_TOO_FEW_HOSTS",
                                f"anti-affinity {rule.name} needs {len(apart)} hosts for "
                                f"{', '.join(sorted(members[rule.name]))}; only {len(room)} "
                                "can take them", "add hosts, or bind fewer VMs",
                                (rule.name,))
    return None


def _search(groups: list[_Group], apart: dict[int, set[int]], hosts: Sequence[HostRoom]
            ) -> bool | None:
    """Backtracking over groups (fewest fitting hosts first): True if an assignment exists,
    False if none does, None when the budget ran out."""
    order = sorted(range(len(groups)),
                   key=lambda i: (sum(_fits(groups[i], h) for h in hosts), -groups[i].memory_mib,
                                  groups[i].vms))
    used_mem = [0] * len(hosts)
    used_cpu = [0] * len(hosts)
    at: dict[int, int] = {}
    steps = 0

    def place(k: int) -> bool | None:
        nonlocal steps
        if k == len(order):
            return True
        g = order[k]
        group = groups[g]
        for h, host in enumerate(hosts):
            steps += 1
            if steps > SEARCH_BUDGET:
                return None
            if (not group.host_tags <= host.tags
                    or used_mem[h] + group.memory_mib > host.memory_mib
                    or used_cpu[h] + group.vcpus > host.vcpu_bound
                    or any(at.get(o) == h for o in apart.get(g, ()))):
                continue
            at[g], used_mem[h], used_cpu[h] = h, used_mem[h] + group.memory_mib, \
                used_cpu[h] + group.vcpus
            found = place(k + 1)
            del at[g]
            used_mem[h] -= group.memory_mib
            used_cpu[h] -= group.vcpus
            if found is not False:
                return found
        return False

    return place(0)


def find_conflicts(rules: Sequence[Rule], vms: Sequence[VMNeed], hosts: Sequence[HostRoom]
                   ) -> list[RuleConflict]:
    """The first conflict that makes ``rules`` impossible on ``hosts`` (empty: they can be
    met; see the module doc for the exact guarantee). ``vms``: every VM of the cluster."""
    needs = {v.name: v for v in vms}
    tags = {v.name: v.tags for v in vms}
    for rule in sorted(rules, key=lambda r: r.name):
        unknown = sorted(rule.vms - needs.keys())
        if unknown:
            return [RuleConflict("RULE_VM_UNKNOWN",
                                 f"rule {rule.name} names VM {unknown[0]}, which the cluster "
                                 "does not have", "create the VM first, or bind it by a tag",
                                 (rule.name,))]
    must = sorted((r for r in rules if r.must), key=lambda r: r.name)
    members = {r.name: r.members(tags) for r in must}
    hosts = sorted(hosts, key=lambda h: h.name)
    groups = _groups(must, members, needs)
    static = _static(must, members, groups, hosts)
    if static is not None:
        return [static]
    index = {vm: i for i, g in enumerate(groups) for vm in g.vms}
    apart: dict[int, set[int]] = {}
    for rule in (r for r in must if r.kind == ANTI_AFFINITY):
        ids = {index[vm] for vm in members[rule.name]}
        for i in ids:
            apart.setdefault(i, set()).update(ids - {i})
    found = _search(groups, apart, hosts)
    names = tuple(r.name for r in must)
    if found is None:
        return [RuleConflict("RULES_TOO_COMPLEX",
                             f"no assignment of the rules' VMs was found within "
                             f"{SEARCH_BUDGET} steps, so the set cannot be shown to be met",
                             "bind fewer VMs by must rules, or make some should rules", names)]
    if not found:
        return [RuleConflict("RULES_INFEASIBLE",
                             "no assignment of the VMs to the hosts keeps every must rule "
                             "within the hosts' memory and vCPUs",
                             "drop or relax (should) one of the rules, or add hosts", names)]
    return []
