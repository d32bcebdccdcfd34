"""Placement rules in the controller's database, and what placement reads of the cluster:
functions of a session, run through ``Database.run``.

``create_rule`` checks the rule (``segue.placement.rules.check_rule``) and the whole set it
would join against the cluster's VMs and hosts (``segue.placement.feasibility``) before it
writes anything: a set that cannot be met is refused with the conflict's code and message
(``Conflict``, ``details["conflict"]`` naming the rules), and nothing changes.
``delete_rule`` removes one. ``feasibility_inputs`` reads every VM's size and tags and every
host's size and tags.

Errors: ``InvalidRequest`` (``RULE_INVALID``), ``Conflict`` (``RULE_EXISTS``, and each code
of ``segue.placement.feasibility``: ``RULES_CONTRADICT``, ``RULE_HOST_TAG_UNKNOWN``, ...),
``NotFound`` (``RULE_NOT_FOUND``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from segue.api.rules import RuleBody, RuleView
from segue.checks import host_facts_from_dict
from segue.checks.resources import memory_needed_mib
from segue.controller import inventory, policy_store
from segue.controller.rule_models import RuleRow
from segue.domain.errors import Conflict, NotFound
from segue.placement import HostRoom, Rule, VMNeed, check_rule, find_conflicts


def rule_of(row: RuleRow) -> Rule:
    return Rule(row.name, row.kind, row.strength, frozenset(row.vms), row.vm_tag, row.host_tag)


def rule_from_body(body: RuleBody) -> Rule:
    """The body as a rule, checked (InvalidRequest ``RULE_INVALID``)."""
    return check_rule(Rule(body.name, body.kind, body.strength, frozenset(body.vms),
                           body.vm_tag, body.host_tag))


def view(row: RuleRow) -> RuleView:
    return RuleView(name=row.name, kind=row.kind, strength=row.strength,
                    vms=sorted(row.vms), vm_tag=row.vm_tag, host_tag=row.host_tag,
                    created_at=row.created_at, created_by=row.created_by)


def _rows(session: Session) -> list[RuleRow]:
    return list(session.scalars(select(RuleRow).order_by(RuleRow.name)))


def rules(session: Session) -> list[Rule]:
    """Every rule in force, by name."""
    return [rule_of(r) for r in _rows(session)]


def list_rules(session: Session) -> list[RuleView]:
    return [view(r) for r in _rows(session)]


def feasibility_inputs(session: Session) -> tuple[list[VMNeed], list[HostRoom]]:
    """Every VM (memory with overhead, vCPUs, tags) and host (size, tags) of the cluster."""
    vm_tags = policy_store.tags_of(session, policy_store.VM)
    host_tags = policy_store.tags_of(session, policy_store.HOST)
    vms = [VMNeed(vm.name, memory_needed_mib(int(vm.spec.get("memory_mib") or 0)),
                  int(vm.spec.get("vcpus") or 1), frozenset(vm_tags.get(vm.name, [])))
           for vm in inventory.list_vms(session)]
    hosts = []
    for host in inventory.list_hosts(session):
        facts = host_facts_from_dict(host.name, dict(host.facts or {}))
        hosts.append(HostRoom(host.name, facts.memory.total_mib, facts.cpu.logical_cpus,
                              frozenset(host_tags.get(host.name, []))))
    return vms, hosts


def create_rule(session: Session, body: RuleBody, now: datetime, by: str) -> RuleView:
    """Add the rule if it is well formed, new, and the set with it can be met (module doc)."""
    rule = rule_from_body(body)
    if session.get(RuleRow, rule.name) is not None:
        raise Conflict("RULE_EXISTS", f"rule {rule.name} exists",
                       f"choose another name, or delete it first (segue rule delete "
                       f"{rule.name})")
    vms, hosts = feasibility_inputs(session)
    conflicts = find_conflicts([*rules(session), rule], vms, hosts)
    if conflicts:
        c = conflicts[0]
        raise Conflict(c.code, f"rule {rule.name} cannot be added: {c.message}", c.hint,
                       conflict=c.to_dict())
    row = RuleRow(name=rule.name, kind=rule.kind, strength=rule.strength,
                  vms=sorted(rule.vms), vm_tag=rule.vm_tag, host_tag=rule.host_tag,
                  created_at=now, created_by=by)
    session.add(row)
    session.flush()
    return view(row)


def delete_rule(session: Session, name: str) -> None:
    row = session.get(RuleRow, name)
    if row is None:
        raise NotFound("RULE_NOT_FOUND", f"no rule {name}", "see segue rule list")
    session.delete(row)
