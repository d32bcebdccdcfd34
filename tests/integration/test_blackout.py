"""Where a migration's blackout goes, measured in a real 2-host lab: the prober in the client
namespace, sniffers on both hosts' VM bridges and on the fabric, QMP's STOP/RESUME."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator

import pytest

from segue.api.migration import MigrationJobView
from segue.image.builder import build_image
from segue.lab import guests, netns
from segue.lab.lab import lab_down, lab_up, load_state
from segue.lab.topology import LabPlan

pytestmark = pytest.mark.integration
LAB = "btest"
VM = "blk1"
TOLERANCE_MS = 5.0  # clocks: QMP stamps, kernel packet stamps and the prober's mapped clock
WARM_UP_MS = 200.0  # a TCG guest's first ~100 ms on its new host (README, blackout)


@pytest.fixture(scope="module")
def lab() -> Iterator[LabPlan]:
    lab_down(LAB)
    image = build_image()
    lab_up(LAB, 2)
    try:
        plan = load_state(LAB).plan
        spec = guests.guest_spec(plan, VM, image, guests.GuestOptions(dirty_mbps=8))
        with guests.controller(plan) as c:
            c.run(c.client.create_vm("host1", spec, start=True))
        guests.wait_answering(plan, VM, timeout=180)
        yield plan
    finally:
        lab_down(LAB)
    assert not netns.list_namespaces(f"{LAB}-")


def migrate(plan: LabPlan, dest: str) -> MigrationJobView:
    return guests.migrate_and_wait(plan, VM, dest, timeout=180)


def test_every_migration_has_an_ordered_breakdown(lab: LabPlan) -> None:
    for dest in ("host2", "host1"):
        watched = guests.watch_migration(lab, VM, functools.partial(migrate, lab, dest))
        measured = watched.breakdown.to_dict()
        print(f"{watched.job.source} -> {dest}: {json.dumps(measured)}")
        assert watched.job.phase == "completed", watched.job
        parts = {k: v for k, v in measured.items() if v is not None}
        assert parts.keys() == measured.keys(), (measured, watched.sniffs)
        assert watched.sniffs[dest]["clock"] == "kernel"
        for key in ("switchover_ms", "network_path_ms", "guest_answer_ms", "blackout_ms"):
            assert parts[key] >= 0, parts
        assert parts["switchover_ms"] <= parts["blackout_ms"] + TOLERANCE_MS, parts
        assert parts["rarp_after_resume_ms"] <= 20, parts  # announce-initial is 1 ms
        assert parts["rarp_fabric_after_resume_ms"] <= 20, parts
        assert parts["network_path_ms"] <= 20, parts
        assert parts["network_path_ms"] <= parts["guest_answer_ms"] + TOLERANCE_MS, parts
        # the gap is the migration's: it ended after RESUME, with or after the guest's first
        # answer, and began before RESUME or within WARM_UP_MS after it: with a ~10 ms
        # switchover, a stall of the guest warming up on its new host can outlast the
        # switchover's own gap (seen in CI: the longest gap began 21 ms after RESUME)
        assert parts["prober_answer_ms"] >= -TOLERANCE_MS, parts
        assert parts["prober_answer_ms"] >= parts["guest_answer_ms"] - TOLERANCE_MS, parts
        assert parts["lead_in_ms"] + parts["switchover_ms"] >= -WARM_UP_MS, parts
