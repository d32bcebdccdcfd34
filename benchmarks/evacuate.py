"""Evacuation benchmark: a host emptied by Segue's maintenance mode and by the peers'
strategies, in the same lab, interleaved.

    python benchmarks/evacuate.py [--reps 1] [--link-mbit 400] [--guests 6] [--out DIR]
                                  [--strategies segue,one-at-a-time,...] [--probe-ms 5]
    python benchmarks/evacuate.py --summarize benchmarks/results/evacuate.json

A fresh 3-host lab (its controller lets 8 migrations out of and into a host at once, so that
only each strategy's own parallelism limits it); host1's migration link is shaped to
``--link-mbit`` (tc tbf on its egress, ``guests.shape_migration_link``) and measured with a
TCP stream to host2. Six guests of 128 MiB run on host1, named g1..g6 in an order that does
not follow their load (``MIX``):

- idle (g2, g5): 16 MiB of hot pages, not written;
- light (g1, g4): 24 MiB hot, rewritten at 10 % of the measured bandwidth (~4.6 MiB/s on
  400 Mbit/s), below its share of the link however many moves share it here;
- heavy (g3, g6): 32 MiB hot, rewritten at 40 % (~18.5 MiB/s): alone it is well below the
  link; on a link shared by two its share (~23 MiB/s) barely outruns its dirtying, shared by
  three or more it does not, and only its small hot set (what a pass must send again at
  most) lets pre-copy converge; the migration policy may go to post-copy instead.

(The hot sets are small because the guest checker's VERIFY, a scan of them, must answer
within the prober's 5 s on a loaded 2-core machine.)

The mix is there to make parallelism cost something: moves at once share the one link out
of the host, so each is slower and a dirtying guest needs more passes, or post-copy, whose
blackout is its page faults over the share of the link it gets.

Every strategy moves the same guests through Segue's own migration jobs (the controller's,
Segue's migration policy, TLS, default options), so that only the scheduling differs:

- ``segue``: ``segue host maintenance enter host1`` with its defaults (the pre-flight plan:
  its destinations, its order, 2 moves at once); the plan's ``predicted_s`` is the ETA;
- ``one-at-a-time`` (Proxmox's HA maintenance mode migrates a node's guests one by one),
  ``2-parallel`` (KubeVirt's default of 2 outbound migrations per node), ``4-parallel``
  (vSphere's limit of 4 concurrent vMotions per host on 1 GbE), ``all-at-once`` (Proxmox's
  ``migrateall`` without ``--maxworkers``): a scheduler here with that many workers, each
  requesting the next guest in name order (``POST /vms/{vm}/migrations``, what
  ``segue vm migrate VM --to DEST`` sends) and waiting for its job to end; destinations
  round-robin over host2 and host3 in name order. A peer's manager picks its own order and
  destinations; name order and round-robin are the simplest faithful stand-ins (they ignore
  the load, as the peers' do), and they are not Segue's plan.

Per run: the total evacuation time, from the first request (for ``segue``: the ``enter``
call, pre-flight included) to the last job's ``finished_at``; each guest's blackout, the
longest gap its prober saw over the whole evacuation (one prober per guest, all six at once,
every ``--probe-ms`` ms: 5 by default rather than the 1.5 ms of the other benchmarks, so six
probers leave CPU to the six TCG guests on a 2-core machine; a gap is measured to within the
interval); their median and worst; QEMU's own downtime from each job's summary beside it;
the moves that failed or were refused; for ``segue`` the ETA against the actual time
(``(predicted - actual) / actual``), and what the same model would answer for the same
plan with the measured bandwidth (``eta_at_measured_link``): the lab's agents report their
veth's nominal speed (10 Gbit/s), which the tc shaping does not change. After the
evacuation each guest's dirtying is stopped and its memory verified (same boot id, VERIFY
ok): a guest that fails counts as a failure (a dead one is replaced). Then the guests are
moved back to host1, unmeasured (``segue``: ``maintenance exit host1 --return``; the
others: two at a time).

Runs are interleaved: every repetition runs every strategy, in a shuffled order. Writes
``evacuate.json`` to ``--out``; prints the table (per strategy: total time median / worst
over the repetitions, blackout median and worst over every guest of every repetition, ETA
error, failures) and each guest's blackout per strategy. ``--summarize`` prints them again
from a file, without a lab.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from segue.api.migration import MigrationJobView, MigrationRequestBody
from segue.clients.controller import ControllerClient
from segue.controller.maintenance import predicted_move_s
from segue.domain.errors import SegueError
from segue.engine.phases import TERMINAL, Phase
from segue.image.builder import build_image
from segue.lab import guests
from segue.lab.topology import LabPlan
from segue.placement.evacuation import predict_schedule

sys.path.insert(0, str(Path(__file__).parent))
from benchlab import fresh_lab
from migration import measure_bandwidth, replace_guest, set_dirty_rate
from moves import controller_url
from report import fmt
from stats import relative_error, run_result, spread

LAB = "evb"
SOURCE = "host1"
DESTS = ("host2", "host3")
GUEST_MEMORY_MIB = 128
LIMITS = {"max_outgoing_per_host": 8, "max_incoming_per_host": 8}
SETTLE_S = 1.0  # let the guests' dirtying settle before the evacuation
POLL_S = 0.25
VERIFY_WAIT_S = 120.0
WAIT_S = 900.0  # an evacuation (or a return) not over by then is a failed run


@dataclass(frozen=True)
class Load:
    """A guest's workload: its hot set (fixed at boot) and its dirty rate as a share of the
    measured bandwidth."""

    kind: str
    hot_mib: int
    dirty_share: float

    def dirty_mibs(self, bandwidth: float) -> int:
        return int(self.dirty_share * bandwidth / 2**20)


IDLE, LIGHT, HEAVY = Load("idle", 16, 0.0), Load("light", 24, 0.10), Load("heavy", 32, 0.40)
MIX: dict[str, Load] = {"g1": LIGHT, "g2": IDLE, "g3": HEAVY,
                        "g4": LIGHT, "g5": IDLE, "g6": HEAVY}

# strategy -> moves at once (None: Segue's maintenance mode; 0: all at once)
STRATEGIES: dict[str, int | None] = {"segue": None, "one-at-a-time": 1, "2-parallel": 2,
                                     "4-parallel": 4, "all-at-once": 0}


# ---- moving the guests ----

async def wait_job(client: ControllerClient, job_id: str, timeout: float = WAIT_S
                   ) -> MigrationJobView:
    """The job once it has ended (with its transitions); TimeoutError after ``timeout``."""
    async with asyncio.timeout(timeout):
        while True:
            job = await client.get_migration(job_id)
            if Phase(job.phase) in TERMINAL:
                return job
            await asyncio.sleep(POLL_S)


async def scheduled(client: ControllerClient, vms: Sequence[str], workers: int,
                    dest_of: Callable[[int, str], str]
                    ) -> dict[str, MigrationJobView | str]:
    """Move ``vms`` with ``workers`` moves at once (0: all), each worker taking the next in
    the given order and waiting for its job to end; per VM its ended job, or the refusal's
    ``CODE: message``."""
    pending = list(enumerate(vms))
    out: dict[str, MigrationJobView | str] = {}

    async def worker() -> None:
        while pending:
            i, vm = pending.pop(0)
            body = MigrationRequestBody.model_validate({"to": dest_of(i, vm)})
            try:
                job = await client.request_migration(vm, body)
            except SegueError as err:
                out[vm] = f"{err.code}: {err.message}"
                continue
            out[vm] = await wait_job(client, job.id)

    async with asyncio.TaskGroup() as group:
        for _ in range(workers or len(vms)):
            group.create_task(worker())
    return out


async def peer_evacuation(plan: LabPlan, vms: Sequence[str], workers: int
                          ) -> dict[str, Any]:
    """A peer's evacuation of host1: name order, round-robin destinations."""
    client = ControllerClient(controller_url(plan))
    try:
        started = datetime.now(UTC)
        jobs = await scheduled(client, sorted(vms), workers,
                               lambda i, _vm: DESTS[i % len(DESTS)])
    finally:
        await client.aclose()
    return {"started": started, "jobs": jobs, "predicted_s": None}


async def segue_evacuation(plan: LabPlan) -> dict[str, Any]:
    """``segue host maintenance enter host1`` with its defaults, followed to its end."""
    client = ControllerClient(controller_url(plan))
    try:
        started = datetime.now(UTC)
        answer = await client.enter_maintenance(SOURCE)
        async with asyncio.timeout(WAIT_S):
            status = await client.maintenance_status(SOURCE)
            while status.state != "in-maintenance" and status.evacuation == "running":
                await asyncio.sleep(POLL_S)
                status = await client.maintenance_status(SOURCE)
        jobs: dict[str, MigrationJobView | str] = {}
        for row in status.vms:
            if row.job_id is not None:
                jobs[row.vm] = await wait_job(client, row.job_id)
            else:
                jobs[row.vm] = f"{row.blocker}: {row.message}"
    finally:
        await client.aclose()
    return {"started": started, "jobs": jobs, "predicted_s": answer.predicted_s,
            "parallel": answer.parallel,
            "plan": [{"vm": v.vm, "dest": v.dest, "predicted_s": v.predicted_s,
                      "start_s": v.start_s, "end_s": v.end_s} for v in answer.vms]}


async def move_back(plan: LabPlan, segue: bool) -> None:
    """Every guest back on host1, unmeasured: after ``segue``'s run ``maintenance exit
    host1 --return`` (followed to its end), else two moves at a time; then any guest still
    elsewhere one by one."""
    client = ControllerClient(controller_url(plan))
    try:
        if segue:
            await client.exit_maintenance(SOURCE, return_vms=True)
            async with asyncio.timeout(WAIT_S):
                status = await client.maintenance_status(SOURCE)
                while status.evacuation == "running":
                    await asyncio.sleep(POLL_S)
                    status = await client.maintenance_status(SOURCE)
        away = [vm.name for vm in await client.list_vms() if vm.host != SOURCE]
        await scheduled(client, away, 2, lambda _i, _vm: SOURCE)
        away = [vm.name for vm in await client.list_vms() if vm.host != SOURCE]
        await scheduled(client, away, 1, lambda _i, _vm: SOURCE)
        left = [vm.name for vm in await client.list_vms() if vm.host != SOURCE]
    finally:
        await client.aclose()
    if left:
        raise RuntimeError(f"could not bring {left} back to {SOURCE}")


# ---- one run ----

class Guests:
    """The benchmark's guests on host1: their addresses and workloads."""

    def __init__(self, plan: LabPlan, names: Sequence[str]) -> None:
        self.plan = plan
        self.names = list(names)
        self.ips: dict[str, str] = {}
        image = build_image()
        with guests.controller(plan) as client:
            for vm in self.names:
                spec = guests.guest_spec(plan, vm, image, guests.GuestOptions(
                    memory_mib=GUEST_MEMORY_MIB, hot_mib=MIX[vm].hot_mib, dirty_mbps=0))
                client.run(client.client.create_vm(SOURCE, spec, start=True))
                self.ips[vm] = guests.guest_ip(spec)
        for vm in self.names:
            guests.wait_answering(plan, vm, timeout=300)

    def start_dirtying(self, bandwidth: float) -> dict[str, str]:
        """Every guest dirtying at its rate; each one's boot id."""
        boots = {}
        for vm in self.names:
            set_dirty_rate(self.plan, self.ips[vm], MIX[vm].dirty_mibs(bandwidth))
            boots[vm] = guests.verify_ip(self.plan, self.ips[vm]).split()[1]
        return boots

    def check(self, vm: str, boot: str) -> bool:
        """Stop the guest's dirtying and verify its memory: whether it is intact and the
        same boot. A guest that does not answer is asked again for up to VERIFY_WAIT_S (a
        busy machine slows its scan); one that never does is replaced by a fresh one on
        host1."""
        try:
            set_dirty_rate(self.plan, self.ips[vm], 0)
            verdict = guests.verify_ip(self.plan, self.ips[vm])
        except SegueError:
            try:
                verdict = guests.wait_answering(self.plan, vm, timeout=VERIFY_WAIT_S)
            except SegueError:
                replace_guest(self.plan, vm, SOURCE)
                return False
        return "result=ok" in verdict and verdict.split()[1] == boot


def one_run(plan: LabPlan, lab: Guests, strategy: str, bandwidth: float, probe_ms: float
            ) -> dict[str, Any]:
    """One measured evacuation of host1 with ``strategy``, its guests verified, then moved
    back; the run's numbers."""
    boots = lab.start_dirtying(bandwidth)
    time.sleep(SETTLE_S)
    probes = {vm: guests.BackgroundProbe(plan, lab.ips[vm], probe_ms) for vm in lab.names}
    workers = STRATEGIES[strategy]
    try:
        done = asyncio.run(segue_evacuation(plan) if workers is None
                           else peer_evacuation(plan, lab.names, workers))
    finally:
        seen = {vm: probe.stop() for vm, probe in probes.items()}
    each: dict[str, dict[str, Any]] = {}
    for vm in lab.names:
        job = done["jobs"].get(vm, "NOT_MOVED: no job")
        if isinstance(job, str):
            result = run_result(False, job, {})
            result.update(dest=None, finished_at=None)
        else:
            result = run_result(job.phase == Phase.COMPLETED, job.reason, job.summary)
            result.update(dest=job.destination, job=job.id, postcopy=job.summary.get("postcopy"),
                          requested_at=job.created_at.isoformat(),
                          finished_at=job.finished_at.isoformat() if job.finished_at else None)
        result.update(kind=MIX[vm].kind, lost=seen[vm]["lost"],
                      blackout_ms=seen[vm]["longest_gap_ms"] if result["converged"] else None)
        each[vm] = result
    for vm in lab.names:
        each[vm]["memory_ok"] = lab.check(vm, boots[vm])
    ends = [datetime.fromisoformat(r["finished_at"]) for r in each.values()
            if r["finished_at"]]
    total = (max(ends) - done["started"]).total_seconds() if ends else None
    blackouts = spread(r["blackout_ms"] for r in each.values())
    failures = sum(not (r["converged"] and r["memory_ok"]) for r in each.values())
    run: dict[str, Any] = {"strategy": strategy, "total_s": total,
        "blackout_ms_median": blackouts["median"], "blackout_ms_max": blackouts["max"],
        "failures": failures, "eta_s": done["predicted_s"],
        "eta_error": relative_error(done["predicted_s"], total),
        "guests": each, **{k: done[k] for k in ("parallel", "plan") if k in done}}
    asyncio.run(move_back(plan, strategy == "segue"))
    return run


# ---- summary and tables ----

def eta_at_measured_link(results: dict[str, Any], run: dict[str, Any]) -> float | None:
    """What the pre-flight's model would have answered for ``run``'s plan (its order,
    destinations and parallelism) had host1's agent reported the measured bandwidth rather
    than its interface's nominal speed: ``predicted_move_s`` per move, then the planner's
    ``predict_schedule``. Not what Segue answered: the model's own error once its link speed
    is right (it still leaves out dirtying and each move's fixed costs). None without a
    plan."""
    plan = [p for p in run.get("plan") or [] if p.get("dest")]
    if not plan:
        return None
    mbps = int(results["bandwidth_bytes_per_s"] * 8 / 1e6)
    parallel = run["parallel"]
    durations = [(p["dest"], predicted_move_s(results["guest_memory_mib"], mbps, parallel))
                 for p in plan]
    ends = predict_schedule(durations, parallel, results["limits"]["max_incoming_per_host"])
    return round(max(end for _, end in ends), 1)


def first_request_s(run: dict[str, Any]) -> float | None:
    """Seconds from the run's start to its first job's creation (its request's checks done;
    for ``segue`` the pre-flight too); None without a job."""
    moves = run["guests"].values()
    ends = [datetime.fromisoformat(g["finished_at"]) for g in moves if g.get("finished_at")]
    asked = [datetime.fromisoformat(g["requested_at"]) for g in moves if g.get("requested_at")]
    if not ends or not asked or run["total_s"] is None:
        return None
    return (min(asked) - (max(ends) - timedelta(seconds=run["total_s"]))).total_seconds()


def summarize(runs: Sequence[dict[str, Any]], strategies: Sequence[str]
              ) -> list[dict[str, Any]]:
    """One row per strategy with runs: total time (median, worst over the runs), blackout
    (median and worst over every guest of every run), QEMU downtime likewise, ETA error
    (median signed, and the largest in size), failures (guests of all runs)."""
    rows = []
    for strategy in strategies:
        mine = [r for r in runs if r["strategy"] == strategy]
        if not mine:
            continue
        total = spread(r["total_s"] for r in mine)
        moves = [g for r in mine for g in r["guests"].values()]
        blackout = spread(g["blackout_ms"] for g in moves)
        downtime = spread(g["qemu_downtime_ms"] for g in moves)
        errors = [r["eta_error"] for r in mine if r.get("eta_error") is not None]
        rows.append({
            "strategy": strategy, "runs": len(mine), "moves": len(moves),
            "total_s": total["median"], "total_s_max": total["max"],
            "first_request_s": spread(first_request_s(r) for r in mine)["median"],
            "blackout_ms": blackout["median"], "blackout_ms_max": blackout["max"],
            "qemu_downtime_ms": downtime["median"], "qemu_downtime_ms_max": downtime["max"],
            "postcopy": sum(bool(g.get("postcopy")) for g in moves),
            "eta_error": spread(errors)["median"],
            "eta_error_max": max(errors, key=abs) if errors else None,
            "failures": sum(r["failures"] for r in mine),
            "blackout_ms_each": {vm: spread(r["guests"].get(vm, {}).get("blackout_ms")
                                            for r in mine)["median"]
                                 for vm in sorted({vm for r in mine for vm in r["guests"]})},
        })
    return rows


def table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The main table: per strategy, total time, when the first job was created (median),
    blackout, QEMU downtime, post-copies, ETA error and failures."""
    head = (f"{'strategy':<14} {'runs':>4} | {'total s':^15} | {'1st':>5} | {'blackout ms':^15} | "
            f"{'QEMU downtime ms':^16} | {'post':>4} | {'ETA error':^15} | {'failed':>6}")
    sub = (f"{'':<14} {'':>4} | {'median':>7} {'worst':>7} | {'job s':>5} | "
           f"{'median':>7} {'worst':>7} | "
           f"{'median':>7} {'worst':>8} | {'copy':>4} | {'median':>7} {'worst':>7} | "
           f"{'':>6}")
    lines = [head, sub, "-" * len(sub)]
    for r in rows:
        lines.append(
            f"{r['strategy']:<14} {r['runs']:>4} | {fmt(r['total_s'], 's'):>7} "
            f"{fmt(r['total_s_max'], 's'):>7} | {fmt(r.get('first_request_s'), 's'):>5} | "
            f"{fmt(r['blackout_ms'], 'ms'):>7} "
            f"{fmt(r['blackout_ms_max'], 'ms'):>7} | {fmt(r['qemu_downtime_ms'], 'ms'):>7} "
            f"{fmt(r['qemu_downtime_ms_max'], 'ms'):>8} | {r['postcopy']:>4} | "
            f"{fmt(r['eta_error'], '%+'):>7} {fmt(r['eta_error_max'], '%+'):>7} | "
            f"{r['failures']:>3}/{r['moves']:<2}")
    return lines


def guests_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Each guest's blackout (ms, median over the runs) per strategy."""
    names = sorted({vm for r in rows for vm in r["blackout_ms_each"]})
    head = f"{'strategy':<14}" + "".join(
        f" {vm + ' ' + MIX[vm].kind if vm in MIX else vm:>9}" for vm in names)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['strategy']:<14}" + "".join(
            f" {fmt(r['blackout_ms_each'].get(vm), 'ms'):>9}" for vm in names))
    return lines


def print_tables(results: dict[str, Any]) -> None:
    rows = summarize(results["runs"], [s for s in STRATEGIES
                                       if any(r["strategy"] == s for r in results["runs"])])
    results["rows"] = rows
    print(f"evacuating {SOURCE}: {len(results['guests'])} guests of {GUEST_MEMORY_MIB} MiB "
          f"over {results['link_mbit']} Mbit/s (measured "
          f"{results['bandwidth_bytes_per_s'] / 2**20:.1f} MiB/s; its agent reports "
          f"{results.get('reported_link_mbps')} Mbit/s), {results['reps']} rep(s)")
    print("\n".join(table(rows)))
    print("\neach guest's blackout (ms, median of the runs)")
    print("\n".join(guests_table(rows)))
    for run in results["runs"]:
        if run["strategy"] == "segue" and run.get("plan"):
            at_link = eta_at_measured_link(results, run)
            print(f"\nsegue's plan (rep {run['rep']}, {run.get('parallel')} at once): "
                  + ", ".join(f"{p['vm']}->{p['dest']}" for p in run["plan"])
                  + f"; ETA {run['eta_s']:.1f} s, took {fmt(run['total_s'], 's')} s "
                  f"({fmt(run['eta_error'], '%+')}); the same model at the measured link: "
                  f"{fmt(at_link, 's')} s "
                  f"({fmt(relative_error(at_link, run['total_s']), '%+')})")


# ---- main ----

def bench(plan: LabPlan, args: argparse.Namespace, strategies: list[str]) -> int:
    guests.shape_migration_link(plan, SOURCE, args.link_mbit)
    bandwidth = measure_bandwidth(plan)
    with guests.controller(plan) as client:
        facts = client.run(client.client.get_host(SOURCE)).facts
    reported = facts.migration.speed_mbps if facts is not None else None
    print(f"migration link of {SOURCE}: shaped to {args.link_mbit} Mbit/s, measured "
          f"{bandwidth / 2**20:.1f} MiB/s; its agent reports {reported} Mbit/s", flush=True)
    names = list(MIX)[:args.guests]
    runs: list[dict[str, Any]] = []
    results = {"link_mbit": args.link_mbit, "bandwidth_bytes_per_s": bandwidth,
               "reported_link_mbps": reported,
               "reps": args.reps, "probe_ms": args.probe_ms,
               "guest_memory_mib": GUEST_MEMORY_MIB, "limits": LIMITS,
               "guests": {vm: {"kind": MIX[vm].kind, "hot_mib": MIX[vm].hot_mib,
                               "dirty_share": MIX[vm].dirty_share,
                               "dirty_mibs": MIX[vm].dirty_mibs(bandwidth)} for vm in names},
               "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    lab = Guests(plan, names)
    for rep in range(args.reps):
        for strategy in random.sample(strategies, len(strategies)):
            run = one_run(plan, lab, strategy, bandwidth, args.probe_ms)
            run["rep"] = rep
            runs.append(run)
            print(json.dumps({k: v for k, v in run.items() if k not in ("guests", "plan")}),
                  flush=True)
            # after every run: a run that breaks later keeps what was measured
            (args.out / "evacuate.json").write_text(json.dumps(results, indent=2))
    print_tables(results)
    (args.out / "evacuate.json").write_text(json.dumps(results, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--link-mbit", type=int, default=400)
    parser.add_argument("--guests", type=int, default=len(MIX), choices=range(1, len(MIX) + 1),
                        help="how many of g1..g6 (fewer: a quicker smoke run)")
    parser.add_argument("--probe-ms", type=float, default=5.0,
                        help="each guest's prober's interval")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--lab", default=LAB, help="the lab's name (its namespaces' prefix)")
    parser.add_argument("--summarize", type=Path, default=None, metavar="EVACUATE_JSON",
                        help="print the tables of an earlier run's evacuate.json; no lab")
    args = parser.parse_args()
    if args.summarize is not None:
        print_tables(json.loads(args.summarize.read_text()))
        return 0
    strategies = args.strategies.split(",")
    unknown = set(strategies) - set(STRATEGIES)
    if unknown:
        parser.error(f"unknown strategies {sorted(unknown)}: choose from {list(STRATEGIES)}")
    with fresh_lab(args.lab, 3, LIMITS) as plan:
        return bench(plan, args, strategies)


if __name__ == "__main__":
    sys.exit(main())
