"""Migration benchmark: Segue's policy against peers' defaults, in the same lab, interleaved.

    python benchmarks/migration.py [--reps 3] [--link-mbit 400] [--deadline 30] [--out DIR]

A fresh 2-host lab; the migration link is shaped to ``--link-mbit`` (tc tbf on both hosts'
migration interfaces, inside their namespaces) and measured with a TCP stream. One guest
(256 MiB, 64 MiB of hot pages) migrates host1 -> host2 in each scenario: idle, dirtying at
about 25 %, 75 % and 150 % of the measured bandwidth, and idle but answering the prober every
1.5 ms. Segue's runs go through the controller (its policy); each peer's run is Segue's own
migration job (``segue.engine.job``) driving both agents with the peer's policy object: its
settings, its manager's escalation and give-up (``benchmarks/peers.py``), so that every
policy is driven the same way (the job's rollback included).
Runs are interleaved (every repetition runs every scenario with every policy in a shuffled
order); a run that has not converged by ``--deadline`` s is cancelled and shown as such. After
each measured run the guest is moved back unmeasured. Prints a table of medians and writes
``results.json`` and ``migration.png`` to ``--out``.

Times: *copy* is QEMU's own ``total-time`` (``migrate`` to completion), the same clock for
every policy; *end-to-end* is the wall clock of the whole move as its manager ran it: for
Segue from the request (pre-migration checks, the link and dirty-rate measurement, the
destination's start) to the source's release; for a peer from the destination's start to
the source's release (the peers' own checks are not run here, nor is the inventory told: a
peer's move is undone by the unmeasured move back). *x limit* is copy time over touched RAM /
measured bandwidth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from segue.api.migration import MigrationOptionsBody
from segue.clients.agent import AgentClient
from segue.clients.base import Blocking
from segue.domain.errors import SegueError
from segue.domain.host import HostFacts
from segue.engine.context import JobSpec, Ports
from segue.engine.job import MigrationJob
from segue.engine.phases import Phase, check_transition
from segue.engine.ports import MonotonicClock
from segue.engine.progress import Progress
from segue.image.builder import build_image
from segue.lab import guests
from segue.lab.netns import run_in_netns
from segue.lab.topology import LabPlan

sys.path.insert(0, str(Path(__file__).parent))
from benchlab import fresh_lab
from peers import PEERS, Peer, PeerPolicy

LAB = "bench"
VM = "bench1"
SCENARIOS = {"idle": 0.0, "dirty-25": 0.25, "dirty-75": 0.75, "dirty-150": 1.5, "prober": 0.0}
RAM_BYTES = 256 * 1024**2  # the guest's memory, as the peers' managers count it
NO_STALL_LIMIT_S = 86_400.0  # a peer's job gives up as the peer would, not on Segue's stall


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
    import subprocess

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


def agent_url(plan: LabPlan, host: str) -> str:
    return f"unix:{plan.host(host).agent_socket}"


def where(plan: LabPlan) -> str:
    for host in plan.hosts:
        with Blocking(AgentClient(agent_url(plan, host.name))) as agent:
            vms = agent.run(agent.client.list_vms())
        if any(v.name == VM and v.role != "incoming" and v.state == "running" for v in vms):
            return host.name
    raise RuntimeError(f"{VM} runs nowhere")


def run_segue(plan: LabPlan, dest: str, deadline: float) -> dict[str, Any]:
    """One migration through the controller, with Segue's policy."""
    job = guests.migrate_and_wait(plan, VM, dest, timeout=deadline + 60, deadline_s=deadline)
    s = job.summary
    copy_ms = s.get("qemu_total_ms")
    return {"converged": job.phase == "completed", "total_s": s.get("total_s"),
            "copy_s": copy_ms / 1000 if isinstance(copy_ms, int | float) and copy_ms else None,
            "qemu_downtime_ms": s.get("qemu_downtime_ms"), "bytes": s.get("bytes_sent"),
            "iterations": s.get("iterations"), "reason": job.reason,
            "downtime_target_ms": s.get("downtime_target_ms"), "postcopy": s.get("postcopy")}


@dataclass
class BenchStore:
    """A peer job's record, in memory (``segue.engine.ports.JobStore``): its phase (moved as
    the phase table allows), the last sample, the summary, the outcome. The controller's
    inventory is not told (see the module doc)."""

    phase: Phase = Phase.CHECK
    reason: str | None = None
    last: Progress | None = None
    summary: dict[str, JsonValue] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def transition(self, job_id: str, target: Phase, message: str = "", *,
                   reason: str | None = None, error_code: str | None = None) -> None:
        check_transition(self.phase, target)
        self.phase, self.reason = target, reason if reason is not None else self.reason

    def note(self, job_id: str, message: str) -> None:
        self.notes.append(message)

    def record_sample(self, job_id: str, t: float, progress: Progress) -> None:
        self.last = progress

    def set_summary(self, job_id: str, summary: dict[str, JsonValue]) -> None:
        self.summary = dict(summary)

    def commit_location(self, vm: str, host: str) -> None:
        return None


@dataclass(frozen=True)
class KnownFacts:
    """Both hosts' facts, asked of their agents before the job."""

    facts: dict[str, HostFacts]

    def host_facts(self, host: str) -> HostFacts:
        return self.facts[host]


async def run_peer_job(plan: LabPlan, peer: Peer, src_host: str, dest: str,
                       deadline: float) -> BenchStore:
    """One migration by Segue's job with the peer's policy; the job's record."""
    src = AgentClient(agent_url(plan, src_host))
    dst = AgentClient(agent_url(plan, dest))
    try:
        facts = KnownFacts({src_host: await src.facts(), dest: await dst.facts()})
        store = BenchStore()
        options = MigrationOptionsBody(deadline_s=deadline, stall_timeout_s=NO_STALL_LIMIT_S,
                                       allow_postcopy=False)
        spec = JobSpec(str(uuid.uuid4()), VM, src_host, dest, options)
        job = MigrationJob(spec, Ports(src, dst, store, facts, MonotonicClock()),
                           PeerPolicy(peer, RAM_BYTES))
        await job.run()
        return store
    finally:
        await src.aclose()
        await dst.aclose()


def run_peer(plan: LabPlan, peer: Peer, src_host: str, dest: str,
             deadline: float) -> dict[str, Any]:
    """One migration with a peer's settings, driven by Segue's job through the agents."""
    store = asyncio.run(run_peer_job(plan, peer, src_host, dest, deadline))
    s = store.summary
    if store.phase != Phase.COMPLETED:
        return {"converged": False, "reason": store.reason,
                "total_s": None, "copy_s": None, "qemu_downtime_ms": None,
                "bytes": store.last.transferred if store.last else None, "iterations": None}
    copy_ms = s.get("qemu_total_ms")
    return {"converged": True, "total_s": s.get("total_s"),
            "copy_s": copy_ms / 1000 if isinstance(copy_ms, int | float) and copy_ms else None,
            "qemu_downtime_ms": s.get("qemu_downtime_ms"),
            "bytes": s.get("bytes_sent"), "iterations": s.get("iterations"),
            "reason": None}


def one_run(plan: LabPlan, policy: str, scenario: str, rate: int, ip: str,
            deadline: float) -> dict[str, Any]:
    """One measured migration host1 -> host2 and the unmeasured move back."""
    set_dirty_rate(plan, ip, rate)
    boot = guests.verify_ip(plan, ip).split()[1]
    time.sleep(1.0)  # let the guest's dirtying settle
    probe = guests.BackgroundProbe(plan, ip)
    if policy == "segue":
        result = run_segue(plan, "host2", deadline)
    else:
        result = run_peer(plan, PEERS[policy], "host1", "host2", deadline)
    seen = probe.stop()
    try:
        set_dirty_rate(plan, ip, 0)
        verdict = guests.verify_ip(plan, ip)
    except SegueError:  # the guest died after the move (see README, "Known limits")
        verdict = "VERIFY boot=- result=dead"
        replace_guest(plan)
    result.update(policy=policy, scenario=scenario, dirty_mibs=rate,
                  blackout_ms=seen["longest_gap_ms"] if result["converged"] else None,
                  lost=seen["lost"],
                  # a guest that rebooted answers result=ok too: the boot id must match
                  memory_ok="result=ok" in verdict and verdict.split()[1] == boot)
    if verdict.endswith("result=dead"):
        return result
    if where(plan) == "host2":
        if policy == "segue":
            run_segue(plan, "host1", 600)
        else:
            run_peer(plan, PEERS["libvirt"], "host2", "host1", 600)
    return result


def replace_guest(plan: LabPlan) -> None:
    """Destroy a dead guest wherever it is and boot a fresh one on host1."""
    with guests.controller(plan) as client:
        spec = client.run(client.client.get_vm(VM)).spec
        for host in plan.hosts:  # the inventory may not know where it ended
            with Blocking(AgentClient(agent_url(plan, host.name))) as agent:
                if any(v.name == VM for v in agent.run(agent.client.list_vms())):
                    agent.run(agent.client.destroy_vm(VM))
        with contextlib.suppress(SegueError):  # gone from its host: the inventory forgets it
            client.run(client.client.destroy_vm(VM))
        client.run(client.client.create_vm("host1", guests.respec(spec, uuid=""), start=True))
    guests.wait_answering(plan, VM)


def median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def summarize(runs: list[dict[str, Any]], bandwidth: float, touched: float | None
              ) -> list[dict[str, Any]]:
    """Medians per (scenario, policy), with the ratio to the physical limit."""
    limit_s = touched / bandwidth if touched else None
    rows = []
    for scenario in SCENARIOS:
        for policy in ["segue", *PEERS]:
            mine = [r for r in runs if r["scenario"] == scenario and r["policy"] == policy]
            if not mine:
                continue
            total = median([r["total_s"] for r in mine])
            copy = median([r.get("copy_s") for r in mine])
            rows.append({
                "scenario": scenario, "policy": policy, "runs": len(mine),
                "converged": sum(r["converged"] for r in mine),
                "blackout_ms": median([r["blackout_ms"] for r in mine]),
                "qemu_downtime_ms": median([r["qemu_downtime_ms"] for r in mine]),
                "total_s": total, "copy_s": copy,
                "copy_vs_limit": copy / limit_s if copy and limit_s else None,
                "bytes_mib": (median([r["bytes"] for r in mine]) or 0) / 2**20,
                "memory_ok": all(r["memory_ok"] for r in mine),
            })
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'scenario':<10} {'policy':<9} {'conv':>5} {'blackout':>9} {'downtime':>9} "
            f"{'copy':>7} {'x limit':>8} {'end-to-end':>10} {'sent MiB':>9} {'memory':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = "-" if r["copy_vs_limit"] is None else f"{r['copy_vs_limit']:.2f}"
        print(f"{r['scenario']:<10} {r['policy']:<9} {r['converged']:>2}/{r['runs']:<2} "
              f"{_fmt(r['blackout_ms'], 'ms'):>9} {_fmt(r['qemu_downtime_ms'], 'ms'):>9} "
              f"{_fmt(r['copy_s'], 's'):>7} {ratio:>8} {_fmt(r['total_s'], 's'):>10} "
              f"{r['bytes_mib']:>9.0f} {'ok' if r['memory_ok'] else 'BAD':>6}")


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}s" if unit == "s" else f"{v:.0f}{unit}"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart (make bench installs it)")
        return
    policies = ["segue", *PEERS]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, key, label in ((axes[0], "blackout_ms", "blackout seen by the prober (ms)"),
                           (axes[1], "copy_s", "migration time, QEMU total-time (s)")):
        for i, policy in enumerate(policies):
            xs = [j + i * 0.13 for j, s in enumerate(SCENARIOS)]
            ys = [next((r[key] or 0 for r in rows
                        if r["scenario"] == s and r["policy"] == policy), 0) for s in SCENARIOS]
            ax.bar(xs, ys, width=0.13, label=policy)
        ax.set_xticks([j + 0.33 for j in range(len(SCENARIOS))], list(SCENARIOS))
        ax.set_title(label)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--link-mbit", type=int, default=400)
    parser.add_argument("--deadline", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--policies", default=",".join(["segue", *PEERS]))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with fresh_lab(LAB) as plan:
        return bench(plan, args)


def bench(plan: LabPlan, args: argparse.Namespace) -> int:
    shape_link(plan, args.link_mbit)
    bandwidth = measure_bandwidth(plan)
    print(f"migration link: shaped to {args.link_mbit} Mbit/s, measured "
          f"{bandwidth / 2**20:.1f} MiB/s")
    spec = guests.guest_spec(plan, VM, build_image(),
                             guests.GuestOptions(memory_mib=256, hot_mib=64, dirty_mbps=0))
    with guests.controller(plan) as client:
        client.run(client.client.create_vm("host1", spec, start=True))
    ip = guests.guest_ip(guests.find_vm(plan, VM)[1])
    guests.wait_answering(plan, VM)
    policies = args.policies.split(",")
    scenarios = args.scenarios.split(",")
    runs = []
    for rep in range(args.reps):
        for scenario in scenarios:
            order = random.sample(policies, len(policies))
            for policy in order:
                rate = int(SCENARIOS[scenario] * bandwidth / 2**20)
                run = one_run(plan, policy, scenario, rate, ip, args.deadline)
                run["rep"] = rep
                runs.append(run)
                print(json.dumps(run), flush=True)
    touched = median([r["bytes"] for r in runs if r["scenario"] == "idle" and r["converged"]])
    rows = summarize(runs, bandwidth, touched)
    print_table(rows)
    (args.out / "results.json").write_text(json.dumps(
        {"bandwidth_bytes_per_s": bandwidth, "link_mbit": args.link_mbit,
         "touched_bytes": touched, "runs": runs, "medians": rows}, indent=2))
    plot(rows, args.out / "migration.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
