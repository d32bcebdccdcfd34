"""Placement, pure: where a VM should run, and the rules that bind where VMs run.

``segue.placement.planner.place`` scores or excludes every host of the cluster for one VM,
with its reasons (the checks a migration runs, host state, capacity, policies, rules) and a
load score; ``segue.placement.rules`` holds affinity, anti-affinity and VM-host rules (must
or should) and their verdicts; ``segue.placement.feasibility`` refuses a rule set that
cannot be met, naming the conflict; ``segue.placement.evacuation`` plans the emptying of a
host (each VM's destination or blocker, and the predicted duration). Nothing here does
I/O: the controller gathers the cluster (``segue.controller.placement_service``) and calls
these.

Errors: ``InvalidRequest`` (``RULE_INVALID``) from ``rules.check_rule``, and
(``MAINTENANCE_INVALID``) from ``evacuation.plan_evacuation`` for a limit below 1; the rest
answer with data (``Excluded`` reasons, ``RuleConflict``), never by raising.
"""

from segue.placement.feasibility import (
    VCPU_OVERCOMMIT,
    HostRoom,
    RuleConflict,
    VMNeed,
    find_conflicts,
)
from segue.placement.planner import (
    Candidate,
    Excluded,
    HostSlot,
    Placement,
    PlacementRequest,
    Reason,
    Resident,
    creation_checks,
    place,
)
from segue.placement.rules import Rule, broken_rules, check_rule

__all__ = ["VCPU_OVERCOMMIT", "Candidate", "Excluded", "HostRoom", "HostSlot", "Placement",
           "PlacementRequest", "Reason", "Resident", "Rule", "RuleConflict", "VMNeed",
           "broken_rules", "check_rule", "creation_checks", "find_conflicts", "place"]
