"""Breaking a lab on purpose and checking that one owner per VM holds: the fault matrix's
tools (``tests/integration/test_fault_matrix.py``, ``benchmarks/faults.py``).

The four invariants, each checked by a function here:

- I1 (``Sampler``): never two running instances of a VM, sampled every 50 ms from ``/proc`` (a
  QEMU of the VM whose vCPU threads keep gaining CPU time, three samples in a row: this needs
  no agent) and from the agents' QMP answers (destination asked first) when they answer;
- I2 (``check_invariants``): the guest's memory and journal disk verified by its checker,
  with the same boot id;
- I3 (``leftovers``): one QEMU of the VM on the machine, no runtime directory or tap of it on
  another host, its lease held by the host that runs it;
- I4 (``disagreement``): the controller names the host that runs the VM, ``running``.

Faults: ``kill_agent`` (SIGKILL, its QEMUs keep running), ``frozen_agent`` (SIGSTOP: a hung
agent), ``power_off``/``power_on`` (every process of a host killed and its links down), and
the job helpers to time them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segue.agent.leases import LEASE_DIR
from segue.api.migration import MigrationRequestBody
from segue.clients.agent import AgentClient
from segue.clients.base import Blocking
from segue.domain.errors import SegueError
from segue.image.protocol import parse_verify
from segue.lab import guests, netns
from segue.lab.lab import load_state, start_agent, stop_agent
from segue.lab.topology import LabPlan
from segue.qemu.argv import tap_name

SETTLE_S = 30.0  # I4: the controller agrees with the hosts within this


class InvariantBroken(AssertionError):
    """An invariant of one owner per VM did not hold (or a fault could not be timed)."""


def verify_fields(line: str) -> dict[str, str]:
    """The ``key=value`` fields of a VERIFY reply (which must parse as one)."""
    parse_verify(line)
    return dict(tok.split("=", 1) for tok in line.split()[1:] if "=" in tok)


# ---- I1: the sampler ----
def qemu_pids(uuid: str) -> list[int]:
    """Every live QEMU process of the VM on this machine (all the lab's hosts share it)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and uuid.encode() in cmdline:
            pids.append(int(proc.name))
    return pids


def vcpu_ticks(pid: int) -> int | None:
    """CPU ticks its vCPU threads used so far (None: gone)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            if not (task / "comm").read_text().startswith("CPU "):
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    except OSError:
        return None
    return total


@dataclass
class Sampler:
    """I1 over a scenario (module doc); ``violations`` says when and what."""

    plan: LabPlan
    name: str
    uuid: str
    first: str  # the host asked first (the destination)
    violations: list[str] = field(default_factory=list)
    samples: int = 0

    def __post_init__(self) -> None:
        order = sorted(self.plan.hosts, key=lambda h: h.name != self.first)
        self.clients = [Blocking(AgentClient(f"unix:{h.agent_socket}", timeout=2))
                        for h in order]
        self.stop = threading.Event()
        # two threads: an agent that hangs (frozen) must not slow the /proc samples down
        self.threads = [threading.Thread(target=self._run, daemon=True),
                        threading.Thread(target=self._ask_agents, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _agents_running(self) -> int:
        running = 0
        for agent in self.clients:
            try:
                listed = agent.run(agent.client.list_vms())
            except (SegueError, OSError, RuntimeError):
                continue  # an agent that is down: /proc still counts its QEMU
            running += sum(1 for v in listed if v.name == self.name and v.state == "running")
        return running

    def _run(self) -> None:
        last: dict[int, int] = {}
        streak = 0
        while not self.stop.is_set():
            now: dict[int, int] = {}
            for pid in qemu_pids(self.uuid):
                ticks = vcpu_ticks(pid)
                if ticks is not None:
                    now[pid] = ticks
            active = [p for p, t in now.items() if p in last and t > last[p]]
            streak = streak + 1 if len(active) > 1 else 0
            if streak >= 3:
                self.violations.append(f"/proc: QEMUs {active} all ran for 150 ms")
            last = now
            self.samples += 1
            time.sleep(0.05)

    def _ask_agents(self) -> None:
        while not self.stop.is_set():
            if self._agents_running() > 1:
                self.violations.append("agents: two report the VM running")
            time.sleep(0.05)

    def finish(self) -> list[str]:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)
        for client in self.clients:
            client.close()
        if not (self.samples > 10):
            raise InvariantBroken("the sampler did not sample")
        return self.violations


# ---- the other invariants ----
def where_it_runs(plan: LabPlan, name: str) -> str:
    """The host whose agent reports the VM running (exactly one), waiting up to
    ``SETTLE_S`` for the hosts to settle."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        running = []
        for host in plan.hosts:
            with contextlib.suppress(SegueError):
                with guests.agent(host, timeout=5) as agent:
                    listed = agent.run(agent.client.list_vms())
                running += [host.name for v in listed if v.name == name and v.state == "running"]
        if len(running) == 1:
            return running[0]
        if time.monotonic() >= deadline:
            raise InvariantBroken(f"{name} runs on {running} after {SETTLE_S} s")
        time.sleep(0.5)


def check_invariants(plan: LabPlan, name: str, uuid: str, boot: str) -> str:
    """I2, I3 and I4 (module doc); the host that runs the VM."""
    owner = where_it_runs(plan, name)
    verdict = verify_fields(guests.verify_ip(plan, guest_ip(plan, name)))
    if not (verdict["result"] == "ok" and verdict["boot"] == boot):  # I2: memory
        raise InvariantBroken(f"the guest's checker says {verdict}")
    if not (verdict["disk_errors"] == "0" and int(verdict["disk_acked"]) > 0):  # disk
        raise InvariantBroken(f"the guest's checker says {verdict}")
    deadline = time.monotonic() + SETTLE_S
    while True:  # I3 and I4 settle through reconciliation
        problems = leftovers(plan, name, uuid, owner) + disagreement(plan, name, owner)
        if not problems:
            return owner
        if time.monotonic() >= deadline:
            raise InvariantBroken(f"not settled after {SETTLE_S} s: {problems}")
        time.sleep(0.5)


def leftovers(plan: LabPlan, name: str, uuid: str, owner: str) -> list[str]:
    problems = []
    pids = qemu_pids(uuid)
    if len(pids) != 1:
        problems.append(f"{len(pids)} QEMUs of {name}: {pids}")
    for host in plan.hosts:
        if host.name == owner:
            continue
        if (host.state_dir / "vms" / name).exists():
            problems.append(f"{name}'s runtime directory on {host.name}")
        links = netns.run_in_netns(host.netns, ["ip", "-o", "link"]).stdout
        if tap_name(uuid, 0) in links:
            problems.append(f"{name}'s tap on {host.name}")
    lease = json.loads((plan.hosts[0].datastore_dir / LEASE_DIR / f"vm-{uuid}.json").read_text())
    if lease["host"] != owner or lease["released"]:
        problems.append(f"lease {lease} is not held by {owner}")
    return problems


def disagreement(plan: LabPlan, name: str, owner: str) -> list[str]:
    with guests.controller(plan, timeout=10) as c:
        record = c.run(c.client.get_vm(name))
    if record.host != owner or record.state != "running":
        return [f"the controller says {record.host}/{record.state}, {name} runs on {owner}"]
    return []


def guest_ip(plan: LabPlan, name: str) -> str:
    with guests.controller(plan) as c:
        return guests.guest_ip(c.run(c.client.get_vm(name)).spec)


# ---- moving and breaking ----
def other(host: str) -> str:
    return "host2" if host == "host1" else "host1"


def start_move(plan: LabPlan, name: str, dest: str, **options: Any) -> str:
    with guests.controller(plan) as c:
        job = c.run(c.client.request_migration(
            name, MigrationRequestBody(to=dest, allow_postcopy=False, **options)))
    return job.id


def job_of(plan: LabPlan, job_id: str) -> Any:
    with guests.controller(plan) as c:
        return c.run(c.client.get_migration(job_id))


def wait_job(plan: LabPlan, job_id: str, timeout: float = 240) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        job = job_of(plan, job_id)
        if job.phase in ("completed", "failed", "cancelled"):
            return job
        if time.monotonic() >= deadline:
            raise InvariantBroken(f"job {job_id} still {job.phase}")
        time.sleep(0.3)


def wait_copying(plan: LabPlan, job_id: str, sent: int = 16 * 2**20) -> None:
    """Until the job's copy has sent ``sent`` bytes."""
    deadline = time.monotonic() + 120
    while True:
        job = job_of(plan, job_id)
        if job.phase == "monitor" and job.progress and job.progress.transferred >= sent:
            return
        if job.phase not in ("check", "prepare", "start", "monitor"):
            raise InvariantBroken(f"the job left the copy: {job.phase}")
        if time.monotonic() >= deadline:
            raise InvariantBroken("the copy did not start")
        time.sleep(0.05)


def kill_agent(lab: str, host: str) -> None:
    """SIGKILL the host's agent (its QEMUs keep running), as a crash would."""
    pid = load_state(lab).agents[host]
    if pid is None:
        raise RuntimeError(f"{host}'s agent does not run")
    os.kill(pid, signal.SIGKILL)
    stop_agent(lab, host)  # the lab forgets it (it is gone already)


@contextlib.contextmanager
def frozen_agent(lab: str, host: str) -> Iterator[int]:
    """The host's agent stopped (SIGSTOP: it answers nothing, as a hung process) inside
    the block, and continued (SIGCONT) after it unless it was killed meanwhile; its pid."""
    pid = load_state(lab).agents[host]
    if pid is None:
        raise RuntimeError(f"{host}'s agent does not run")
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def wait_running_on(plan: LabPlan, name: str, host: str, timeout: float = 120) -> None:
    """Until the host's agent reports the VM running."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(SegueError), guests.agent(plan.host(host), timeout=5) as agent:
            if any(v.name == name and v.state == "running"
                   for v in agent.run(agent.client.list_vms())):
                return
        if time.monotonic() >= deadline:
            raise InvariantBroken(f"{name} never ran on {host}")
        time.sleep(0.1)


def wait_phase(plan: LabPlan, job_id: str, phases: tuple[str, ...], timeout: float = 120
               ) -> str:
    """Until the job is in one of ``phases``; the phase."""
    deadline = time.monotonic() + timeout
    while (phase := job_of(plan, job_id).phase) not in phases:
        if phase in ("completed", "failed", "cancelled") or time.monotonic() >= deadline:
            raise InvariantBroken(f"job {job_id} is {phase}, never reached {phases}")
        time.sleep(0.02)
    return str(phase)


def power_off(plan: LabPlan, host: str) -> None:
    """Every process of the host killed and its links down, as a power loss."""
    ns = plan.host(host).netns
    pids = netns.pids_in_netns(ns)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    netns.kill_pids(pids)
    stop_agent(plan.name, host)
    for link in netns.run_in_netns(ns, ["ip", "-o", "link"]).stdout.splitlines():
        ifname = link.split(":")[1].strip().split("@")[0]
        if ifname != "lo":
            netns.run_in_netns(ns, ["ip", "link", "set", ifname, "down"])


def power_on(plan: LabPlan, host: str) -> None:
    ns = plan.host(host).netns
    for link in netns.run_in_netns(ns, ["ip", "-o", "link"]).stdout.splitlines():
        ifname = link.split(":")[1].strip().split("@")[0]
        netns.run_in_netns(ns, ["ip", "link", "set", ifname, "up"])
    start_agent(plan.name, host)
