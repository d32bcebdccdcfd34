"""Evacuation plans, pure: where each VM of a host goes when the host is emptied, or why it
cannot, and how long the whole evacuation is predicted to take.

``plan_evacuation(request)``:

1. Order: running VMs first (they hold migration slots), longest predicted move first
   (``Evacuee.predicted_s``; then memory, heaviest first; then name). Longest-first is the
   classic list-scheduling order for the shortest total time on parallel slots (LPT), and
   with no prediction it is heaviest-first. Stopped VMs come after, smallest name first.
2. Each VM in turn is placed by ``segue.placement.planner.place`` over every host but the
   evacuated one (a running VM with its own ``MigrationContext`` and policy verdicts per
   host; a stopped one with the creation checks, as it will be started there later). The
   moves already planned count as incoming moves: their memory (with QEMU overhead) is added
   to their destination's ``reserved_mib`` and their vCPUs, tags and rules are counted at
   their destination. The evacuee VMs not judged yet count nowhere (they will move too); a
   VM that cannot move counts on the evacuated host, where it stays.
3. A must affinity rule can be broken by the greedy pass: a VM moves, then its partner
   turns out unable to move. So the final assignment is checked against every must rule; a
   moved VM bound by a must rule the plan newly breaks is taken back (blocked, ``MUST_RULE``,
   naming the rule) until none is broken that was kept before. No plan breaks a must rule
   the cluster kept; the memory a taken-back move held is not offered to others (a plan is
   one greedy pass, not a search).
4. A VM no host takes is blocked with a code (``BLOCKER_CODES``): the category found on every
   host that excluded it, in the order ``LOCAL_DEVICE`` (its storage is on no other host:
   ``DATASTORE_NOT_SHARED``, ``DATASTORE_NOT_MOUNTED``, ``DISK_NOT_VISIBLE``), ``MUST_RULE``
   (``RULE_VIOLATION``), ``POLICY_DENIED``, ``NO_CAPACITY`` (memory, CPUs, vCPU bound),
   ``CHECKS_FAILED`` (anything else: host state, network, CPU); when no category is common
   to all, the first of that order found anywhere. ``NO_OTHER_HOST`` when the cluster has no
   other host. Every host's reasons are kept (``Blocker.excluded``).
5. The predicted duration (``predict_schedule``): the running moves start in plan order (the
   migration queue starts one source's jobs first in, first out) as soon as fewer than
   ``max_parallel`` run (at most ``max_outgoing`` of the host's slots) and their destination
   runs fewer than ``max_incoming``; each takes its ``predicted_s``. The evacuation's
   predicted duration is the last move's end. Re-homing a stopped VM is a record change
   and takes no time. Moves running in parallel share the host's migration link, so each is
   slower than alone: the caller's ``predicted_s`` should be for the link share a move gets
   (``shared_link_bps``).

Deterministic: the same request gives the same plan. Nothing here raises for data;
``plan_evacuation`` raises ``InvalidRequest`` (``MAINTENANCE_INVALID``) for a
``max_parallel`` or limit below 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from segue.checks import CheckResult, MigrationContext
from segue.checks.resources import memory_needed_mib
from segue.domain.errors import InvalidRequest
from segue.domain.vm import VMSpec
from segue.placement.planner import (
    Excluded,
    HostSlot,
    PlacementRequest,
    Reason,
    Resident,
    place,
)
from segue.placement.rules import RULE_VIOLATION, Rule, broken_rules

LOCAL_DEVICE, MUST_RULE, POLICY_DENIED = "LOCAL_DEVICE", "MUST_RULE", "POLICY_DENIED"
NO_CAPACITY, CHECKS_FAILED, NO_OTHER_HOST = "NO_CAPACITY", "CHECKS_FAILED", "NO_OTHER_HOST"
BLOCKER_CODES = (LOCAL_DEVICE, MUST_RULE, POLICY_DENIED, NO_CAPACITY, CHECKS_FAILED,
                 NO_OTHER_HOST)
LOCAL_DEVICE_CODES = frozenset({"DATASTORE_NOT_SHARED", "DATASTORE_NOT_MOUNTED",
                                "DISK_NOT_VISIBLE"})
BLOCKER_HINTS = {
    LOCAL_DEVICE: "put its disks on a datastore other hosts mount, or stop it and move it "
                  "by hand",
    MUST_RULE: "change or delete the rule (segue rule list), or move the VM by hand",
    POLICY_DENIED: "the policy refuses maintenance moves of it (segue policy list)",
    NO_CAPACITY: "free memory or vCPUs on another host, or add one",
    CHECKS_FAILED: "see each host's reasons (segue vm placement VM)",
    NO_OTHER_HOST: "add a host to the cluster",
}


@dataclass(frozen=True)
class Evacuee:
    """A VM of the evacuated host. ``contexts``: a running VM's migration question per other
    host (a host without one is excluded, ``CHECKS_NOT_RUN``; its ``dest`` is replaced by the
    request's record of the host); ``policy``: the policies'
    results for it per host; ``predicted_s``: its move's predicted time (0 for a stopped VM,
    re-homed by a record change)."""

    vm: VMSpec
    running: bool
    tags: frozenset[str] = frozenset()
    predicted_s: float = 0.0
    contexts: Mapping[str, MigrationContext] = field(default_factory=dict)
    policy: Mapping[str, tuple[CheckResult, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class EvacuationRequest:
    """Empty ``host``: its VMs (``evacuees``), every host of the cluster (``hosts``: record,
    tags, memory held by moves already in flight; their context and policy are ignored),
    every VM of the cluster (``residents``, the evacuees included), the rules, and the
    limits the moves run under."""

    host: str
    hosts: tuple[HostSlot, ...]
    evacuees: tuple[Evacuee, ...]
    residents: tuple[Resident, ...] = ()
    rules: tuple[Rule, ...] = ()
    max_parallel: int = 2
    max_outgoing: int = 2
    max_incoming: int = 2


@dataclass(frozen=True)
class Move:
    """A planned move: a migration (``running``) or a re-homing; its predicted start and end,
    seconds from the evacuation's start, and the should rules it breaks."""

    vm: str
    dest: str
    running: bool
    predicted_s: float
    start_s: float = 0.0
    end_s: float = 0.0
    broken_should: tuple[Reason, ...] = ()


@dataclass(frozen=True)
class Blocker:
    """Why a VM cannot leave: a code of ``BLOCKER_CODES``, a message, a hint, and every
    host's reasons."""

    vm: str
    code: str
    message: str
    hint: str
    running: bool = True
    excluded: tuple[Excluded, ...] = ()


@dataclass(frozen=True)
class EvacuationPlan:
    """``moves`` in plan order, ``blocked`` in name order, the predicted duration."""

    host: str
    moves: tuple[Move, ...] = ()
    blocked: tuple[Blocker, ...] = ()
    predicted_s: float = 0.0
    parallel: int = 1

    @property
    def complete(self) -> bool:
        """Every VM has a destination."""
        return not self.blocked


def _category(reason: Reason) -> str:
    if reason.code in LOCAL_DEVICE_CODES:
        return LOCAL_DEVICE
    if reason.code == RULE_VIOLATION:
        return MUST_RULE
    if reason.kind == "policy":
        return POLICY_DENIED
    if reason.kind == "capacity":
        return NO_CAPACITY
    return CHECKS_FAILED


def blocker_of(evacuee: Evacuee, excluded: Sequence[Excluded]) -> Blocker:
    """The blocker of a VM every host in ``excluded`` refused (the module doc's step 4)."""
    name, running = evacuee.vm.name, evacuee.running
    if not excluded:
        return Blocker(name, NO_OTHER_HOST,
                       f"{name} cannot leave ({NO_OTHER_HOST}): the cluster has no other host",
                       BLOCKER_HINTS[NO_OTHER_HOST], running)
    per_host = [{_category(r) for r in e.reasons} for e in excluded]
    common = set.intersection(*per_host)
    found = set.union(*per_host)
    code = next(c for c in BLOCKER_CODES if c in (common or found))
    first = {e.host: next((r for r in e.reasons if _category(r) == code), e.reasons[0])
             for e in excluded}
    detail = "; ".join(f"{h}: {r.code} {r.message}" for h, r in sorted(first.items()))
    return Blocker(name, code, f"{name} cannot leave ({code}): {detail}",
                   BLOCKER_HINTS[code], running, tuple(excluded))


def _order(evacuees: Sequence[Evacuee]) -> list[Evacuee]:
    running = sorted((e for e in evacuees if e.running),
                     key=lambda e: (-e.predicted_s, -e.vm.memory_mib, e.vm.name))
    stopped = sorted((e for e in evacuees if not e.running), key=lambda e: e.vm.name)
    return running + stopped


def _slots(request: EvacuationRequest, evacuee: Evacuee, reserved: Mapping[str, int]
           ) -> tuple[HostSlot, ...]:
    out = []
    for slot in sorted(request.hosts, key=lambda s: s.name):
        if slot.name == request.host:
            continue
        ctx = evacuee.contexts.get(slot.name) if evacuee.running else None
        if ctx is not None:  # the host's state is the request's, whoever asked its agent
            ctx = replace(ctx, dest=slot.record)
        out.append(HostSlot(slot.record, slot.tags, slot.reserved_mib + reserved.get(slot.name, 0),
                            ctx, evacuee.policy.get(slot.name, ())))
    return tuple(out)


def _assignment(residents: Sequence[Resident], moved: Mapping[str, str]) -> dict[str, str]:
    return {r.name: moved.get(r.name, r.host) for r in residents}


def _newly_broken(request: EvacuationRequest, moved: Mapping[str, str]) -> list[Rule]:
    """The must rules the plan's moves break that the cluster kept before them."""
    must = [r for r in request.rules if r.must]
    host_tags = {s.name: s.tags for s in request.hosts}
    vm_tags = {r.name: r.tags for r in request.residents}
    before = {r.name for r, _ in broken_rules(
        must, _assignment(request.residents, {}), host_tags, vm_tags)}
    after = broken_rules(must, _assignment(request.residents, moved), host_tags, vm_tags)
    return [r for r, _ in after if r.name not in before]


def _greedy(request: EvacuationRequest) -> tuple[list[Move], dict[str, Blocker]]:
    """Steps 1, 2 and 4 of the module doc."""
    residents = {r.name: r for r in request.residents}
    pending = {e.vm.name for e in request.evacuees}
    placed: dict[str, Resident] = {}  # evacuees judged: where they will be
    reserved: dict[str, int] = {}
    moves: list[Move] = []
    blocked: dict[str, Blocker] = {}
    for evacuee in _order(request.evacuees):
        name = evacuee.vm.name
        pending.discard(name)
        others = [r for n, r in residents.items() if n not in pending and n not in placed
                  and n != name]
        answer = place(PlacementRequest(
            evacuee.vm, _slots(request, evacuee, reserved), evacuee.tags,
            request.host if evacuee.running else None,
            (*others, *placed.values()), request.rules))
        me = residents.get(name, Resident(name, request.host, evacuee.vm.vcpus, evacuee.tags))
        choice = answer.choice
        if choice is None:
            blocked[name] = blocker_of(evacuee, answer.excluded)
            placed[name] = Resident(name, request.host, me.vcpus, me.tags)
            continue
        reserved[choice.host] = reserved.get(choice.host, 0) + memory_needed_mib(
            evacuee.vm.memory_mib)
        placed[name] = Resident(name, choice.host, me.vcpus, me.tags)
        moves.append(Move(name, choice.host, evacuee.running,
                          evacuee.predicted_s if evacuee.running else 0.0,
                          broken_should=choice.broken_should))
    return moves, blocked


def _take_back(request: EvacuationRequest, moves: list[Move], blocked: dict[str, Blocker],
               running: Mapping[str, bool]) -> list[Move]:
    """Step 3 of the module doc: moves that newly break a must rule are taken back."""
    vm_tags = {r.name: r.tags for r in request.residents}
    while True:
        moved = {m.vm: m.dest for m in moves}
        broken = _newly_broken(request, moved)
        if not broken:
            return moves
        rule = broken[0]
        back = sorted(rule.members(vm_tags) & moved.keys())
        stay = sorted(v for v in rule.members(vm_tags) if v in blocked) or [request.host]
        for name in back:
            blocked[name] = Blocker(
                name, MUST_RULE,
                f"{name} cannot leave (MUST_RULE): rule {rule.name} ({rule.describe()}) "
                f"would be broken, as {', '.join(stay)} stays",
                BLOCKER_HINTS[MUST_RULE], running[name],
                (Excluded(moved[name], (Reason("rule", RULE_VIOLATION,
                                               f"rule {rule.name} would be broken",
                                               rule=rule.name),)),))
        moves = [m for m in moves if m.vm not in back]


def predict_schedule(durations: Sequence[tuple[str, float]], parallel: int,
                     max_incoming: int) -> list[tuple[float, float]]:
    """(start, end) of each move (destination, seconds), started in the given order: each
    starts once fewer than ``parallel`` run and its destination runs fewer than
    ``max_incoming``, never before the one before it (the module doc's step 5)."""
    runs: list[tuple[float, float, str]] = []
    out: list[tuple[float, float]] = []
    earliest = 0.0
    for dest, seconds in durations:
        times = sorted({earliest, *(end for _, end, _ in runs if end > earliest)})
        for t in times:
            live = [d for s, e, d in runs if s <= t < e]
            if len(live) < parallel and live.count(dest) < max_incoming:
                start = t
                break
        else:  # unreachable: after the last end nothing runs
            start = max([earliest, *(e for _, e, _ in runs)])
        runs.append((start, start + seconds, dest))
        out.append((start, start + seconds))
        earliest = start
    return out


def shared_link_bps(link_bps: float, parallel: int) -> float:
    """The share of the evacuated host's migration link each of ``parallel`` moves gets."""
    return link_bps / max(1, parallel)


def _check_limits(request: EvacuationRequest) -> None:
    for name in ("max_parallel", "max_outgoing", "max_incoming"):
        value = getattr(request, name)
        if value < 1:
            raise InvalidRequest("MAINTENANCE_INVALID", f"{name} is {value}; it must be >= 1",
                                 f"give {name} 1 or more", field=name)


def plan_evacuation(request: EvacuationRequest) -> EvacuationPlan:
    """The plan (see the module doc); pure and deterministic."""
    _check_limits(request)
    running = {e.vm.name: e.running for e in request.evacuees}
    moves, blocked = _greedy(request)
    moves = _take_back(request, moves, blocked, running)
    parallel = min(request.max_parallel, request.max_outgoing)
    live = [m for m in moves if m.running]
    times = iter(predict_schedule([(m.dest, m.predicted_s) for m in live], parallel,
                                  request.max_incoming))
    timed = [Move(m.vm, m.dest, m.running, m.predicted_s, *next(times), m.broken_should)
             if m.running else m for m in moves]
    total = max((m.end_s for m in timed), default=0.0)
    return EvacuationPlan(request.host, tuple(timed),
                          tuple(blocked[n] for n in sorted(blocked)), round(total, 1), parallel)
