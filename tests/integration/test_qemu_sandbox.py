"""QEMU under its seccomp filter, for real: a 2-host lab (``sbxtest``) whose agents start
every QEMU with ``-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,
resourcecontrol=deny`` (the agent's default, ``qemu_sandbox``). A TCG guest that dirties
memory boots, is migrated pre-copy to host2 and back with post-copy forced (userfaultfd on
the destination), and its checker verifies its memory after each move; every QEMU that runs
it is in seccomp filter mode (``Seccomp: 2``) and was not started with ``-daemonize``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lab_cli
import pytest

from segue.image.builder import build_image
from segue.lab import guests, netns
from segue.lab.lab import lab_down, lab_up, load_state
from segue.lab.topology import LabPlan
from segue.qemu.argv import SANDBOX

pytestmark = pytest.mark.integration
LAB = "sbxtest"
VM = "sbx1"


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
                        "host1", "--dirty-mbps", "8", "--hot-mib", "32", "--name", LAB],
                       check=True, capture_output=True, timeout=300, env=env)
        guests.wait_answering(plan, VM, timeout=180)
        yield plan
    finally:
        lab_down(LAB)
    assert not netns.list_namespaces(f"{LAB}-")


def qemu_of_vm(plan: LabPlan) -> tuple[str, int]:
    """The host that runs the VM and its QEMU's pid, as that host's agent says."""
    host, _ = guests.find_vm(plan, VM)
    with guests.agent(host) as agent:
        info = agent.run(agent.client.get_vm(VM))
    assert info.pid is not None and info.state == "running", info
    return host.name, info.pid


def assert_confined(pid: int) -> None:
    status = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    assert status["Seccomp"].strip() == "2", status["Seccomp"]  # filter mode
    assert status["NoNewPrivs"].strip() == "1", status["NoNewPrivs"]
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    assert "-daemonize" not in args
    assert args[args.index("-sandbox") + 1] == SANDBOX


def wait_job(job_id: str, until: tuple[str, ...], timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = segue("migration", "show", job_id, "--json")
        if job["phase"] in until or job["phase"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"migration {job_id} did not reach {until}")


def verified_boot(plan: LabPlan) -> str:
    verdict = lab_cli.verify_fields(guests.verify_vm(plan, VM))
    assert verdict["result"] == "ok", verdict
    return verdict["boot"]


def test_hosts_report_the_sandbox_in_their_facts(lab: LabPlan) -> None:
    for name in ("host1", "host2"):
        with guests.agent(lab.host(name)) as agent:
            assert agent.run(agent.client.facts()).qemu.sandbox is True


def test_a_confined_vm_migrates_pre_copy_and_post_copy(lab: LabPlan) -> None:
    host, pid = qemu_of_vm(lab)
    assert host == "host1"
    assert_confined(pid)
    boot = verified_boot(lab)

    job = segue("vm", "migrate", VM, "--to", "host2", "--json", "--no-postcopy")
    job = wait_job(job["id"], ())
    assert job["phase"] == "completed", job
    host, pid = qemu_of_vm(lab)
    assert host == "host2"
    assert_confined(pid)
    assert verified_boot(lab) == boot

    # back with post-copy at once, most of the memory still to come: the destination's
    # QEMU (confined from its start) takes its page faults through userfaultfd
    job = segue("vm", "migrate", VM, "--to", "host1", "--json", "--no-wait",
                "--max-bandwidth", "8")
    wait_job(job["id"], ("monitor",))
    asked = segue("migration", "postcopy", job["id"], "--json")
    assert asked["phase"] in ("monitor", "postcopy"), asked
    job = wait_job(job["id"], ())
    assert job["phase"] == "completed", job
    assert job["summary"]["postcopy"] is True, job["summary"]
    host, pid = qemu_of_vm(lab)
    assert host == "host1"
    assert_confined(pid)
    assert verified_boot(lab) == boot
