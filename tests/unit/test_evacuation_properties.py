"""Properties of evacuation plans over many random clusters and rule sets (hypothesis), each
judged by an oracle written apart from the planner:

1. no plan breaks a must rule the cluster kept before it (with every VM where the plan leaves
   it: moved, or on the evacuated host when blocked);
2. no plan overfills a host: the memory of the VMs moved to a host (with QEMU overhead) fits
   in what it had available, and its vCPUs stay within the overcommit bound;
3. every VM of the host is either moved (to another host) or blocked, once.
"""

from __future__ import annotations

from collections.abc import Mapping

from checks_factory import ctx, host, vm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segue.checks.resources import memory_needed_mib
from segue.placement import VCPU_OVERCOMMIT, HostSlot, Resident, Rule
from segue.placement.evacuation import EvacuationRequest, Evacuee, plan_evacuation

KINDS = ("affinity", "anti-affinity", "vm-host")


@st.composite
def evacuations(draw: st.DrawFn) -> EvacuationRequest:
    names = [f"h{i}" for i in range(draw(st.integers(2, 4)))]
    hosts = tuple(HostSlot(host(n, memory={"total_mib": 8192, "available_mib": draw(
        st.sampled_from([600, 1500, 3000, 8000]))}, cpu={
            "host_model": "x", "accel": "tcg", "accel_reason": "", "logical_cpus": draw(
                st.sampled_from([1, 2])), "features": ["lm", "sse2"]}),
        frozenset(draw(st.sets(st.sampled_from(("a", "b"))))),
        draw(st.sampled_from([0, 0, 500]))) for n in names)
    evacuees = []
    residents = []
    for i in range(draw(st.integers(1, 5))):
        spec = vm(name=f"e{i}", memory_mib=draw(st.sampled_from([256, 768, 1536])),
                  vcpus=draw(st.integers(1, 4)))
        running = draw(st.booleans())
        contexts = {h.name: ctx(vm=spec, source=hosts[0].record, dest=h.record)
                    for h in hosts[1:]}
        evacuees.append(Evacuee(spec, running, frozenset(), draw(st.floats(0, 60)), contexts))
        residents.append(Resident(spec.name, "h0", spec.vcpus))
    for i in range(draw(st.integers(0, 3))):
        residents.append(Resident(f"o{i}", draw(st.sampled_from(names[1:])),
                                  draw(st.integers(1, 4))))
    vms = [r.name for r in residents]
    rules = []
    for i in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(KINDS if len(vms) > 1 else ("vm-host",)))
        members = frozenset(draw(st.lists(st.sampled_from(vms), min_size=1 if kind == "vm-host"
                                          else 2, max_size=4, unique=True)))
        rules.append(Rule(f"r{i}", kind, draw(st.sampled_from(["must", "must", "should"])),
                          members, None, draw(st.sampled_from(("a", "b")))
                          if kind == "vm-host" else None))
    return EvacuationRequest("h0", hosts, tuple(evacuees), tuple(residents), tuple(rules),
                             draw(st.integers(1, 4)))


def keeps(rule: Rule, at: Mapping[str, str], tags: Mapping[str, frozenset[str]]) -> bool:
    """The oracle: does the assignment ``at`` keep ``rule``?"""
    placed = [at[v] for v in sorted(rule.vms) if v in at]
    if rule.kind == "affinity":
        return len(set(placed)) <= 1
    if rule.kind == "anti-affinity":
        return len(set(placed)) == len(placed)
    return all(rule.host_tag in tags[h] for h in placed)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(evacuations())
def test_no_plan_breaks_a_kept_must_rule_or_overfills_a_host(
        request: EvacuationRequest) -> None:
    plan = plan_evacuation(request)
    before = {r.name: r.host for r in request.residents}
    after = {**before, **{m.vm: m.dest for m in plan.moves}}
    tags = {h.name: h.tags for h in request.hosts}
    for rule in (r for r in request.rules if r.must):
        if keeps(rule, before, tags):
            assert keeps(rule, after, tags), (rule, after)
    sizes = {e.vm.name: e.vm for e in request.evacuees}
    vcpus = {r.name: r.vcpus for r in request.residents}
    for slot in request.hosts[1:]:
        incoming = [m.vm for m in plan.moves if m.dest == slot.name]
        memory = sum(memory_needed_mib(sizes[v].memory_mib) for v in incoming)
        assert memory + slot.reserved_mib <= slot.record.facts.memory.available_mib
        there = sum(vcpus[v] for v, h in after.items() if h == slot.name)
        bound = slot.record.facts.cpu.logical_cpus * VCPU_OVERCOMMIT
        assert not incoming or there <= bound
    moved = [m.vm for m in plan.moves]
    blocked = [b.vm for b in plan.blocked]
    assert sorted(moved + blocked) == sorted(sizes)
    assert all(m.dest != "h0" for m in plan.moves)
