"""Migration benchmark: Segue's policy against peers' defaults, in the same lab, interleaved.

    python benchmarks/migration.py [--reps 5] [--link-mbit 400] [--deadline 30] [--out DIR]
                                   [--policies segue,qemu,...] [--scenarios idle,pair,...]
    python benchmarks/migration.py --tls-compare [--reps 3] [--scenarios idle,dirty-75]
    python benchmarks/migration.py --summarize results.json [--out DIR]

A fresh 2-host lab; the migration link is shaped to ``--link-mbit`` (tc tbf on both hosts'
migration interfaces, inside their namespaces) and measured with a TCP stream. Guests of
256 MiB move host1 -> host2 in each scenario (``scenarios.py``): one guest (64 MiB of hot
pages) idle, dirtying at about 25 %, 75 % and 150 % of the measured bandwidth, and idle but
answering the prober every 1.5 ms; *sparse*, a guest with 128 MiB of hot pages rewritten
slowly (10 % of the bandwidth); *pair*, two guests each dirtying at 25 % moving at once over
the same link. Only the guests of the running scenario run (a 2-core host: an idle guest
would take CPU from the measured one). Segue's runs go through the controller (its policy);
each peer's run is Segue's own migration job (``segue.engine.job``) driving both agents with
the peer's policy object: its settings, its manager's escalation and give-up
(``benchmarks/peers.py``), so that every policy is driven the same way (the job's rollback
included); see ``moves.py``.
Runs are interleaved (every repetition runs every scenario with every policy in a shuffled
order); a run that has not converged by ``--deadline`` s is cancelled and shown as such. After
each measured run the guests are moved back unmeasured. Judged by the worst run as much as
the typical one: prints the median, p95 and maximum of the blackout, QEMU's downtime and the
copy time per scenario and policy (``stats.py`` says how), Segue's prediction error and, for
*pair*, each guest's blackout; writes ``results.json`` and ``migration.png`` to ``--out``.
``--tls-compare`` runs Segue's policy encrypted (``segue``, the default since migrations
are TLS) against the same with ``--no-tls`` (``no-tls``), interleaved, and adds the TLS
table: per scenario the median and worst copy time, blackout, QEMU downtime and the source
QEMU's CPU seconds during the move, encrypted against plain; it writes ``tls.json`` and
``tls.png``. (Peers' runs are plain, as their managers migrate by default.) The source
QEMU's CPU time is sampled from ``/proc`` during every run (``qemucpu.py``).
``--summarize`` prints the tables again from an earlier ``results.json`` (and, with
``--out``, writes its chart there), without a lab.

Times: *copy* is QEMU's own ``total-time`` (``migrate`` to completion), the same clock for
every policy; *end-to-end* is the wall clock of the whole move as its manager ran it: for
Segue from the request (pre-migration checks, the link and dirty-rate measurement, the
destination's start) to the source's release; for a peer from the destination's start to
the source's release (the peers' own checks are not run here, nor is the inventory told: a
peer's move is undone by the unmeasured move back). *x limit* is copy time over touched RAM /
measured bandwidth (for *pair*: both guests' RAM). *blackout* is the prober's longest gap;
for *pair* a run's blackout, downtime and copy time are its worse guest's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from segue.clients.agent import AgentClient
from segue.clients.base import Blocking
from segue.domain.errors import SegueError
from segue.image.builder import build_image
from segue.lab import guests
from segue.lab.netns import run_in_netns
from segue.lab.topology import LabPlan

sys.path.insert(0, str(Path(__file__).parent))
from benchlab import fresh_lab
from moves import agent_url, move_all
from peers import PEERS
from qemucpu import QemuCpu
from report import plot, print_report
from scenarios import GUEST_MEMORY_MIB, GUESTS, MAIN, SCENARIOS, guests_needed, limits_s
from stats import spread, summarize, worse_of

LAB = "bench"
VM = MAIN  # the main guest (older scripts import this name)
SETTLE_S = 1.0  # let the guests' dirtying settle before the measured move
BACK_DEADLINE_S = 600.0


def shape_link(plan: LabPlan, mbit: int) -> None:
    """Shape both hosts' migration interfaces (egress) to ``mbit`` Mbit/s, in their netns."""
    for host in plan.hosts:
        run_in_netns(host.netns, ["tc", "qdisc", "replace", "dev", "mig0", "root", "tbf",
                                  "rate", f"{mbit}mbit", "burst", "256kb", "latency", "50ms"])


def measure_bandwidth(plan: LabPlan, seconds: float = 2.0) -> float:
    """Bytes/s of one TCP stream host1 -> host2 over the migration network."""
    dst = plan.host("host2")
    server = ("import socket,sys\ns=socket.socket();s.setsockopt(1,2,1);"
              f"s.bind(('{dst.mig_ip}',5999));s.listen(1);c,_=s.accept()\n"
              "n=0\nwhile (b:=c.recv(1<<20)): n+=len(b)\nprint(n)")
    client = ("import socket,time\nc=socket.create_connection"
              f"(('{dst.mig_ip}',5999));d=b'x'*(1<<20);t=time.monotonic()\n"
              f"while time.monotonic()-t<{seconds}: c.sendall(d)\n"
              "c.close();print(time.monotonic()-t)")
    srv = subprocess.Popen(["ip", "netns", "exec", dst.netns, sys.executable, "-c", server],
                           stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    took = float(run_in_netns(plan.host("host1").netns, [sys.executable, "-c", client]).stdout)
    sent = int(srv.communicate(timeout=30)[0])
    return sent / took


def set_dirty_rate(plan: LabPlan, ip: str, mib_per_s: int) -> None:
    code = ("import socket;s=socket.socket(2,2);s.settimeout(2);"
            f"s.sendto(b'RATE {mib_per_s}',('{ip}',7777));print(s.recv(100))")
    run_in_netns(plan.client_ns, [sys.executable, "-c", code])


def where(plan: LabPlan, vm: str = VM) -> str:
    """The host where ``vm`` runs (its agent's view); raises RuntimeError if none runs it."""
    for host in plan.hosts:
        with Blocking(AgentClient(agent_url(plan, host.name))) as agent:
            vms = agent.run(agent.client.list_vms())
        if any(v.name == vm and v.role != "incoming" and v.state == "running" for v in vms):
            return host.name
    raise RuntimeError(f"{vm} runs nowhere")


class LabGuests:
    """The benchmark's guests (``scenarios.GUESTS``), all defined on host1 at the start and
    kept (same address and MAC throughout); only the running scenario's guests run."""

    def __init__(self, plan: LabPlan, names: list[str]) -> None:
        self.plan = plan
        self.ips: dict[str, str] = {}
        self.running: set[str] = set()
        image = build_image()
        for vm in names:
            spec = guests.guest_spec(plan, vm, image, guests.GuestOptions(
                memory_mib=GUEST_MEMORY_MIB, hot_mib=GUESTS[vm], dirty_mbps=0))
            with guests.controller(plan) as client:
                client.run(client.client.create_vm("host1", spec, start=False))
            self.ips[vm] = guests.guest_ip(spec)

    def use(self, wanted: tuple[str, ...]) -> None:
        """Stop the guests not ``wanted`` (at once: nothing of theirs is kept), start the
        wanted ones that are not running and wait until they answer."""
        with guests.controller(self.plan) as client:
            for vm in sorted(self.running - set(wanted)):
                client.run(client.client.stop_vm(vm, force=True))
                self.running.discard(vm)
            started = [vm for vm in wanted if vm not in self.running]
            for vm in started:
                client.run(client.client.start_vm(vm))
                self.running.add(vm)
        for vm in started:
            guests.wait_answering(self.plan, vm)

    def replace(self, vm: str) -> None:
        """Destroy a dead guest wherever it is and boot a fresh one on host1 (same spec)."""
        replace_guest(self.plan, vm)
        self.running.add(vm)


def replace_guest(plan: LabPlan, vm: str, host: str = "host1") -> None:
    """Destroy a dead guest wherever it is, boot a fresh one (same spec) on ``host`` and
    wait until it answers."""
    with guests.controller(plan) as client:
        spec = client.run(client.client.get_vm(vm)).spec
        for where_ in plan.hosts:  # the inventory may not know where it ended
            with Blocking(AgentClient(agent_url(plan, where_.name))) as agent:
                if any(v.name == vm for v in agent.run(agent.client.list_vms())):
                    agent.run(agent.client.destroy_vm(vm))
        with contextlib.suppress(SegueError):  # gone from its host: the inventory forgets
            client.run(client.client.destroy_vm(vm))
        client.run(client.client.create_vm(host, guests.respec(spec, uuid=""), start=True))
    guests.wait_answering(plan, vm)


def one_run(plan: LabPlan, lab: LabGuests, policy: str, scenario: str, rate: int,
            deadline: float) -> dict[str, Any]:
    """One measured move host1 -> host2 of the scenario's guests (all at once, each under
    its own prober) and the unmeasured move back; the run's numbers (several guests: the
    worse guest's, each guest's under ``guests``)."""
    vms = SCENARIOS[scenario].guests
    boots = {}
    for vm in vms:
        set_dirty_rate(plan, lab.ips[vm], rate)
        boots[vm] = guests.verify_ip(plan, lab.ips[vm]).split()[1]
    time.sleep(SETTLE_S)
    cpus = {vm: QemuCpu(pid) for vm, pid in source_pids(plan, vms).items()}
    probes = {vm: guests.BackgroundProbe(plan, lab.ips[vm]) for vm in vms}
    try:
        moved = asyncio.run(move_all(plan, policy, vms, "host1", "host2", deadline))
    finally:
        seen = {vm: probe.stop() for vm, probe in probes.items()}
        for vm, cpu in cpus.items():
            if vm in moved:
                moved[vm]["source_cpu_s"] = cpu.stop()
    alive = [vm for vm in vms if check_guest(plan, lab, vm, moved[vm], seen[vm], boots[vm])]
    result = moved[vms[0]] if len(vms) == 1 else worse_of(moved)
    result.update(policy=policy, scenario=scenario, dirty_mibs=rate)
    for vm in alive:
        if where(plan, vm) == "host2":
            back = "segue" if policy in ("segue", "no-tls") else "libvirt"
            asyncio.run(move_all(plan, back, [vm], "host2", "host1", BACK_DEADLINE_S))
    return result


def source_pids(plan: LabPlan, vms: tuple[str, ...]) -> dict[str, int]:
    """The pids of the guests' QEMUs on host1 (the moves' source)."""
    with Blocking(AgentClient(agent_url(plan, "host1"))) as agent:
        listed = agent.run(agent.client.list_vms())
    return {v.name: v.pid for v in listed if v.name in vms and v.pid is not None}


def check_guest(plan: LabPlan, lab: LabGuests, vm: str, result: dict[str, Any],
                seen: dict[str, Any], boot: str) -> bool:
    """Stop the guest's dirtying, verify its memory and record what its prober saw into
    ``result``; whether it is alive (a dead guest is replaced by a fresh one on host1)."""
    try:
        set_dirty_rate(plan, lab.ips[vm], 0)
        verdict = guests.verify_ip(plan, lab.ips[vm])
    except SegueError:  # the guest died after the move (see README, "Known limits")
        verdict = "VERIFY boot=- result=dead"
        lab.replace(vm)
    result.update(blackout_ms=seen["longest_gap_ms"] if result["converged"] else None,
                  lost=seen["lost"],
                  # a guest that rebooted answers result=ok too: the boot id must match
                  memory_ok="result=ok" in verdict and verdict.split()[1] == boot)
    return not verdict.endswith("result=dead")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--link-mbit", type=int, default=400)
    parser.add_argument("--deadline", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=None,
                        help="where results.json and migration.png go (default: "
                             "benchmarks/results; with --summarize: the chart only if given)")
    parser.add_argument("--policies", default=",".join(["segue", *PEERS]))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--lab", default=LAB, help="the lab's name (its namespaces' prefix)")
    parser.add_argument("--tls-compare", action="store_true",
                        help="Segue's policy encrypted (segue, the default) against the same "
                             "with --no-tls (no-tls), interleaved; replaces --policies")
    parser.add_argument("--summarize", type=Path, default=None, metavar="RESULTS_JSON",
                        help="print the tables of an earlier run's results.json; no lab")
    args = parser.parse_args()
    if args.summarize is not None:
        return resummarize(args.summarize, args.out)
    if args.tls_compare:
        args.policies = "segue,no-tls"
    args.out = args.out or Path("benchmarks/results")
    args.out.mkdir(parents=True, exist_ok=True)
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}: choose from {list(SCENARIOS)}")
    with fresh_lab(args.lab) as plan:
        return bench(plan, args)


def bench(plan: LabPlan, args: argparse.Namespace) -> int:
    shape_link(plan, args.link_mbit)
    bandwidth = measure_bandwidth(plan)
    print(f"migration link: shaped to {args.link_mbit} Mbit/s, measured "
          f"{bandwidth / 2**20:.1f} MiB/s")
    policies = args.policies.split(",")
    scenarios = args.scenarios.split(",")
    lab = LabGuests(plan, guests_needed(scenarios))
    runs = []
    for rep in range(args.reps):
        for scenario in scenarios:
            lab.use(SCENARIOS[scenario].guests)
            rate = SCENARIOS[scenario].dirty_mibs(bandwidth)
            for policy in random.sample(policies, len(policies)):
                run = one_run(plan, lab, policy, scenario, rate, args.deadline)
                run["rep"] = rep
                runs.append(run)
                print(json.dumps(run), flush=True)
    results = {"bandwidth_bytes_per_s": bandwidth, "link_mbit": args.link_mbit, "runs": runs,
               "reps": args.reps, "deadline_s": args.deadline,
               "scenarios": {name: SCENARIOS[name].to_json() for name in scenarios}}
    rows = summarize_results(results, scenarios, policies)
    print_report(rows)
    name = "tls" if args.tls_compare else "results"
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2))
    plot(rows, policies, args.out / ("tls.png" if args.tls_compare else "migration.png"))
    return 0


def summarize_results(results: dict[str, Any], scenarios: list[str], policies: list[str]
                      ) -> list[dict[str, Any]]:
    """The rows of ``results``' runs (``stats.summarize``), also stored in ``results``
    (``medians``, with ``touched_bytes`` and the method)."""
    runs = results["runs"]
    touched = spread(r["bytes"] for r in runs
                     if r["scenario"] == "idle" and r["converged"])["median"]
    limits = limits_s(scenarios, touched, results["bandwidth_bytes_per_s"])
    rows = summarize(runs, scenarios, policies, limits)
    results.update(touched_bytes=touched, medians=rows,
                   summary_method="per (scenario, policy): median (statistics.median), p95 "
                                  "(nearest rank: the maximum below 20 runs) and max of "
                                  "the runs that have the value; see benchmarks/stats.py")
    return rows


def resummarize(path: Path, out: Path | None) -> int:
    """Print the tables of an earlier results.json (older ones too: what their runs lack
    shows as '-'); with ``out``, write its chart there. The file is not changed."""
    results = json.loads(path.read_text())
    runs = results["runs"]
    scenarios = [s for s in SCENARIOS if any(r["scenario"] == s for r in runs)]
    policies = [p for p in ["segue", "no-tls", *PEERS] if any(r["policy"] == p for r in runs)]
    rows = summarize_results(results, scenarios, policies)
    print_report(rows)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        plot(rows, policies, out / "migration.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
