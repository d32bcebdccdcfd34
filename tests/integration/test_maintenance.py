"""Maintenance mode for real: a 3-host lab, four guests on host1 (two dirtying memory, two
bound by a must anti-affinity rule) and a fifth defined there but stopped.

1. ``segue host maintenance enter host1 --max-parallel 2`` ends with host1 ``in-maintenance``
   and every guest on host2 or host3 with its memory verified and its boot unchanged, the
   anti-affinity pair apart, and never more than two of the migrations running at once (from
   the controller's own record of when each held its slot); a move to host1 is refused with
   ``HOST_IN_MAINTENANCE``. The stopped guest is re-homed (no migration) and starts on its
   new host, but no longer on host1. ``exit --return`` brings three running guests and the
   stopped one back and exits non-zero naming the fourth, which the anti-affinity rule keeps
   from joining its pair on host1.
2. With a must rule tying one guest to host1, the evacuation (one at a time, on a slowed
   link) loses its controller to SIGKILL during its first copy: the restarted controller
   carries on (a move that failed, as the copy it found unwatched and rolled back, is
   requested once more, never while another of that guest's jobs runs), every other guest
   of host1 ends moved by exactly one completed job, the bound one stays running on host1,
   and ``enter`` exits non-zero naming it.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import lab_cli
import pytest

from segue.image.builder import build_image
from segue.lab import guests, netns
from segue.lab.lab import lab_down, lab_up, load_state, start_controller, stop_controller
from segue.lab.topology import LabPlan

pytestmark = pytest.mark.integration
LAB = "maint"
VMS = ("m1", "m2", "m3", "m4")  # m1, m2 dirty memory; m3, m4 must run apart
STOPPED = "m5"  # defined on host1, never started there


def segue(*args: str) -> str:
    return lab_cli.run(LAB, *args).stdout


@pytest.fixture(scope="module")
def lab() -> Iterator[LabPlan]:
    lab_down(LAB)
    build_image()
    lab_up(LAB, 3, controller_settings={"max_outgoing_per_host": 4,
                                        "max_incoming_per_host": 4})
    try:
        plan = load_state(LAB).plan
        for name in VMS:
            dirty = ("--dirty-mbps", "2", "--hot-mib", "16") if name in ("m1", "m2") else ()
            segue("lab", "vm", "create", name, "--host", "host1", "--memory", "128", *dirty,
                  "--name", LAB)
        segue("lab", "vm", "create", STOPPED, "--host", "host1", "--memory", "128",
              "--no-start", "--name", LAB)
        for name in VMS:
            guests.wait_answering(plan, name, timeout=240)
        segue("rule", "create", "apart", "anti-affinity", "--vm", "m3", "--vm", "m4")
        yield plan
    finally:
        lab_down(LAB)
    assert not netns.list_namespaces(f"{LAB}-")


def where(plan: LabPlan) -> dict[str, str]:
    return {name: guests.find_vm(plan, name)[0].name for name in VMS}


def jobs_since(start: datetime) -> list[dict[str, Any]]:
    """Every migration job created since ``start``, with its transitions."""
    listed = json.loads(segue("migration", "list", "--json"))
    return [json.loads(segue("migration", "show", j["id"], "--json")) for j in listed
            if datetime.fromisoformat(j["created_at"]) >= start]


def most_at_once(jobs: list[dict[str, Any]]) -> int:
    """The most jobs that held a slot at one time (from entering ``check`` to the end)."""
    edges = []
    for job in jobs:
        start, end = lab_cli.held_slots(job)
        edges += [(start, 1), (end, -1)]
    edges.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    return max(itertools.accumulate(d for _, d in edges), default=0)


def vm_record(name: str) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(segue("vm", "show", name, "--json"))
    return answer


def maintenance(host: str = "host1") -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(segue("host", "maintenance", "status", host, "--json"))
    return answer


def controller_time() -> datetime:
    """Now, by the clock the controller stamps jobs with (the same machine's)."""
    return datetime.now().astimezone()


def test_enter_evacuates_two_at_a_time_and_exit_return_brings_them_back(
        lab: LabPlan) -> None:
    boots = {name: lab_cli.boot_of(lab, name) for name in VMS}
    start = controller_time()
    out = segue("host", "maintenance", "enter", "host1", "--max-parallel", "2")
    assert "host1 is in-maintenance" in out, out
    assert maintenance()["state"] == "in-maintenance"
    placed = where(lab)
    assert all(h in ("host2", "host3") for h in placed.values()), placed
    assert placed["m3"] != placed["m4"], f"the anti-affinity pair shares a host: {placed}"
    jobs = jobs_since(start)
    assert sorted(j["vm"] for j in jobs) == sorted(VMS), jobs  # one move each
    assert all(j["phase"] == "completed" for j in jobs), [j["reason"] for j in jobs]
    assert most_at_once(jobs) == 2, "the evacuation ran more (or fewer) than 2 at once"
    assert {name: lab_cli.boot_of(lab, name) for name in VMS} == boots, "a guest rebooted"

    refused = lab_cli.run(LAB, "vm", "migrate", "m1", "--to", "host1", check=False)
    assert refused.returncode != 0 and "HOST_IN_MAINTENANCE" in refused.stdout + refused.stderr

    rehomed = vm_record(STOPPED)
    assert rehomed["host"] in ("host2", "host3") and rehomed["state"] == "stopped", rehomed
    with guests.agent(lab.host("host1")) as old:
        assert STOPPED not in [v.name for v in old.run(old.client.list_vms())]
    segue("vm", "start", STOPPED)
    started = vm_record(STOPPED)
    assert started["host"] == rehomed["host"] and started["state"] == "running", started
    segue("vm", "stop", STOPPED, "--force")

    back = lab_cli.run(LAB, "host", "maintenance", "exit", "host1", "--return", check=False)
    said = back.stdout + back.stderr
    assert back.returncode == 1 and "not every VM came back to host1" in said, said
    status = maintenance()
    assert status["state"] == "normal" and status["kind"] == "return", status
    (kept,) = [v for v in status["vms"] if v["phase"] == "blocked"]
    assert kept["vm"] in ("m3", "m4") and kept["blocker"] == "RULE_VIOLATION", kept
    assert f"{kept['vm']}: RULE_VIOLATION" in said and "apart" in said
    now = where(lab)
    assert now[kept["vm"]] == placed[kept["vm"]], "the blocked guest moved"
    assert all(h == "host1" for vm, h in now.items() if vm != kept["vm"]), now
    back = vm_record(STOPPED)
    assert back["host"] == "host1" and back["state"] == "stopped", back
    assert {name: lab_cli.boot_of(lab, name) for name in VMS} == boots, "a guest rebooted"


def test_a_must_rule_blocks_one_guest_and_a_killed_controller_resumes_the_rest(
        lab: LabPlan) -> None:
    segue("host", "tag", "host1", "home")
    segue("rule", "create", "stay", "vm-host", "--vm", "m1", "--host-tag", "home")
    boots = {name: lab_cli.boot_of(lab, name) for name in VMS}
    movable = sorted(vm for vm, h in where(lab).items() if h == "host1" and vm != "m1")
    assert len(movable) == 2, movable  # m2 and one of the pair (the first test's end)
    start = controller_time()
    guests.shape_migration_link(lab, "host1", 100)  # each copy a few seconds long
    try:
        answer = json.loads(segue("host", "maintenance", "enter", "host1", "--max-parallel",
                                  "1", "--no-wait", "--json"))
        assert answer["state"] == "entering-maintenance", answer
        deadline = time.monotonic() + 120
        while not any(v["phase"] == "migrating" for v in maintenance()["vms"]):
            assert time.monotonic() < deadline, "no move started"
            time.sleep(0.3)
        stop_controller(LAB, crash=True)
        start_controller(LAB)
        deadline = time.monotonic() + 600
        while (status := maintenance())["evacuation"] == "running":
            assert time.monotonic() < deadline, f"the evacuation never ended: {status}"
            time.sleep(1)
    finally:
        guests.shape_migration_link(lab, "host1", None)
    assert status["evacuation"] == "stuck" and status["state"] == "entering-maintenance"
    assert "m1: MUST_RULE" in status["reason"], status
    jobs = jobs_since(start)
    done = sorted(j["vm"] for j in jobs if j["phase"] == "completed")
    assert done == movable, [(j["vm"], j["phase"], j["reason"]) for j in jobs]  # m1 never
    assert all(j["phase"] == "failed" for j in jobs if j["phase"] != "completed"), jobs
    assert all(sum(j["vm"] == vm for j in jobs) <= 2 for vm in movable), jobs  # once more
    assert most_at_once(jobs) == 1  # one at a time: never two jobs of a guest at once
    placed = where(lab)
    assert placed["m1"] == "host1" and placed["m3"] != placed["m4"], placed
    assert {name: lab_cli.boot_of(lab, name) for name in VMS} == boots, "a guest rebooted"

    again = lab_cli.run(LAB, "host", "maintenance", "enter", "host1", check=False)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "m1: MUST_RULE" in again.stdout + again.stderr
    assert where(lab)["m1"] == "host1"
