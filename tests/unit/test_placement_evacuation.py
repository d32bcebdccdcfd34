"""Evacuation plans (``segue.placement.evacuation``): each VM of a host gets a destination or
a blocker with its code; planned moves count as incoming moves; the predicted duration under
the parallel limits; as tables from a healthy three-host cluster, host1 evacuated."""

from __future__ import annotations

from typing import Any

import pytest
from checks_factory import ctx, host, vm

from segue.checks import CheckResult
from segue.checks.result import error
from segue.domain.errors import InvalidRequest
from segue.placement import HostSlot, Resident, Rule
from segue.placement.evacuation import (
    EvacuationPlan,
    EvacuationRequest,
    Evacuee,
    plan_evacuation,
    predict_schedule,
)

OTHERS = ("host2", "host3")


def slot(name: str, *, tags: tuple[str, ...] = (), reserved: int = 0,
         record: dict[str, Any] | None = None, **facts: Any) -> HostSlot:
    return HostSlot(host(name, **(record or {}), **facts), frozenset(tags), reserved)


def evacuee(name: str, memory: int = 256, *, running: bool = True, seconds: float = 10.0,
            tags: tuple[str, ...] = (), policy: dict[str, tuple[CheckResult, ...]] | None = None,
            **spec: Any) -> Evacuee:
    spec_ = vm(name=name, memory_mib=memory, **spec)
    contexts = {h: ctx(vm=spec_, source=host("host1"), dest=host(h)) for h in OTHERS}
    return Evacuee(spec_, running, frozenset(tags), seconds if running else 0.0, contexts,
                   policy or {})


def request(*evacuees: Evacuee, hosts: tuple[HostSlot, ...] | None = None,
            residents: tuple[Resident, ...] = (), rules: tuple[Rule, ...] = (),
            **limits: Any) -> EvacuationRequest:
    hosts = hosts or (slot("host1"), *(slot(h) for h in OTHERS))
    mine = tuple(Resident(e.vm.name, "host1", e.vm.vcpus, e.tags) for e in evacuees)
    return EvacuationRequest("host1", hosts, evacuees, (*mine, *residents), rules, **limits)


def dests(plan: EvacuationPlan) -> dict[str, str]:
    return {m.vm: m.dest for m in plan.moves}


def blockers(plan: EvacuationPlan) -> dict[str, str]:
    return {b.vm: b.code for b in plan.blocked}


def test_every_vm_gets_a_destination_heaviest_first_spread_by_load() -> None:
    plan = plan_evacuation(request(evacuee("a", 1024), evacuee("b", 4096), evacuee("c", 2048)))
    assert [m.vm for m in plan.moves] == ["b", "c", "a"]
    # b to host2 (tie by name); c then finds host3 emptier; a then host3 (2048+... vs 4096)
    assert dests(plan) == {"b": "host2", "c": "host3", "a": "host3"}
    assert plan.complete and plan.blocked == ()


def test_the_longest_predicted_move_goes_first() -> None:
    plan = plan_evacuation(request(evacuee("a", 1024, seconds=50), evacuee("b", 4096,
                                                                            seconds=5)))
    assert [m.vm for m in plan.moves] == ["a", "b"]


def test_planned_moves_reserve_memory_at_their_destination() -> None:
    small = {"memory": {"total_mib": 4096, "available_mib": 2000}}
    hosts = (slot("host1"), slot("host2", **small), slot("host3", **small))
    plan = plan_evacuation(request(*(evacuee(n, 1500) for n in "abc"), hosts=hosts))
    assert sorted(dests(plan).values()) == ["host2", "host3"]  # one each: 1628 MiB held
    assert blockers(plan) == {"c": "NO_CAPACITY"}


@pytest.mark.parametrize(("make", "code"), [
    (lambda: request(evacuee("a"), rules=(Rule("pin", "vm-host", "must", frozenset({"a"}),
                                                host_tag="one"),),
                     hosts=(slot("host1", tags=("one",)), slot("host2"), slot("host3"))),
     "MUST_RULE"),
    (lambda: request(evacuee("a", 20000)), "NO_CAPACITY"),
    (lambda: request(evacuee("a", policy={h: (error("policy", "POLICY_DENIED", "no", ""),)
                                          for h in OTHERS})), "POLICY_DENIED"),
    (lambda: request(evacuee("a"), hosts=(slot("host1"), *(slot(h, datastores=[])
                                                            for h in OTHERS))),
     "LOCAL_DEVICE"),
    (lambda: request(evacuee("a"), hosts=(slot("host1"), *(slot(h, record={"connected": False})
                                                            for h in OTHERS))),
     "CHECKS_FAILED"),
    (lambda: request(evacuee("a"), hosts=(slot("host1"),)), "NO_OTHER_HOST"),
    (lambda: request(evacuee("a", running=False, memory=20000)), "NO_CAPACITY"),
])
def test_a_vm_no_host_takes_is_blocked_with_its_code(make: Any, code: str) -> None:
    plan = plan_evacuation(make())
    assert blockers(plan) == {"a": code}
    assert plan.moves == () and not plan.complete
    assert code in plan.blocked[0].message and plan.blocked[0].hint


def test_the_blocker_keeps_every_hosts_reasons() -> None:
    plan = plan_evacuation(request(evacuee("a", 20000)))
    assert [e.host for e in plan.blocked[0].excluded] == ["host2", "host3"]
    assert all("INSUFFICIENT_MEMORY" in [r.code for r in e.reasons]
               for e in plan.blocked[0].excluded)


def test_hosts_in_maintenance_are_no_destination() -> None:
    hosts = (slot("host1"), slot("host2", record={"maintenance": True}), slot("host3"))
    plan = plan_evacuation(request(evacuee("a"), evacuee("b"), hosts=hosts))
    assert dests(plan) == {"a": "host3", "b": "host3"}


def test_anti_affinity_between_evacuees_splits_them() -> None:
    rule = Rule("apart", "anti-affinity", "must", frozenset({"a", "b"}))
    plan = plan_evacuation(request(evacuee("a"), evacuee("b"), rules=(rule,)))
    assert sorted(dests(plan).values()) == ["host2", "host3"]


def test_affinity_between_evacuees_keeps_them_together() -> None:
    rule = Rule("together", "affinity", "must", frozenset({"a", "b"}))
    plan = plan_evacuation(request(evacuee("a"), evacuee("b", 2048), rules=(rule,)))
    assert len(set(dests(plan).values())) == 1 and len(plan.moves) == 2


def test_a_partner_that_cannot_move_takes_back_its_affinity_mate() -> None:
    # b (heavier) moves first; a is pinned to host1 so it stays; b must stay with it
    rules = (Rule("together", "affinity", "must", frozenset({"a", "b"})),
             Rule("pin", "vm-host", "must", frozenset({"a"}), host_tag="one"))
    hosts = (slot("host1", tags=("one",)), slot("host2"), slot("host3"))
    plan = plan_evacuation(request(evacuee("a"), evacuee("b", 2048), rules=rules, hosts=hosts))
    assert plan.moves == ()
    assert blockers(plan) == {"a": "MUST_RULE", "b": "MUST_RULE"}
    assert "together" in next(b.message for b in plan.blocked if b.vm == "b")


def test_a_stopped_vm_is_rehomed_in_no_time_after_the_running_ones() -> None:
    plan = plan_evacuation(request(evacuee("s", 4096, running=False), evacuee("a")))
    assert [(m.vm, m.running, m.predicted_s) for m in plan.moves] == [
        ("a", True, 10.0), ("s", False, 0.0)]
    assert plan.predicted_s == 10.0


@pytest.mark.parametrize(("parallel", "total"), [(1, 60.0), (2, 30.0), (3, 30.0), (6, 30.0)])
def test_predicted_duration_under_max_parallel(parallel: int, total: float) -> None:
    # six 10 s moves; the host's outgoing limit (2) caps the parallel moves
    vms = [evacuee(f"v{i}", 256) for i in range(6)]
    plan = plan_evacuation(request(*vms, max_parallel=parallel))
    assert plan.predicted_s == total
    assert plan.parallel == min(parallel, 2)


@pytest.mark.parametrize(("moves", "parallel", "incoming", "expected"), [
    ([("h2", 10), ("h3", 5), ("h3", 5)], 2, 2, [(0, 10), (0, 5), (5, 10)]),
    ([("h2", 10), ("h2", 5), ("h3", 5)], 2, 1, [(0, 10), (10, 15), (10, 15)]),
    ([("h2", 10), ("h3", 10), ("h2", 1)], 1, 2, [(0, 10), (10, 20), (20, 21)]),
    ([], 2, 2, []),
])
def test_schedule_in_order_under_the_limits(moves: list[tuple[str, float]], parallel: int,
                                            incoming: int,
                                            expected: list[tuple[float, float]]) -> None:
    assert predict_schedule(moves, parallel, incoming) == expected


def test_the_same_request_gives_the_same_plan() -> None:
    make = lambda: request(evacuee("a", 512), evacuee("b", 512), evacuee("c", 512))  # noqa: E731
    assert plan_evacuation(make()) == plan_evacuation(make())


@pytest.mark.parametrize("field", ["max_parallel", "max_outgoing", "max_incoming"])
def test_a_limit_below_one_is_refused_naming_it(field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        plan_evacuation(request(evacuee("a"), **{field: 0}))
    assert err.value.code == "MAINTENANCE_INVALID" and field in str(err.value)
