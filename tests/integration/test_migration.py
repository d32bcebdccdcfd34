"""Live migration for real: a 2-host lab, its controller, TCG guests whose checker dirties
memory and appends records to a journal disk on the shared datastore, driven with the CLI as a
user would.

Every migration is watched by a sampler that asks both agents every 100 ms how many QEMUs
run the VM; the VM's memory and disk journal are verified by its checker after every move.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import lab_cli
import pytest

from segue.api.migration import MigrationRequestBody
from segue.clients.agent import AgentClient
from segue.clients.base import Blocking
from segue.image.builder import build_image
from segue.image.protocol import parse_heartbeat
from segue.lab import guests, netns
from segue.lab.lab import (
    lab_down,
    lab_up,
    load_state,
    start_agent,
    start_controller,
    stop_agent,
    stop_controller,
)
from segue.lab.topology import LabPlan
from segue.qemu.process import pid_alive

pytestmark = pytest.mark.integration
LAB = "mtest"


def segue(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return lab_cli.run(LAB, *args, check=check, timeout=timeout)


def expect_error(code: str, *args: str) -> None:
    proc = segue(*args, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert code in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def lab() -> Iterator[LabPlan]:
    lab_down(LAB)
    build_image()
    lab_up(LAB, 2)
    try:
        yield load_state(LAB).plan
    finally:
        lab_down(LAB)
    assert not netns.list_namespaces(f"{LAB}-")


def create_guest(plan: LabPlan, name: str, host: str, dirty_mbps: int, disk_mib: int = 0
                 ) -> None:
    segue("lab", "vm", "create", name, "--host", host, "--dirty-mbps", str(dirty_mbps),
          "--hot-mib", "16", "--disk-mib", str(disk_mib), "--name", LAB)
    guests.wait_answering(plan, name, timeout=180)


@pytest.fixture(scope="module")
def vm(lab: LabPlan) -> str:
    create_guest(lab, "mig1", "host1", dirty_mbps=8, disk_mib=64)  # > 40 min at 50 records/s
    return "mig1"


fields = lab_cli.verify_fields


class Sampler:
    """Every 100 ms: how many QEMUs run the VM (QMP status running), over both agents.

    The destination is asked first: a destination that already runs, then a source that
    still runs, can only be both running at once (asked the other way round, a source seen
    just before its STOP and a destination just after its RESUME would look like two).
    """

    def __init__(self, plan: LabPlan, name: str, dest: str) -> None:
        order = sorted(plan.hosts, key=lambda h: h.name != dest)
        self.clients = [Blocking(AgentClient(f"unix:{h.agent_socket}", timeout=5))
                        for h in order]
        self.name = name
        self.samples: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _count(self) -> int:
        running = 0
        for agent in self.clients:
            for info in agent.run(agent.client.list_vms()):
                if info.name == self.name and info.state == "running":
                    running += 1
        return running

    def _run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(self._count())
            time.sleep(0.1)

    def finish(self) -> list[int]:
        self.stop.set()
        self.thread.join(timeout=10)
        for client in self.clients:
            client.close()
        return self.samples


def host_of(plan: LabPlan, name: str) -> str:
    return str(guests.find_vm(plan, name)[0].name)


def migrate(plan: LabPlan, name: str, to: str, *extra: str) -> dict[str, Any]:
    proc = segue("vm", "migrate", name, "--to", to, "--json", *extra, check=False)
    job: dict[str, Any] = json.loads(proc.stdout)
    return job


def last_heartbeat_seq(plan: LabPlan, name: str) -> int:
    host, _ = guests.find_vm(plan, name)
    with guests.agent(host) as agent:
        lines = agent.run(agent.client.serial(name, 20))
    # the last line may be one the guest is still writing: the last whole heartbeat counts
    beats = [b for b in map(parse_heartbeat, lines) if b is not None]
    assert beats, lines
    return beats[-1].seq


def test_five_round_trips_keep_memory_identity_and_one_running_qemu(lab: LabPlan, vm: str
                                                                      ) -> None:
    first = fields(guests.verify_vm(lab, vm))
    boot, acked = first["boot"], int(first["disk_acked"])
    assert acked > 0 and first["disk_errors"] == "0", first  # the journal runs
    mac = guests.find_vm(lab, vm)[1].spec.nics[0].mac
    for trip in range(5):
        for dest in ("host2", "host1"):
            seq_before = last_heartbeat_seq(lab, vm)
            sampler = Sampler(lab, vm, dest)
            job = migrate(lab, vm, dest)
            samples = sampler.finish()
            assert job["phase"] == "completed", job
            assert host_of(lab, vm) == dest
            assert max(samples) == 1, f"trip {trip}: two QEMUs ran the VM at once: {samples}"
            assert samples.count(1) >= len(samples) - 10, samples  # blackout: a few samples
            verdict = fields(guests.verify_vm(lab, vm))
            assert verdict["boot"] == boot and verdict["result"] == "ok", verdict
            # no acknowledged record lost or reordered, and the journal went on writing
            assert verdict["disk_errors"] == "0" and verdict["disk_full"] == "0", verdict
            assert int(verdict["disk_records"]) >= int(verdict["disk_acked"]) > acked, verdict
            acked = int(verdict["disk_acked"])
            assert last_heartbeat_seq(lab, vm) > seq_before
            info = guests.find_vm(lab, vm)[1]
            assert info.spec.nics[0].mac == mac
            summary = job["summary"]
            assert summary["bytes_sent"] > 0 and summary["iterations"] >= 1
            # QEMU's own clocks: the destination resumed only after the source stopped
            assert summary["switchover_ms"] is not None and summary["switchover_ms"] > 0
            assert summary["qemu_downtime_ms"] is not None


def test_prober_sees_a_short_blackout_and_no_reboot(lab: LabPlan, vm: str) -> None:
    src = host_of(lab, vm)
    dest = "host2" if src == "host1" else "host1"
    probe = guests.BackgroundProbe(lab, guests.guest_ip(guests.find_vm(lab, vm)[1]))
    job = migrate(lab, vm, dest)
    result = probe.stop()
    assert job["phase"] == "completed", job
    assert len(result["boot_ids"]) == 1, result
    assert result["received"] > 0.8 * result["sent"], result
    assert result["longest_gap_ms"] < 5000, result


def kill_dest_qemu_when_copying(plan: LabPlan, name: str, dest: str) -> None:
    deadline = time.monotonic() + 60
    with guests.agent(plan.host(dest)) as agent:
        while time.monotonic() < deadline:
            for info in agent.run(agent.client.list_vms()):
                if info.name == name and info.pid:
                    time.sleep(1.0)  # let the copy start
                    os.kill(info.pid, 9)
                    return
            time.sleep(0.05)
    raise AssertionError("no incoming QEMU appeared")


@contextlib.contextmanager
def slow_link(plan: LabPlan, host: str, mbit: int = 16) -> Iterator[None]:
    """The host's migration link shaped to ``mbit`` Mbit/s (2 MB/s): migrations from it last
    long enough to be interrupted. (Not QEMU's max-bandwidth: see shape_migration_link.)"""
    guests.shape_migration_link(plan, host, mbit)
    try:
        yield
    finally:
        guests.shape_migration_link(plan, host, None)


def start_slow(name: str, dest: str) -> str:
    # without post-copy: these tests interrupt the copy and expect the VM back on its source
    proc = segue("vm", "migrate", name, "--to", dest, "--no-wait", "--json", "--no-postcopy")
    return str(json.loads(proc.stdout)["id"])


def wait_job(job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = json.loads(segue("migration", "show", job_id, "--json").stdout)
        if job["phase"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.3)
    raise AssertionError(f"migration {job_id} did not end")


def wait_phase(job_id: str, phase: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while json.loads(segue("migration", "show", job_id, "--json").stdout)["phase"] != phase:
        assert time.monotonic() < deadline, f"migration {job_id} never reached {phase}"
        time.sleep(0.2)


def assert_back_on_source(plan: LabPlan, name: str, src: str, dest: str, boot: str) -> None:
    assert host_of(plan, name) == src
    verdict = fields(guests.verify_vm(plan, name))
    assert verdict["boot"] == boot and verdict["result"] == "ok", verdict
    with guests.agent(plan.host(dest)) as agent:
        assert name not in [v.name for v in agent.run(agent.client.list_vms())], \
            "destination left behind"
    job = migrate(plan, name, dest)  # and a following migration succeeds
    assert job["phase"] == "completed", job


def test_destination_qemu_killed_mid_migration(lab: LabPlan, vm: str) -> None:
    src = host_of(lab, vm)
    dest = "host2" if src == "host1" else "host1"
    boot = fields(guests.verify_vm(lab, vm))["boot"]
    with slow_link(lab, src):
        job_id = start_slow(vm, dest)
        kill_dest_qemu_when_copying(lab, vm, dest)
        job = wait_job(job_id)
    assert job["phase"] == "failed" and job["reason"], job
    assert_back_on_source(lab, vm, src, dest, boot)


def test_migration_link_cut_mid_migration(lab: LabPlan, vm: str) -> None:
    src = host_of(lab, vm)
    dest = "host2" if src == "host1" else "host1"
    boot = fields(guests.verify_vm(lab, vm))["boot"]
    ns = lab.host(dest).netns
    with slow_link(lab, src):
        proc = segue("vm", "migrate", vm, "--to", dest, "--no-wait", "--json",
                     "--stall-timeout", "4", "--no-postcopy")
        job_id = json.loads(proc.stdout)["id"]
        time.sleep(2.0)
        netns.run_in_netns(ns, ["ip", "link", "set", "mig0", "down"])
        try:
            job = wait_job(job_id)
        finally:
            netns.run_in_netns(ns, ["ip", "link", "set", "mig0", "up"])
    assert job["phase"] == "failed" and job["error_code"] == "MIGRATION_STALLED", job
    time.sleep(1.0)  # the link is back
    assert_back_on_source(lab, vm, src, dest, boot)


def test_cancel_during_copy(lab: LabPlan, vm: str) -> None:
    src = host_of(lab, vm)
    dest = "host2" if src == "host1" else "host1"
    boot = fields(guests.verify_vm(lab, vm))["boot"]
    with slow_link(lab, src):
        job_id = start_slow(vm, dest)
        wait_phase(job_id, "monitor")
        segue("migration", "cancel", job_id)
        job = wait_job(job_id)
    assert job["phase"] == "cancelled", job
    assert_back_on_source(lab, vm, src, dest, boot)


def cancel_in(plan: LabPlan, job_id: str, phase: str, timeout: float = 60) -> list[str]:
    """Poll the job every 10 ms; cancel it as soon as it is in ``phase``; the phases seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    with guests.controller(plan) as c:
        while time.monotonic() < deadline:
            now = c.run(c.client.get_migration(job_id)).phase
            if not seen or seen[-1] != now:
                seen.append(now)
            if now == phase:
                c.run(c.client.cancel_migration(job_id))
                return seen
            assert now not in ("completed", "failed", "cancelled"), seen
            time.sleep(0.01)
    raise AssertionError(f"migration {job_id} never reached {phase}: {seen}")


# A request runs its checks before it answers and the job it creates starts in ``check``: the
# ``check`` case cancels as soon as that answer arrives. ``prepare`` lasts while the
# destination QEMU starts and the link and the dirty rate are measured; ``start`` is one agent
# call (capabilities, parameters, ``migrate``): a cancel arriving during it is acted on at the
# first ``monitor`` sample, which the ``monitor`` case covers. Once the destination may run
# the VM (switchover, post-copy, finalize) cancel is refused (MIGRATION_NOT_CANCELLABLE,
# component tests); a queued job is cancelled in the queue test.
@pytest.mark.parametrize("phase", ["check", "prepare", "monitor"])
def test_cancel_in_every_cancellable_phase(lab: LabPlan, vm: str, phase: str) -> None:
    src = host_of(lab, vm)
    dest = "host2" if src == "host1" else "host1"
    boot = fields(guests.verify_vm(lab, vm))["boot"]
    with slow_link(lab, src), guests.controller(lab) as c:
        asked = c.run(c.client.request_migration(
            vm, MigrationRequestBody(to=dest, allow_postcopy=False)))
        assert asked.phase == "check", asked
        seen = [asked.phase] if phase == "check" else cancel_in(lab, asked.id, phase)
        if phase == "check":
            c.run(c.client.cancel_migration(asked.id))
        job = wait_job(asked.id)
    assert job["phase"] == "cancelled", (seen, job)
    assert [t["to"] for t in job["transitions"]][-2:] == ["rolling_back", "cancelled"], job
    assert phase in [t["to"] for t in job["transitions"]]
    assert_back_on_source(lab, vm, src, dest, boot)


def test_bad_requests_change_nothing(lab: LabPlan, vm: str) -> None:
    src = host_of(lab, vm)
    dest = "host2" if src == "host1" else "host1"
    before = json.loads(segue("migration", "list", "--json").stdout)
    expect_error("VM_NOT_FOUND", "vm", "migrate", "nosuchvm", "--to", dest)
    expect_error("HOST_NOT_FOUND", "vm", "migrate", vm, "--to", "host9")
    expect_error("MIGRATION_SAME_HOST", "vm", "migrate", vm, "--to", src)
    segue("lab", "vm", "create", "idle1", "--host", src, "--no-start", "--name", LAB)
    expect_error("VM_NOT_RUNNING", "vm", "migrate", "idle1", "--to", dest)
    with slow_link(lab, src):
        job_id = start_slow(vm, dest)
        expect_error("MIGRATION_IN_PROGRESS", "vm", "migrate", vm, "--to", dest)
        segue("migration", "cancel", job_id)
        assert wait_job(job_id)["phase"] == "cancelled"
    stop_agent(LAB, dest)
    try:
        expect_error("AGENT_UNREACHABLE", "vm", "migrate", vm, "--to", dest)
    finally:
        start_agent(LAB, dest)
    after = json.loads(segue("migration", "list", "--json").stdout)
    assert len(after) == len(before) + 1  # only the cancelled one
    assert host_of(lab, vm) == src
    pid = guests.find_vm(lab, vm)[1].pid
    assert pid is not None and pid_alive(pid)


def test_controller_crash_mid_migration_is_reconciled(lab: LabPlan, vm: str) -> None:
    """A controller killed while a copy runs: the restarted one finishes or undoes the job;
    either way exactly one QEMU runs the VM, its memory intact, and the VM can move again."""
    src = host_of(lab, vm)
    dest = "host2" if src == "host1" else "host1"
    boot = fields(guests.verify_vm(lab, vm))["boot"]
    with slow_link(lab, src):
        job_id = start_slow(vm, dest)
        wait_phase(job_id, "monitor")
        stop_controller(LAB, crash=True)
        start_controller(LAB)
        job = wait_job(job_id)
    assert job["phase"] in ("failed", "completed"), job
    if job["phase"] == "failed":
        assert job["error_code"] == "CONTROLLER_RESTARTED", job
    owner = host_of(lab, vm)
    assert owner == (src if job["phase"] == "failed" else dest)
    verdict = fields(guests.verify_vm(lab, vm))
    assert verdict["boot"] == boot and verdict["result"] == "ok", verdict
    other = dest if owner == src else src
    with guests.agent(lab.host(other)) as agent:
        assert vm not in [v.name for v in agent.run(agent.client.list_vms())], \
            "a second QEMU was left"
    assert migrate(lab, vm, other)["phase"] == "completed"
