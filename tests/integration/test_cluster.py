"""A real 3-host lab with real agents and real QEMU guests, driven as a user would.

One lab (``itest``) serves the module; each test leaves it as it found it. The last test
takes the lab down and checks that nothing is left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lab_cli
import pytest

from segue.api.inventory import VMView
from segue.clients.agent import AgentClient
from segue.clients.base import Blocking, decode_error
from segue.domain.errors import SegueError
from segue.image.builder import build_image
from segue.lab import guests, netns
from segue.lab.lab import lab_down, lab_status, lab_up, load_state, start_agent, stop_agent
from segue.lab.topology import LabPlan
from segue.qemu.process import pid_alive

pytestmark = pytest.mark.integration
LAB = "itest"


def segue(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the segue CLI as a user would; returns the finished process."""
    proc = subprocess.run([sys.executable, "-m", "segue", *args, "--name", LAB],
                          capture_output=True, text=True, timeout=300, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"segue {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


@pytest.fixture(scope="module")
def lab() -> Iterator[LabPlan]:
    lab_down(LAB)  # a crashed earlier run
    before = root_links()
    build_image()
    lab_up(LAB, 3)
    try:
        yield load_state(LAB).plan
    finally:
        report = lab_down(LAB)
        assert report.existed
    assert root_links() == before, "the lab must not touch the root namespace"


@pytest.fixture(scope="module")
def running(lab: LabPlan) -> dict[str, VMView]:
    """Two guests, on host1 and host2, dirtying memory, answering probes."""
    segue("lab", "vm", "create", "g1", "--host", "host1", "--dirty-mbps", "4")
    segue("lab", "vm", "create", "g2", "--host", "host2", "--memory", "192")
    for name in ("g1", "g2"):
        guests.wait_answering(lab, name, timeout=180)
    return {vm.name: vm for vm in guests.all_vms(lab)}


verify_fields = lab_cli.verify_fields


def test_guests_answer_the_prober_from_the_client_namespace(
        lab: LabPlan, running: dict[str, VMView]) -> None:
    for name in ("g1", "g2"):
        proc = segue("lab", "probe", name, "--seconds", "2", "--json")
        result = json.loads(proc.stdout)
        assert result["received"] > 0.9 * result["sent"] > 100, result
        assert len(result["boot_ids"]) == 1, result
        assert result["guest_errors"] == 0
    assert running["g1"].host == "host1" and running["g2"].host == "host2"


def test_guest_memory_verifies_clean_while_dirtying(lab: LabPlan, running: dict[str, VMView]
                                                    ) -> None:
    first = verify_fields(guests.verify_vm(lab, "g1"))
    time.sleep(2)
    second = verify_fields(guests.verify_vm(lab, "g1"))
    assert first["result"] == second["result"] == "ok"
    assert first["boot"] == second["boot"]
    assert int(second["dirtied_mib"]) > int(first["dirtied_mib"]), "the checker must dirty pages"
    assert segue("lab", "verify", "g2").returncode == 0


def test_heartbeats_reach_the_serial_log(lab: LabPlan, running: dict[str, VMView]) -> None:
    proc = segue("lab", "vm", "serial", "g1", "--lines", "5")
    beats = [line for line in proc.stdout.splitlines() if line.startswith("HB ")]
    assert beats, proc.stdout
    time.sleep(0.5)
    later = segue("lab", "vm", "serial", "g1", "--lines", "5").stdout.splitlines()
    assert later[-1] != beats[-1], "heartbeats must keep coming"


def test_host_facts_are_real(lab: LabPlan) -> None:
    facts = json.loads(segue("lab", "facts", "host2", "--json").stdout)
    assert facts["name"] == "host2"
    assert facts["cpu"]["accel"] in ("kvm", "tcg") and facts["cpu"]["accel_reason"]
    assert "sse2" in facts["cpu"]["features"]
    assert facts["migration"]["interface"] == "mig0" and facts["migration"]["up"]
    assert "10.210.1.12" in facts["migration"]["addresses"]
    assert facts["migration"]["speed_mbps"] and facts["migration"]["speed_mbps"] >= 1000
    assert [(p["name"], p["up"]) for p in facts["port_groups"]] == [("vm-net", True)]
    assert facts["datastores"][0]["uuid"]
    assert facts["memory"]["total_mib"] > facts["memory"]["available_mib"] > 0


def test_agent_restart_adopts_running_vm(lab: LabPlan, running: dict[str, VMView]) -> None:
    host = lab.host("host1")
    before = guests.find_vm(lab, "g1")[1]
    boot = verify_fields(guests.verify_vm(lab, "g1"))["boot"]
    stop_agent(LAB, "host1")
    assert before.pid is not None and pid_alive(before.pid), \
        "stopping the agent must not stop its VMs"
    ip = guests.guest_ip(before)
    assert verify_fields(guests.verify_ip(lab, ip))["boot"] == boot
    start_agent(LAB, "host1")
    with guests.agent(host) as agent:
        after = agent.run(agent.client.get_vm("g1"))
    assert after.adopted is True and after.pid == before.pid
    assert after.state == "running"
    assert verify_fields(guests.verify_vm(lab, "g1"))["boot"] == boot
    assert lab_status(LAB).up


def expect_error(code: str, *args: str) -> str:
    proc = segue(*args, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert code in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


def vm_names(lab: LabPlan) -> set[str]:
    return {vm.name for vm in guests.all_vms(lab)}


def define_raw(agent: Blocking[AgentClient], body: dict[str, Any]) -> SegueError | None:
    """POST a VM body as given (no client-side model) and start it; the agent's error."""
    resp = agent.run(agent.client._http.post("/vms", json=body, params={"start": "true"}))
    return decode_error(resp, "agent") if resp.status_code >= 400 else None


def test_bad_input_is_refused_and_changes_nothing(lab: LabPlan, running: dict[str, VMView]
                                                  ) -> None:
    before = vm_names(lab)
    files = sorted(p.name for p in lab.datastore_dir.iterdir())
    expect_error("VM_EXISTS", "lab", "vm", "create", "g1", "--host", "host3")
    expect_error("MEMORY_EXCEEDS_HOST", "lab", "vm", "create", "big", "--host", "host3",
                 "--memory", str(512 * 1024))
    expect_error("LAB_HOST_NOT_FOUND", "lab", "vm", "create", "x", "--host", "host9")
    expect_error("LAB_EXISTS", "lab", "up")
    expect_error("VM_NOT_FOUND", "lab", "probe", "nosuchvm")
    host3 = lab.host("host3")
    image = build_image()
    spec = guests.guest_spec(lab, "x1", image, guests.GuestOptions()).model_dump()
    g1_mac = running["g1"].spec.nics[0].mac
    cases = {
        "PORTGROUP_NOT_FOUND": {**spec,
                                "nics": [{"port_group": "dmz", "mac": "52:54:00:aa:00:01"}]},
        "DATASTORE_NOT_FOUND": {**spec, "datastore": "nfs9"},
        "MAC_IN_USE": {**spec, "nics": [{"port_group": "vm-net", "mac": g1_mac.upper()}]},
        "IMAGE_NOT_FOUND": {**spec, "kernel": str(image.kernel.parent / "no-vmlinuz")},
        "VM_SPEC_INVALID": {**spec, "name": "Bad Name!"},
        # a host file is no VM's: only files under the datastores and image dirs are
        "PATH_OUTSIDE_DATASTORE": {**spec, "kernel": "/etc/hostname"},
        "SERIAL_LOG_OUTSIDE_RUNTIME": {**spec, "serial_log": "/etc/hostname"},
        # QEMU itself refuses a file that is no kernel: the define is undone too
        "QEMU_LAUNCH_FAILED": {**spec, "kernel": str(image.kernel.parent / "image.json")},
    }
    with guests.agent(host3) as agent:
        for code, bad in cases.items():
            err = define_raw(agent, bad)
            assert err is not None, code
            assert err.code == code, err
            assert err.hint
    assert vm_names(lab) == before
    assert not [p for p in qemu_pids_of(lab)
                if b"guest=x1," in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert sorted(p.name for p in lab.datastore_dir.iterdir()) == files
    assert not list((host3.state_dir / "vms").glob("*"))


def test_stop_then_destroy(lab: LabPlan, running: dict[str, VMView]) -> None:
    pid = guests.find_vm(lab, "g2")[1].pid
    assert pid is not None
    proc = segue("lab", "vm", "stop", "g2", "--timeout", "60")
    assert "stopped" in proc.stdout and "guest shut down" in proc.stdout, proc.stdout
    assert not pid_alive(pid)
    expect_error("VM_NOT_RUNNING", "lab", "vm", "stop", "g2")
    segue("lab", "vm", "start", "g2")
    guests.wait_answering(lab, "g2", timeout=180)
    pid = guests.find_vm(lab, "g2")[1].pid
    assert pid is not None
    segue("lab", "vm", "destroy", "g2")
    assert not pid_alive(pid)
    assert "g2" not in vm_names(lab)
    assert not (lab.datastore_dir / "g2").exists()
    assert not (lab.host("host2").state_dir / "vms" / "g2").exists()


def qemu_pids_of(plan: LabPlan) -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"qemu-system" in cmd and str(plan.lab_dir).encode() in cmd:
                out.append(int(proc.name))
    return out


def test_own_disk_image_boots_and_destroy_keeps_the_disk(lab: LabPlan) -> None:
    disk = lab.datastore_dir / "disks" / "blank.qcow2"
    disk.parent.mkdir(exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    proc = segue("lab", "vm", "create", "own1", "--host", "host3", "--memory", "128",
                 "--disk", "disks/blank.qcow2")
    assert "own1 on host3: running" in proc.stdout, proc.stdout
    info = guests.find_vm(lab, "own1")[1]
    assert info.spec.disks[0].format == "qcow2" and info.spec.kernel is None
    assert str(disk).encode() in Path(f"/proc/{info.pid}/cmdline").read_bytes()
    expect_error("DISK_NOT_FOUND", "lab", "vm", "create", "own2", "--host", "host3",
                 "--disk", "disks/missing.qcow2")
    segue("lab", "vm", "destroy", "own1")
    assert info.pid is not None and not pid_alive(info.pid) and disk.exists()
    disk.unlink()
    disk.parent.rmdir()


def test_zz_lab_down_leaves_nothing(lab: LabPlan, running: dict[str, VMView]) -> None:
    guest_pids = qemu_pids_of(lab)
    agent_pids = [h.agent_pid for h in lab_status(LAB).hosts if h.agent_pid]
    assert guest_pids and len(agent_pids) == 3
    segue("lab", "down")
    assert not [ns for ns in netns.list_namespaces() if ns.startswith(f"{LAB}-")]
    assert not any(pid_alive(p) for p in guest_pids + agent_pids)
    assert not qemu_pids_of(lab)
    assert not lab.lab_dir.exists()
    lab_up(LAB, 3)  # lab up after down works; the module fixture takes it down again
