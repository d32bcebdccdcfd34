"""Per-host migration limits for real: a 2-host lab whose controller lets one migration out of
a host at a time; three guests asked to move at once run one after the other, in request
order, and each arrives with its memory verified and its boot unchanged; a fourth, cancelled
while queued, stays where it was."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import lab_cli
import pytest

from segue.image.builder import build_image
from segue.lab import guests, netns
from segue.lab.lab import lab_down, lab_up, load_state
from segue.lab.topology import LabPlan

pytestmark = pytest.mark.integration
LAB = "qtest"
VMS = ("q1", "q2", "q3")


def segue(*args: str) -> str:
    return lab_cli.run(LAB, *args).stdout


@pytest.fixture(scope="module")
def lab() -> Iterator[LabPlan]:
    lab_down(LAB)
    build_image()
    lab_up(LAB, 2, controller_settings={"max_outgoing_per_host": 1})
    try:
        yield load_state(LAB).plan
    finally:
        lab_down(LAB)
    assert not netns.list_namespaces(f"{LAB}-")


def wait_ended(job_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = json.loads(segue("migration", "show", job_id, "--json"))
        if job["phase"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"migration {job_id} did not end")


def test_three_migrations_from_one_host_run_one_at_a_time_in_order(lab: LabPlan) -> None:
    """q1..q3 (dirtying memory) queue behind host1's limit of one and run in request order;
    a fourth request, cancelled while queued, ends at once and its guest never moves."""
    names = (*VMS, "q4")
    for name in names:
        segue("lab", "vm", "create", name, "--host", "host1", "--memory", "128",
              "--dirty-mbps", "2", "--hot-mib", "16", "--name", LAB)
    for name in names:
        guests.wait_answering(lab, name, timeout=240)
    boots = {name: lab_cli.boot_of(lab, name) for name in names}
    assert len(set(boots.values())) == len(names), boots  # four distinct guests answer

    # a slow migration network (64 Mbit/s), so the requests overlap in time
    guests.shape_migration_link(lab, "host1", 64)
    try:
        accepted = [json.loads(segue("vm", "migrate", name, "--to", "host2", "--no-wait",
                                     "--json", "--no-postcopy")) for name in names]
        assert [j["phase"] == "queued" for j in accepted][1:] == [True] * 3, accepted
        listing = segue("migration", "list")
        assert "queued (1)" in listing or "queued (2)" in listing, listing
        cancelled = json.loads(segue("migration", "cancel", accepted[3]["id"], "--json"))
        assert cancelled["phase"] == "cancelled", cancelled  # at once: nothing had started
        jobs = [wait_ended(j["id"]) for j in accepted[:3]]
    finally:
        guests.shape_migration_link(lab, "host1", None)
    assert [j["phase"] for j in jobs] == ["completed"] * 3, [j.get("reason") for j in jobs]
    spans = [lab_cli.held_slots(j) for j in jobs]
    assert [s for s, _ in spans] == sorted(s for s, _ in spans), "not started in request order"
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two migrations out of host1 overlapped: {spans}"
    assert {name: guests.find_vm(lab, name)[0].name for name in names} == {
        **dict.fromkeys(VMS, "host2"), "q4": "host1"}
    assert [t["to"] for t in wait_ended(accepted[3]["id"])["transitions"]] == [
        "queued", "cancelled"]
    with guests.agent(lab.host("host2")) as agent:
        assert "q4" not in [v.name for v in agent.run(agent.client.list_vms())]
    assert {name: lab_cli.boot_of(lab, name) for name in names} == boots, "a guest rebooted"
