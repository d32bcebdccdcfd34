"""Placement rules: which VMs run together, apart, or on which hosts (pure data and verdicts).

Three kinds, each ``must`` or ``should``:

- ``affinity``: the rule's VMs run on one host.
- ``anti-affinity``: no two of the rule's VMs share a host.
- ``vm-host``: the rule's VMs run on hosts tagged ``host_tag`` (a host group is the hosts
  that carry a tag).

A rule's VMs are those named in ``vms`` and those tagged ``vm_tag`` (read when a decision is
made, so a VM tagged later is bound by it). A ``must`` rule is never broken by placement,
by any automated action, nor by a user's explicit destination; a ``should`` rule is kept
when some host allows it and is broken only with the reason recorded
(``segue.placement.planner``).

For a VM about to run on a host, ``breaches`` says which rules that breaks, given where the
other VMs are: affinity is kept when every other placed member of the rule is on that host
(a group already split across hosts is kept by no host), anti-affinity when no other member
is there, vm-host when the host carries the tag. ``broken_rules`` judges a whole
assignment (every VM to one host) the same way.

Errors: ``InvalidRequest`` (``RULE_INVALID``, naming the field) from ``check_rule``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from segue.domain.errors import InvalidRequest

AFFINITY, ANTI_AFFINITY, VM_HOST = "affinity", "anti-affinity", "vm-host"
KINDS = (AFFINITY, ANTI_AFFINITY, VM_HOST)
MUST, SHOULD = "must", "should"
STRENGTHS = (MUST, SHOULD)
RULE_VIOLATION = "RULE_VIOLATION"  # a must rule would be broken
RULE_SHOULD_BROKEN = "RULE_SHOULD_BROKEN"  # a should rule is broken (with the reason)


@dataclass(frozen=True)
class Rule:
    """One rule (see the module doc)."""

    name: str
    kind: str
    strength: str = MUST
    vms: frozenset[str] = field(default_factory=frozenset)
    vm_tag: str | None = None
    host_tag: str | None = None

    @property
    def must(self) -> bool:
        return self.strength == MUST

    def binds(self, vm: str, tags: Iterable[str]) -> bool:
        """Whether VM ``vm`` with ``tags`` is one of the rule's VMs."""
        return vm in self.vms or (self.vm_tag is not None and self.vm_tag in set(tags))

    def members(self, vm_tags: Mapping[str, frozenset[str]]) -> frozenset[str]:
        """The rule's VMs among ``vm_tags`` (every known VM -> its tags), and the named ones
        ``vm_tags`` lacks."""
        tagged = {vm for vm, tags in vm_tags.items() if self.binds(vm, tags)}
        return frozenset(tagged | self.vms)

    def describe(self) -> str:
        """``must anti-affinity db (vms a, b; tagged db)``-like text for messages."""
        who = ", ".join(sorted(self.vms))
        parts = [f"vms {who}"] if who else []
        if self.vm_tag is not None:
            parts.append(f"VMs tagged {self.vm_tag}")
        target = f" -> hosts tagged {self.host_tag}" if self.kind == VM_HOST else ""
        return f"{self.strength} {self.kind} {self.name} ({'; '.join(parts)}{target})"


def _invalid(field_name: str, problem: str, hint: str) -> InvalidRequest:
    return InvalidRequest("RULE_INVALID", f"{field_name}: {problem}", hint, field=field_name)


def check_rule(rule: Rule) -> Rule:
    """``rule`` if it is well formed; raises InvalidRequest (``RULE_INVALID``) naming the
    field otherwise."""
    if rule.kind not in KINDS:
        raise _invalid("kind", f"unknown kind {rule.kind!r}", f"use one of {', '.join(KINDS)}")
    if rule.strength not in STRENGTHS:
        raise _invalid("strength", f"unknown strength {rule.strength!r}", "use must or should")
    if not rule.vms and rule.vm_tag is None:
        raise _invalid("vms", "the rule binds no VM", "name VMs (--vm) or a VM tag (--vm-tag)")
    if rule.kind == VM_HOST and not rule.host_tag:
        raise _invalid("host_tag", "a vm-host rule needs the host group's tag",
                       "give --host-tag")
    if rule.kind != VM_HOST and rule.host_tag is not None:
        raise _invalid("host_tag", f"an {rule.kind} rule has no host group",
                       "drop --host-tag, or make it a vm-host rule")
    if rule.kind != VM_HOST and rule.vm_tag is None and len(rule.vms) < 2:
        raise _invalid("vms", f"an {rule.kind} rule relates at least two VMs",
                       "name two VMs or more, or a VM tag")
    return rule


def breach(rule: Rule, vm: str, host: str, host_tags: frozenset[str],
           where: Mapping[str, Iterable[str]], vm_tags: Mapping[str, frozenset[str]]
           ) -> str | None:
    """Why ``vm`` on ``host`` breaks ``rule`` (None: kept, or the rule does not bind it).
    ``where``: every other VM -> the hosts it occupies (two while it migrates)."""
    if not rule.binds(vm, vm_tags.get(vm, frozenset())):
        return None
    if rule.kind == VM_HOST:
        if rule.host_tag in host_tags:
            return None
        return f"{vm} {rule.strength} run on hosts tagged {rule.host_tag}; {host} is not"
    others = sorted(rule.members(vm_tags) - {vm})
    if rule.kind == ANTI_AFFINITY:
        near = [o for o in others if host in where.get(o, ())]
        if not near:
            return None
        return f"{vm} would share {host} with {', '.join(near)}"
    placed = sorted({h for o in others for h in where.get(o, ())})
    if not placed or placed == [host]:
        return None
    return f"{vm} {rule.strength} run with {', '.join(others)}, on {', '.join(placed)}"


def breaches(rules: Iterable[Rule], vm: str, host: str, host_tags: frozenset[str],
             where: Mapping[str, Iterable[str]], vm_tags: Mapping[str, frozenset[str]]
             ) -> list[tuple[Rule, str]]:
    """Every rule ``vm`` on ``host`` breaks, with why, in the rules' name order."""
    found = [(r, breach(r, vm, host, host_tags, where, vm_tags))
             for r in sorted(rules, key=lambda r: r.name)]
    return [(r, why) for r, why in found if why is not None]


def broken_rules(rules: Iterable[Rule], assignment: Mapping[str, str],
                 host_tags: Mapping[str, frozenset[str]],
                 vm_tags: Mapping[str, frozenset[str]]) -> list[tuple[Rule, str]]:
    """Every rule a whole ``assignment`` (VM -> host) breaks, once per rule, judged over
    the assigned VMs only."""
    out: list[tuple[Rule, str]] = []
    for rule in sorted(rules, key=lambda r: r.name):
        for vm in sorted(assignment):
            host = assignment[vm]
            where = {o: (h,) for o, h in assignment.items() if o != vm}
            why = breach(rule, vm, host, host_tags.get(host, frozenset()), where, vm_tags)
            if why is not None:
                out.append((rule, why))
                break
    return out
