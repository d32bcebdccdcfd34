"""What an idle guest's switchover costs with each migration capability on and off.

    python benchmarks/switchover.py [--reps 6] [--link-mbit 400] [--out DIR]

A fresh 2-host lab, the migration link shaped as in ``benchmarks/migration.py``; one idle
256 MiB guest (64 MiB of hot pages, not dirtied). Every variant is a fixed set of QEMU
capabilities and parameters, starting from what Segue's policy gives this guest (post-copy
allowed: ``postcopy-ram`` and ``postcopy-preempt`` on, a 20 ms downtime target, bandwidth not
capped) and changing one thing at a time. Each migration is Segue's own engine job
(``segue.engine.job``) driving both agents with a ``FixedPolicy``; the variants run
interleaved (every repetition runs every variant, shuffled, host1 -> host2 and back), so
they share the same guest, link and moment. Prints QEMU's downtime and the switchover
(source STOP -> destination RESUME, from the QMP events) per variant, median, p95 and
maximum, and writes ``switchover.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segue.api.agent import ParameterValue
from segue.api.migration import MigrationOptionsBody
from segue.domain.host import HostFacts
from segue.engine.phases import Phase
from segue.engine.policies import Plan
from segue.engine.policy import UNCAPPED_BANDWIDTH, Action, Settings
from segue.engine.progress import Progress
from segue.image.builder import build_image
from segue.lab import guests
from segue.lab.topology import LabPlan

sys.path.insert(0, str(Path(__file__).parent))
from benchlab import fresh_lab
from migration import shape_link
from moves import run_job
from stats import spread

LAB = "swbench"
VM = "sw1"
SEGUE_CAPS = {"events": True, "postcopy-ram": True, "postcopy-preempt": True,
              "auto-converge": False, "multifd": False, "xbzrle": False}
SEGUE_PARAMS: dict[str, ParameterValue] = {"downtime-limit": 20,
                                           "max-bandwidth": UNCAPPED_BANDWIDTH}


@dataclass(frozen=True)
class Variant:
    """One set of settings: Segue's for an idle guest with ``caps``/``params`` changed."""

    name: str
    caps: dict[str, bool] = field(default_factory=dict)
    params: dict[str, ParameterValue] = field(default_factory=dict)

    def settings(self) -> Settings:
        return Settings({**SEGUE_CAPS, **self.caps}, {**SEGUE_PARAMS, **self.params},
                        (f"switchover benchmark variant {self.name}",))


VARIANTS = [
    Variant("segue (postcopy-ram, preempt, 20 ms)"),
    Variant("no postcopy-preempt", {"postcopy-preempt": False}),
    Variant("no postcopy-ram", {"postcopy-ram": False, "postcopy-preempt": False}),
    Variant("segue, 100 ms target", params={"downtime-limit": 100}),
    Variant("segue, 300 ms target", params={"downtime-limit": 300}),
    Variant("no post-copy, 100 ms", {"postcopy-ram": False, "postcopy-preempt": False},
            {"downtime-limit": 100}),
    Variant("no post-copy, xbzrle", {"postcopy-ram": False, "postcopy-preempt": False,
                                     "xbzrle": True}),
]


class FixedPolicy:
    """A policy that sets one variant's settings up front and never changes them."""

    measures = False

    def __init__(self, variant: Variant) -> None:
        self.variant = variant

    @property
    def name(self) -> str:
        return self.variant.name

    @property
    def downtime_ms(self) -> int:
        return int(self.variant.settings().parameters["downtime-limit"])

    def choose_streams(self, source: HostFacts, dest: HostFacts) -> str:
        return f"fixed settings: {self.variant.name}"

    def plan(self, memory: int, link_bps: float | None, dirty_bps: float | None,
             source: HostFacts) -> Plan:
        return Plan({"variant": self.variant.name}, ())

    def settings(self) -> Settings:
        return self.variant.settings()

    def decide(self, progress: Progress, elapsed_s: float) -> list[Action]:
        return []

    def request_postcopy(self, reason: str) -> None:
        return None


def one_move(plan: LabPlan, variant: Variant, src: str, dest: str) -> dict[str, Any]:
    """One migration of the guest by Segue's job with the variant's settings."""
    options = MigrationOptionsBody(deadline_s=60, allow_postcopy=False)
    store = asyncio.run(run_job(plan, FixedPolicy(variant), VM, src, dest, options))
    s = store.summary
    return {"variant": variant.name, "from": src, "to": dest,
            "completed": store.phase == Phase.COMPLETED, "reason": store.reason,
            "qemu_downtime_ms": s.get("qemu_downtime_ms"), "switchover_ms": s.get("switchover_ms"),
            "copy_ms": s.get("qemu_total_ms"), "iterations": s.get("iterations")}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for variant in VARIANTS:
        done = [r for r in runs if r["variant"] == variant.name and r["completed"]]
        row: dict[str, Any] = {"variant": variant.name, "n": len(done),
                               "of": sum(r["variant"] == variant.name for r in runs)}
        for key in ("qemu_downtime_ms", "switchover_ms", "copy_ms"):
            values = [float(r[key]) for r in done if r.get(key) is not None]
            row[key] = spread(values) if values else None
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'variant':38} {'runs':>5}  {'QEMU downtime ms (median/p95/max)':>34}  "
          f"{'switchover ms (median/p95/max)':>31}")
    for row in rows:
        cells = []
        for key in ("qemu_downtime_ms", "switchover_ms"):
            v = row[key]
            cells.append(f"{v['median']:.1f} / {v['p95']:.1f} / {v['max']:.1f}" if v else "-")
        print(f"{row['variant']:38} {row['n']:>2}/{row['of']:<2}  {cells[0]:>34}  "
              f"{cells[1]:>31}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--link-mbit", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with fresh_lab(LAB) as plan:
        shape_link(plan, args.link_mbit)
        spec = guests.guest_spec(plan, VM, build_image(),
                                 guests.GuestOptions(memory_mib=256, hot_mib=64, dirty_mbps=0))
        with guests.controller(plan) as client:
            client.run(client.client.create_vm("host1", spec, start=True))
        guests.wait_answering(plan, VM)
        runs = []
        for rep in range(args.reps):
            for variant in random.sample(VARIANTS, len(VARIANTS)):
                for src, dest in (("host1", "host2"), ("host2", "host1")):
                    run = {**one_move(plan, variant, src, dest), "rep": rep}
                    runs.append(run)
                    print(json.dumps(run), flush=True)
                    if not run["completed"]:
                        raise SystemExit(f"{variant.name} {src} -> {dest} failed: "
                                         f"{run['reason']}")
        rows = summarize(runs)
        print_table(rows)
        (args.out / "switchover.json").write_text(json.dumps(
            {"link_mbit": args.link_mbit, "runs": runs, "summary": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
