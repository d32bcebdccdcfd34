"""Fault loops: the fault matrix's scenarios repeated many times, with a summary table.

    python benchmarks/faults.py [--reps 50] [--scenarios power-loss,dest-agent-switchover]

Each repetition creates a fresh guest (dirtying memory, a journal on its disk) on a fresh
2-host lab's host1, migrates it to host2 over an 80 Mbit/s link (post-copy off) and breaks
the migration as the scenario says, under the fault matrix's sampler (two running instances
never allowed); then checks the other invariants where the VM is meant to run
(``segue.lab.faults``). Scenarios:

- ``dest-agent-switchover``: the destination's agent is killed during the copy and comes back
  15 s after the job reached its switchover; the VM must end on exactly one host, verified,
  the controller agreeing, nothing left behind.
- ``power-loss``: the destination host loses power (every process killed, links down) right
  after the job reached ``finalize`` or ended; the VM must never run twice, and the source's
  older copy never run; the host is powered on again for the next repetition.

Prints one table (runs, invariants held, outcomes, settle time median / p95 / max) and writes
``benchmarks/results/faults.json``. Needs root (namespaces); makes its own lab ``fbench``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from segue.image.builder import build_image
from segue.lab import guests
from segue.lab.faults import (
    InvariantBroken,
    Sampler,
    check_invariants,
    guest_ip,
    job_of,
    kill_agent,
    power_off,
    power_on,
    start_move,
    verify_fields,
    wait_copying,
    wait_job,
)
from segue.lab.lab import lab_down, lab_up, load_state, start_agent
from segue.lab.topology import LabPlan

sys.path.insert(0, str(Path(__file__).parent))
from stats import spread

LAB = "fbench"
LINK_MBIT = 80
RESULTS = Path(__file__).parent / "results"


def segue(*args: str) -> str:
    env = {**os.environ, "SEGUE_URL": f"unix:{load_state(LAB).plan.controller.socket}"}
    proc = subprocess.run([sys.executable, "-m", "segue", *args], capture_output=True,
                          text=True, timeout=300, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"segue {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def fresh_guest(plan: LabPlan, name: str) -> tuple[str, str]:
    """A new guest on host1 (uuid, boot id)."""
    segue("lab", "vm", "create", name, "--host", "host1", "--dirty-mbps", "16",
          "--hot-mib", "32", "--disk-mib", "64", "--name", LAB)
    guests.wait_answering(plan, name, timeout=180)
    with guests.controller(plan) as c:
        uuid = c.run(c.client.get_vm(name)).uuid
    return uuid, verify_fields(guests.verify_ip(plan, guest_ip(plan, name)))["boot"]


def wait_phase(plan: LabPlan, job_id: str, phases: tuple[str, ...]) -> None:
    deadline = time.monotonic() + 180
    while job_of(plan, job_id).phase not in phases:
        if time.monotonic() > deadline:
            raise InvariantBroken(f"job {job_id} never reached {phases}")
        time.sleep(0.02)


def dest_agent_switchover(plan: LabPlan, name: str, uuid: str, boot: str) -> dict[str, Any]:
    sampler = Sampler(plan, name, uuid, "host2")
    try:
        job_id = start_move(plan, name, "host2")
        wait_copying(plan, job_id)
        kill_agent(LAB, "host2")
        wait_phase(plan, job_id, ("switchover", "completed", "failed"))
        time.sleep(15.0)
        start_agent(LAB, "host2")
        back = time.monotonic()
        job = wait_job(plan, job_id)
        owner = check_invariants(plan, name, uuid, boot)
        settled = time.monotonic() - back
    finally:
        violations = sampler.finish()
    return {"outcome": f"{job.phase} {job.error_code or ''}".strip(), "runs_on": owner,
            "settled_s": round(settled, 2), "two_running": violations}


def power_loss(plan: LabPlan, name: str, uuid: str, boot: str) -> dict[str, Any]:
    sampler = Sampler(plan, name, uuid, "host2")
    try:
        job_id = start_move(plan, name, "host2")
        wait_phase(plan, job_id, ("finalize", "completed", "failed"))
        power_off(plan, "host2")
        job = wait_job(plan, job_id)
        time.sleep(3.0)
        with guests.agent(plan.host("host1")) as agent:
            stale = [v.name for v in agent.run(agent.client.list_vms())
                     if v.name == name and v.state == "running"]
    finally:
        violations = sampler.finish()
        power_on(plan, "host2")
    if stale and job.phase == "completed":
        violations.append("the source's older copy ran after the destination had run it")
    return {"outcome": f"{job.phase} {job.error_code or ''}".strip(),
            "runs_on": "host1" if stale else "nowhere", "settled_s": None,
            "two_running": violations}


SCENARIOS = {"dest-agent-switchover": dest_agent_switchover, "power-loss": power_loss}


def summarize(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'scenario':24} {'runs':>4} {'held':>4}  outcomes (runs on)"
             f"{'':30} settle s median / p95 / max"]
    for scenario in SCENARIOS:
        mine = [r for r in rows if r["scenario"] == scenario]
        if not mine:
            continue
        held = sum(1 for r in mine if r.get("held"))
        outcomes = Counter(f"{r.get('outcome')} ({r.get('runs_on')})" for r in mine)
        settle = [r["settled_s"] for r in mine if r.get("settled_s") is not None]
        stats = spread(settle) if settle else None
        times = (f"{stats['median']:.1f} / {stats['p95']:.1f} / {stats['max']:.1f}"
                 if stats else "-")
        text = "; ".join(f"{n}x {o}" for o, n in outcomes.most_common())
        lines.append(f"{scenario:24} {len(mine):4} {held:4}  {text:48} {times}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    wanted = [s for s in args.scenarios.split(",") if s]
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}: use {', '.join(SCENARIOS)}")
    build_image()
    lab_down(LAB)
    lab_up(LAB, 2)
    rows: list[dict[str, Any]] = []
    try:
        plan = load_state(LAB).plan
        for host in ("host1", "host2"):
            guests.shape_migration_link(plan, host, LINK_MBIT)
        for rep in range(args.reps):
            for scenario in wanted:
                name = f"fb{rep}{scenario[:2]}"
                row: dict[str, Any] = {"scenario": scenario, "rep": rep}
                try:
                    uuid, boot = fresh_guest(plan, name)
                    row.update(SCENARIOS[scenario](plan, name, uuid, boot))
                    row["held"] = not row["two_running"]
                except InvariantBroken as err:
                    row.update(held=False, broken=str(err))
                rows.append(row)
                print(json.dumps(row), flush=True)
                segue("vm", "destroy", name)
    finally:
        lab_down(LAB)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "faults.json").write_text(json.dumps({"reps": args.reps, "runs": rows},
                                                        indent=1) + "\n")
        print(summarize(rows))
    return 0 if all(r.get("held") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
