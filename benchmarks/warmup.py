"""Where a migration's blackout goes, and whether the guest's warm-up can be shortened.

    python benchmarks/warmup.py [--moves 6] [--out DIR]

A fresh 2-host lab (unshaped migration link); one guest at a time (256 MiB, dirtying
8 MiB/s) moves host1 <-> host2 ``--moves`` times under the prober (every 1.5 ms) and the
kernel-timestamped sniffers (``segue.lab.guests.watch_migration``). Two guests: the lab's
default kernel command line, and the same with ``idle=poll`` (the guest's idle loop spins
instead of halting, so its vCPU never sleeps). Prints the median of each part of the
blackout (switchover, network path, guest answer, total) per guest and writes
``warmup.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from segue.image.builder import build_image
from segue.lab import guests
from segue.lab.topology import LabPlan

sys.path.insert(0, str(Path(__file__).parent))
from benchlab import fresh_lab

LAB = "warm"
VARIANTS = {"default": "", "idle=poll": " idle=poll"}
PARTS = ("switchover_ms", "network_path_ms", "guest_answer_ms", "blackout_ms")


def run_variant(plan: LabPlan, name: str, extra: str, moves: int) -> list[dict[str, Any]]:
    """Boot the guest, move it ``moves`` times, destroy it; each move's breakdown."""
    spec = guests.guest_spec(plan, name, build_image(), guests.GuestOptions(dirty_mbps=8))
    spec = guests.respec(spec, cmdline=spec.cmdline + extra)
    with guests.controller(plan) as c:
        c.run(c.client.create_vm("host1", spec, start=True))
    guests.wait_answering(plan, name, timeout=180)
    seen = []
    for i in range(moves):
        dest = "host2" if i % 2 == 0 else "host1"
        watched = guests.watch_migration(
            plan, name, functools.partial(guests.migrate_and_wait, plan, name, dest))
        assert watched.job.phase == "completed", watched.job.reason
        seen.append(watched.breakdown.to_dict())
        print(name, i, json.dumps(seen[-1]), flush=True)
    host, _ = guests.find_vm(plan, name)
    with guests.agent(host) as agent:
        agent.run(agent.client.destroy_vm(name))
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with fresh_lab(LAB) as plan:
        runs = {label: run_variant(plan, f"w{i}", extra, args.moves)
                for i, (label, extra) in enumerate(VARIANTS.items())}
    medians = {label: {part: statistics.median([r[part] for r in seen if r[part] is not None])
                       for part in PARTS} for label, seen in runs.items()}
    print(f"{'guest':<10}" + "".join(f"{p.removesuffix('_ms'):>16}" for p in PARTS))
    for label, row in medians.items():
        print(f"{label:<10}" + "".join(f"{row[p]:>14.1f}ms" for p in PARTS))
    (args.out / "warmup.json").write_text(json.dumps({"runs": runs, "medians": medians},
                                                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
