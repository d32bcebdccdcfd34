"""The migration policy for real: a 2-host lab (``ptest``), a TCG guest dirtying memory
faster than a capped migration link, and a post-copy whose migration link drops for 2 s.

The guest's checker verifies its memory after every move (boot id unchanged, VERIFY ok);
every decision the policy took is in the job's transitions, with its reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
LAB = "ptest"
VM = "hot1"


def segue(*args: str, timeout: float = 600) -> dict[str, Any]:
    proc = lab_cli.run(LAB, *args, check=False, timeout=timeout)
    assert proc.stdout.strip(), proc.stderr
    answer: dict[str, Any] = json.loads(proc.stdout) if proc.stdout.startswith("{") else {}
    return answer


@pytest.fixture(scope="module")
def lab() -> Iterator[LabPlan]:
    lab_down(LAB)
    build_image()
    lab_up(LAB, 2)
    try:
        plan = load_state(LAB).plan
        env = {**os.environ, "SEGUE_URL": f"unix:{plan.controller.socket}"}
        subprocess.run([sys.executable, "-m", "segue", "lab", "vm", "create", VM, "--host",
                        "host1", "--dirty-mbps", "40", "--hot-mib", "64", "--name", LAB],
                       check=True, capture_output=True, timeout=300, env=env)
        guests.wait_answering(plan, VM, timeout=180)
        yield plan
    finally:
        lab_down(LAB)
    assert not netns.list_namespaces(f"{LAB}-")


fields = lab_cli.verify_fields


def other_host(plan: LabPlan) -> tuple[str, str]:
    src = guests.find_vm(plan, VM)[0].name
    return src, "host2" if src == "host1" else "host1"


def decisions(job: dict[str, Any]) -> list[str]:
    return [t["message"] for t in job["transitions"] if t["message"].startswith("policy:")]


def report(plan: LabPlan, job: dict[str, Any]) -> None:
    """Print what happened (read with ``pytest -s``): the job, QEMU's statuses, the serial."""
    with guests.controller(plan) as c:
        samples = c.run(c.client.migration_samples(job["id"]))
    statuses = [s.status for s in samples]
    print(json.dumps({"phase": job["phase"], "summary": job["summary"],
                      "statuses": sorted(set(statuses), key=statuses.index),
                      "transitions": [f"{t['to']}: {t['message']}"
                                      for t in job["transitions"]]}, indent=1))
    host, _ = guests.find_vm(plan, VM)
    with guests.agent(host) as agent:
        print("\n".join(agent.run(agent.client.serial(VM, 30))))


def wait_job(job_id: str, until: tuple[str, ...], timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = segue("migration", "show", job_id, "--json")
        if job["phase"] in until or job["phase"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"migration {job_id} did not reach {until}")


def test_guest_dirtying_faster_than_the_link_converges(lab: LabPlan) -> None:
    boot = fields(guests.verify_vm(lab, VM))["boot"]
    _, dest = other_host(lab)
    job = segue("vm", "migrate", VM, "--to", dest, "--json", "--max-bandwidth", "16")
    job = segue("migration", "show", job["id"], "--json")
    report(lab, job)
    assert job["phase"] == "completed", job
    verdict = fields(guests.verify_vm(lab, VM))
    assert verdict["boot"] == boot and verdict["result"] == "ok", verdict
    summary = job["summary"]
    assert summary["predicted_total_s"] > 0 and summary["actual_total_s"] > 0
    assert summary["predicted_converges"] is False, summary  # 40 MiB/s dirty over 16 MiB/s
    assert decisions(job), "the policy escalated and said why"
    assert summary["postcopy"] is True


def postcopy_with_link_drop(plan: LabPlan, seconds: float, settle_s: float = 600
                            ) -> dict[str, Any]:
    """Migrate the guest away, switch to post-copy at once (``segue migration postcopy``,
    so most of the memory is still to come), drop the destination's migration link for
    ``seconds`` once post-copy runs; the finished job (memory verified, the VM on its
    destination), which must end within ``settle_s`` of the link's return."""
    boot = fields(guests.verify_vm(plan, VM))["boot"]
    _, dest = other_host(plan)
    job = segue("vm", "migrate", VM, "--to", dest, "--json", "--no-wait",
                "--max-bandwidth", "16")
    wait_job(job["id"], ("monitor",))
    asked = segue("migration", "postcopy", job["id"], "--json")
    assert asked["phase"] in ("monitor", "postcopy"), asked
    job = wait_job(job["id"], ("postcopy",))
    assert job["phase"] == "postcopy", job
    ns = plan.host(dest).netns
    netns.run_in_netns(ns, ["ip", "link", "set", "mig0", "down"])
    try:
        time.sleep(seconds)
    finally:
        netns.run_in_netns(ns, ["ip", "link", "set", "mig0", "up"])
    job = wait_job(job["id"], (), timeout=settle_s)
    report(plan, job)
    assert job["phase"] == "completed", job
    assert guests.find_vm(plan, VM)[0].name == dest
    verdict = fields(guests.verify_vm(plan, VM))
    assert verdict["boot"] == boot and verdict["result"] == "ok", verdict
    return job


def test_postcopy_survives_a_two_second_link_drop(lab: LabPlan) -> None:
    postcopy_with_link_drop(lab, 2.0)  # TCP retransmits: the stream may just resume


@pytest.mark.xfail(strict=False, reason=(
    "KNOWN BUG, quarantined loudly: in about 1 run of 3 on these machines the destination's "
    "migrate-recover (out of band) times out again and again after a 9 s link drop and the "
    "post-copy never recovers (seen before and after the engine split; README, Known limits)"))
def test_postcopy_hung_by_a_long_drop_is_paused_and_recovered(lab: LabPlan) -> None:
    # longer than the job's post-copy stall limit; a recovery that works ends well within
    # 2 minutes, and the job's own 600 s limit would cost the test budget when it does not
    job = postcopy_with_link_drop(lab, 9.0, settle_s=120)
    messages = [t["message"] for t in job["transitions"]]
    assert any("migrate-pause on both sides" in m for m in messages), messages
    assert any(m.startswith("recover: destination listens on tcp:") for m in messages)
    assert "recover: source resumed the post-copy" in messages
