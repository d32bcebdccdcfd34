"""Placement: every host of the cluster scored or excluded for one VM, with the reasons.

``place(request)`` runs, for each host (in name order):

1. the host is the VM's own (a migration): excluded, ``MIGRATION_SAME_HOST``;
2. the checks a migration runs (``segue.checks.run_checks`` on the host's
   ``MigrationContext``, its ``reserved_mib`` set to the memory incoming moves hold there) or,
   for a new VM, the ones that apply without a source (``creation_checks``): every error
   excludes the host (host state, resources, network, storage, CPU, ...), so placement never
   picks a host a migration would refuse;
3. capacity beyond the checks: the vCPUs on the host after the move (its VMs', the incoming
   moves' and this one's) at most ``VCPU_OVERCOMMIT`` per logical CPU, else
   ``VCPU_OVERCOMMIT``;
4. the user-defined policies' denials (``POLICY_DENIED``, given per host);
5. the rules (``segue.placement.rules``): a broken must rule excludes (``RULE_VIOLATION``,
   naming it); a broken should rule keeps the host as a candidate and records why
   (``RULE_SHOULD_BROKEN``).

Score of a candidate, after the move: ``m`` = memory in use / total (in use = total -
available + reserved by incoming moves + this VM with QEMU overhead), ``c`` = vCPUs / the
vCPU bound; ``score = 100 * (1 - (max(m, c) + (m + c) / 2) / 2)``, rounded to 0.1: the
bottleneck weighs as much as the average, so a host with both resources free wins, and a
host short of one resource loses. Candidates are ordered by the number of should rules they
break (fewest first), then score (highest first), then name: the same input gives the same
answer, ties broken by name.

A VM migrating counts on both its hosts for anti-affinity and at its destination for
affinity (``Resident.moving_to``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from segue.checks import CheckResult, HostRecord, MigrationContext, errors_of, run_checks
from segue.checks.network import check_port_groups
from segue.checks.request import check_host_state
from segue.checks.resources import check_resources, memory_needed_mib
from segue.checks.result import error
from segue.domain.vm import VMSpec
from segue.placement.feasibility import VCPU_OVERCOMMIT
from segue.placement.rules import AFFINITY, RULE_SHOULD_BROKEN, RULE_VIOLATION, Rule, breach

CREATE_IGNORES = frozenset({"HOST_MIGRATION_DISABLED"})  # a new VM is no migration


@dataclass(frozen=True)
class Resident:
    """A VM of the cluster other than the one placed: where it runs (and is moving to)."""

    name: str
    host: str
    vcpus: int
    tags: frozenset[str] = frozenset()
    moving_to: str | None = None


@dataclass(frozen=True)
class HostSlot:
    """One host as placement sees it. ``reserved_mib``: memory (with overhead) that moves
    in flight to it hold; ``context``: a migration's question for it (None for a new VM);
    ``policy``: the policies' results for the VM there (errors exclude)."""

    record: HostRecord
    tags: frozenset[str] = frozenset()
    reserved_mib: int = 0
    context: MigrationContext | None = None
    policy: tuple[CheckResult, ...] = ()

    @property
    def name(self) -> str:
        return self.record.name


@dataclass(frozen=True)
class PlacementRequest:
    """Where should ``vm`` (tagged ``vm_tags``) run? ``source``: its host (None: new VM)."""

    vm: VMSpec
    hosts: tuple[HostSlot, ...]
    vm_tags: frozenset[str] = frozenset()
    source: str | None = None
    residents: tuple[Resident, ...] = ()
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class Reason:
    """Why a host is excluded (or a should rule broken): ``kind`` is ``check``,
    ``host_state``, ``capacity``, ``policy`` or ``rule``."""

    kind: str
    code: str
    message: str
    hint: str = ""
    rule: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "code": self.code, "message": self.message,
                "hint": self.hint, "rule": self.rule}


@dataclass(frozen=True)
class Candidate:
    """A host the VM may go to, its score and load after the move, what it costs."""

    host: str
    score: float
    memory_use: float
    vcpu_use: float
    broken_should: tuple[Reason, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Excluded:
    host: str
    reasons: tuple[Reason, ...]


@dataclass(frozen=True)
class Placement:
    """Every host: ``candidates`` best first, ``excluded`` by name."""

    vm: str
    candidates: tuple[Candidate, ...] = ()
    excluded: tuple[Excluded, ...] = field(default_factory=tuple)

    @property
    def choice(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None


def creation_checks(vm: VMSpec, host: HostRecord, reserved_mib: int = 0) -> list[CheckResult]:
    """The checks of a new VM on ``host``: its state (migration may be disabled), its
    port groups, memory and CPUs, and every datastore the VM uses mounted there."""
    ctx = MigrationContext(vm=vm, vm_state="stopped", vm_cpu_features=None, source=host,
                           dest=host, reserved_mib=reserved_mib)
    results = [r for r in check_host_state(ctx) if r.code not in CREATE_IGNORES]
    mounted = {d.name for d in host.facts.datastores if d.present}
    wanted = sorted({vm.datastore, *(d.datastore for d in vm.disks)})
    results += [error("storage", "DATASTORE_NOT_MOUNTED",
                      f"datastore {name} is not mounted on {host.name}",
                      f"mount {name} on {host.name}, or choose another host", datastore=name)
                for name in wanted if name not in mounted]
    return results + check_port_groups(ctx) + check_resources(ctx)


def _kind_of(result: CheckResult) -> str:
    return {"host_state": "host_state", "resources": "capacity",
            "policy": "policy"}.get(result.check, "check")


def _reason(result: CheckResult) -> Reason:
    return Reason(_kind_of(result), result.code, result.message, result.hint)


def _checks(request: PlacementRequest, slot: HostSlot) -> list[CheckResult]:
    if request.source is None:
        return creation_checks(request.vm, slot.record, slot.reserved_mib)
    if slot.context is None:
        return [error("request", "CHECKS_NOT_RUN", f"{slot.name} could not be checked",
                      "check the host's agent")]
    return run_checks(replace(slot.context, reserved_mib=slot.reserved_mib))


def _vcpus_there(request: PlacementRequest, host: str) -> int:
    return sum(r.vcpus for r in request.residents
               if r.name != request.vm.name and host in (r.host, r.moving_to))


def _load(request: PlacementRequest, slot: HostSlot) -> tuple[float, float, int, int]:
    """Memory use and vCPU use after the move (fractions), the vCPUs and their bound."""
    mem = slot.record.facts.memory
    used = mem.total_mib - mem.available_mib + slot.reserved_mib
    used += memory_needed_mib(request.vm.memory_mib)
    vcpus = _vcpus_there(request, slot.name) + request.vm.vcpus
    bound = int(slot.record.facts.cpu.logical_cpus * VCPU_OVERCOMMIT)
    return (used / mem.total_mib if mem.total_mib > 0 else 1.0,
            vcpus / bound if bound > 0 else 1.0, vcpus, bound)


def score_of(memory_use: float, vcpu_use: float) -> float:
    """The module doc's formula."""
    worst, mean = max(memory_use, vcpu_use), (memory_use + vcpu_use) / 2
    return round(100 * (1 - (worst + mean) / 2), 1)


def _where(request: PlacementRequest) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for r in request.residents:
        if r.name != request.vm.name:
            out[r.name] = (r.host,) if r.moving_to is None else (r.host, r.moving_to)
    return out


def _rule_reasons(request: PlacementRequest, slot: HostSlot
                  ) -> tuple[list[Reason], list[Reason]]:
    """(must rules broken, should rules broken) by the VM on ``slot``."""
    where = _where(request)
    at_dest = {vm: hosts[-1:] for vm, hosts in where.items()}  # affinity: where it will be
    tags = {r.name: r.tags for r in request.residents}
    tags[request.vm.name] = request.vm_tags
    must: list[Reason] = []
    should: list[Reason] = []
    for rule in sorted(request.rules, key=lambda r: r.name):
        why = breach(rule, request.vm.name, slot.name, slot.tags,
                     at_dest if rule.kind == AFFINITY else where, tags)
        if why is None:
            continue
        code = RULE_VIOLATION if rule.must else RULE_SHOULD_BROKEN
        reason = Reason("rule", code, f"rule {rule.name}: {why}",
                        f"see segue rule list ({rule.describe()})", rule.name)
        (must if rule.must else should).append(reason)
    return must, should


def judge(request: PlacementRequest, slot: HostSlot) -> Candidate | Excluded:
    """One host's verdict (the module doc's steps)."""
    if slot.name == request.source:
        return Excluded(slot.name, (Reason("check", "MIGRATION_SAME_HOST",
                                           f"{request.vm.name} already runs on {slot.name}"),))
    results = _checks(request, slot)
    reasons = [_reason(r) for r in errors_of(results)]
    m, c, vcpus, bound = _load(request, slot)
    if vcpus > bound:
        reasons.append(Reason("capacity", "VCPU_OVERCOMMIT",
                              f"{slot.name} would run {vcpus} vCPUs, over its bound of {bound} "
                              f"({VCPU_OVERCOMMIT:g} per logical CPU)",
                              "choose a host with fewer vCPUs in use"))
    reasons += [_reason(r) for r in errors_of(slot.policy)]
    must, should = _rule_reasons(request, slot)
    reasons += must
    if reasons:
        return Excluded(slot.name, tuple(reasons))
    warnings = tuple(r.code for r in results if r.severity == "warning")
    return Candidate(slot.name, score_of(m, c), round(m, 3), round(c, 3), tuple(should),
                     warnings)


def place(request: PlacementRequest) -> Placement:
    """Every host of ``request`` scored or excluded (see the module doc); pure."""
    verdicts = [judge(request, slot) for slot in sorted(request.hosts, key=lambda s: s.name)]
    candidates = sorted((v for v in verdicts if isinstance(v, Candidate)),
                        key=lambda c: (len(c.broken_should), -c.score, c.host))
    excluded = tuple(v for v in verdicts if isinstance(v, Excluded))
    return Placement(request.vm.name, tuple(candidates), excluded)
