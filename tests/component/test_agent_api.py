"""The agent's HTTP API against a fake QEMU that runs detached and speaks real QMP."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import uvicorn

from segue.agent.app import create_app
from segue.agent.facts import QemuCapabilities
from segue.agent.facts_parse import parse_meminfo
from segue.api.vm import VMSpecBody
from segue.clients.agent import AgentClient
from segue.clients.base import Blocking
from segue.domain.errors import Conflict, NotFound
from segue.domain.vm import VMSpec, VMState
from segue.qemu import process
from segue.qemu.argv import LaunchPlan, RuntimePaths, build_argv
from segue.qemu.direct_io import probe_direct_io
from segue.qemu.qmp import QMPCommandFailed, QMPSession

if TYPE_CHECKING:  # fixtures come from conftest.py; only their types are imported
    from conftest import AgentFactory, Lab

def tree(*roots: Path) -> dict[str, bytes | None]:
    """Every file and directory under the roots, with file contents (to compare snapshots);
    a datastore's lease directory and its lock file are the cluster's, not a VM's (a lock
    file is never removed: hosts must flock the same one), but any lease in it counts."""
    out: dict[str, bytes | None] = {}
    for root in roots:
        if not root.exists():
            out[str(root)] = b"<absent>"
            continue
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root).parts
            if relative[:1] == (".segue",) and (len(relative) < 3 or relative[2] == ".lock"):
                continue
            out[str(path)] = path.read_bytes() if path.is_file() else None
    return out


def error_of(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error", "kind"}, body
    return dict(body["error"])


async def define(http: httpx.AsyncClient, spec: dict[str, Any]) -> dict[str, Any]:
    resp = await http.post("/vms", json=spec)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def start(http: httpx.AsyncClient, name: str) -> dict[str, Any]:
    resp = await http.post(f"/vms/{name}/start")
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


async def events(http: httpx.AsyncClient, name: str) -> list[dict[str, Any]]:
    resp = await http.get(f"/vms/{name}/events")
    assert resp.status_code == 200, resp.text
    return list(resp.json())


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def vm_dir(lab: Lab, name: str) -> Path:
    return lab.state_dir / "vms" / name


def write_foreign_vm(lab: Lab, name: str, host: str, macs: list[str]) -> None:
    """A VM defined by another host sharing the datastore (its vm.json, as VMStore writes it)."""
    spec = {"name": name, "datastore": "shared", "uuid": "5d2b3c4d-0000-4000-8000-00000000abcd",
            "memory_mib": 64, "vcpus": 1, "cpu_model": "qemu64", "machine": "pc-i440fx-7.2",
            "nics": [{"port_group": "vm-net", "mac": m, "model": "virtio-net-pci"} for m in macs],
            "disks": [], "kernel": "/images/vmlinuz", "initrd": None, "cmdline": "",
            "serial_log": None}
    (lab.datastore / name).mkdir()
    (lab.datastore / name / "vm.json").write_text(json.dumps({"host": host, "spec": spec}))


# ---- the life of a VM ----

async def test_define_start_acpi_stop(lab: Lab, agent: AgentFactory) -> None:
    async with agent() as http:
        defined = await define(http, lab.spec("web1"))
        assert defined["state"] == "stopped" and defined["pid"] is None
        assert defined["spec"]["machine"] == "pc-i440fx-7.2"  # alias resolved at define
        vm_uuid = defined["uuid"]
        assert len(vm_uuid) == 36

        shared = json.loads((lab.datastore / "web1" / "vm.json").read_text())
        assert shared["host"] == "host1"
        assert shared["spec"]["uuid"] == vm_uuid
        local = json.loads((vm_dir(lab, "web1") / "spec.json").read_text())
        assert local == shared["spec"]

        started = await start(http, "web1")
        pid = started["pid"]
        assert started["state"] == "running"
        assert started["accel"] == "tcg" and started["adopted"] is False
        assert process.is_qemu_of(pid, vm_uuid)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"-S" in cmdline and b"-sandbox" in cmdline and b"-daemonize" not in cmdline
        assert str(lab.kernel).encode() in cmdline
        assert (vm_dir(lab, "web1") / "qmp.sock").exists()
        assert process.read_pid(vm_dir(lab, "web1") / "qemu.pid") == pid

        shown = (await http.get("/vms/web1")).json()
        assert shown["state"] == "running" and shown["pid"] == pid
        listed = (await http.get("/vms")).json()
        assert [(v["name"], v["state"]) for v in listed] == [("web1", "running")]

        resumes = [e for e in await events(http, "web1") if e["event"] == "RESUME"]
        assert len(resumes) == 1
        assert abs(resumes[0]["timestamp"] - time.time()) < 30

        resp = await http.post("/vms/web1/stop", params={"timeout": 10})
        assert resp.status_code == 200, resp.text
        stopped = resp.json()
        assert stopped["state"] == "stopped" and stopped["pid"] is None
        assert "guest shut down" in stopped["last_exit"]
        assert not process.pid_alive(pid)
        assert not (vm_dir(lab, "web1") / "qemu.pid").exists()
        assert not (vm_dir(lab, "web1") / "qmp.sock").exists()
        names = [e["event"] for e in await events(http, "web1")]
        assert names.index("RESUME") < names.index("POWERDOWN") < names.index("SHUTDOWN")
        shutdown = next(e for e in await events(http, "web1") if e["event"] == "SHUTDOWN")
        assert shutdown["data"] == {"guest": True, "reason": "guest-shutdown"}
        since = (await http.get("/vms/web1/events", params={"since": 1})).json()
        assert [e["seq"] for e in since] == list(range(2, len(names) + 1))
        # the definition stays after a stop
        assert (lab.datastore / "web1" / "vm.json").exists()


async def test_stop_falls_back_to_hard_power_off(lab: Lab, agent: AgentFactory,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_IGNORE_ACPI", "1")
    async with agent() as http:
        await define(http, lab.spec("web1"))
        pid = (await start(http, "web1"))["pid"]
        t0 = time.monotonic()
        resp = await http.post("/vms/web1/stop", params={"timeout": 1})
        assert resp.status_code == 200, resp.text
        assert time.monotonic() - t0 >= 1.0  # the guest was given its time
        stopped = resp.json()
        assert stopped["state"] == "stopped"
        assert "no ACPI shutdown within 1 s" in stopped["last_exit"]
        assert "powered off" in stopped["last_exit"]
        assert not process.pid_alive(pid)
        assert "POWERDOWN" in [e["event"] for e in await events(http, "web1")]


async def test_force_stop_skips_acpi(lab: Lab, agent: AgentFactory) -> None:
    async with agent() as http:
        await define(http, lab.spec("web1"))
        pid = (await start(http, "web1"))["pid"]
        resp = await http.post("/vms/web1/stop", params={"force": True})
        assert resp.status_code == 200, resp.text
        assert resp.json()["state"] == "stopped"
        assert resp.json()["last_exit"] == "powered off"
        assert "POWERDOWN" not in [e["event"] for e in await events(http, "web1")]
        assert not process.pid_alive(pid)


async def test_define_with_start_runs_the_vm(lab: Lab, agent: AgentFactory) -> None:
    async with agent() as http:
        resp = await http.post("/vms", json=lab.spec("web1"), params={"start": True})
        assert resp.status_code == 201, resp.text
        assert resp.json()["state"] == "running"
        assert process.is_qemu_of(resp.json()["pid"], resp.json()["uuid"])
        assert (await http.delete("/vms/web1")).status_code == 204


async def test_destroy_running_vm_removes_everything(lab: Lab, agent: AgentFactory) -> None:
    async with agent() as http:
        await define(http, lab.spec("web1"))
        await define(http, lab.spec("web2"))
        pid = (await start(http, "web1"))["pid"]
        # a user file in the VM's datastore dir is not the agent's to delete
        (lab.datastore / "web2" / "disk0.qcow2").write_bytes(b"user data")

        assert (await http.delete("/vms/web1")).status_code == 204
        assert not process.pid_alive(pid)
        assert not vm_dir(lab, "web1").exists()
        assert not (lab.datastore / "web1").exists()
        assert (await http.get("/vms/web1")).status_code == 404

        assert (await http.delete("/vms/web2")).status_code == 204
        assert not vm_dir(lab, "web2").exists()
        assert not (lab.datastore / "web2" / "vm.json").exists()
        assert (lab.datastore / "web2" / "disk0.qcow2").read_bytes() == b"user data"
        assert (await http.get("/vms")).json() == []


async def test_vm_killed_behind_the_agents_back_becomes_stopped(
        lab: Lab, agent: AgentFactory) -> None:
    async with agent() as http:
        await define(http, lab.spec("web1"))
        pid = (await start(http, "web1"))["pid"]
        os.kill(pid, signal.SIGKILL)

        async def stopped() -> bool:
            return bool((await http.get("/vms/web1")).json()["state"] == "stopped")

        await wait_for(stopped)
        assert not (vm_dir(lab, "web1") / "qmp.sock").exists()
        assert not (vm_dir(lab, "web1") / "qemu.pid").exists()
        # and it can be started again
        assert (await start(http, "web1"))["state"] == "running"


async def test_sigterm_from_the_host_is_not_reported_as_guest_shutdown(
        lab: Lab, agent: AgentFactory) -> None:
    async with agent() as http:
        await define(http, lab.spec("web1"))
        pid = (await start(http, "web1"))["pid"]
        os.kill(pid, signal.SIGTERM)  # QEMU answers SIGTERM with SHUTDOWN host-signal
        # Let the watcher read the event before anything writes to the dead socket (a write
        # error makes qemu.qmp drop what it had not read yet).
        await wait_for(lambda: asyncio.sleep(0, not process.pid_alive(pid)))
        await asyncio.sleep(0.5)

        async def stopped() -> bool:
            return bool((await http.get("/vms/web1")).json()["state"] == "stopped")

        await wait_for(stopped)
        last_exit = (await http.get("/vms/web1")).json()["last_exit"] or ""
        assert "SHUTDOWN" in [e["event"] for e in await events(http, "web1")]
        assert "guest shut down" not in last_exit


# ---- errors, and that a failed define writes nothing ----

async def assert_define_fails(lab: Lab, http: httpx.AsyncClient, spec: dict[str, Any],
                              status: int, code: str) -> dict[str, Any]:
    before = tree(lab.state_dir, lab.datastore)
    resp = await http.post("/vms", json=spec)
    assert resp.status_code == status, resp.text
    err = error_of(resp)
    assert err["code"] == code, err
    assert err["message"] and err["hint"]
    assert tree(lab.state_dir, lab.datastore) == before, "a failed define changed files"
    return err


async def test_unknown_vm_is_404_everywhere(agent: AgentFactory) -> None:
    async with agent() as http:
        for method, path in [("GET", "/vms/nope"), ("POST", "/vms/nope/start"),
                             ("POST", "/vms/nope/stop"), ("DELETE", "/vms/nope"),
                             ("GET", "/vms/nope/events"), ("GET", "/vms/nope/serial")]:
            resp = await http.request(method, path)
            assert resp.status_code == 404, (method, path, resp.text)
            assert resp.json()["kind"] == "not_found"
            assert error_of(resp)["code"] == "VM_NOT_FOUND"
            assert "nope" in error_of(resp)["message"]


async def test_duplicate_name_is_409(lab: Lab, agent: AgentFactory) -> None:
    async with agent() as http:
        first = await define(http, lab.spec("web1"))
        err = await assert_define_fails(lab, http, lab.spec("web1", memory_mib=128), 409,
                                        "VM_EXISTS")
        assert "host1" in err["message"]
        shown = (await http.get("/vms/web1")).json()
        assert shown["uuid"] == first["uuid"] and shown["spec"]["memory_mib"] == 64


async def test_name_defined_by_another_host_on_the_datastore_is_409(
        lab: Lab, agent: AgentFactory) -> None:
    write_foreign_vm(lab, "db1", "host2", ["52:54:00:aa:bb:01"])
    async with agent() as http:
        err = await assert_define_fails(lab, http, lab.spec("db1"), 409, "VM_EXISTS")
        assert "host2" in err["message"]


async def test_mac_in_use_is_checked_before_port_groups(lab: Lab, agent: AgentFactory) -> None:
    # The only way to hold a MAC without a port group here: a VM of another host on the
    # shared datastore. The uniqueness check runs before the reference checks, so the
    # NIC's (unknown) port group is not what the user hears about first.
    write_foreign_vm(lab, "db1", "host2", ["52:54:00:aa:bb:01"])
    async with agent() as http:
        nic = {"port_group": "vm-net", "mac": "52:54:00:AA:BB:01"}
        err = await assert_define_fails(lab, http, lab.spec("web1", nics=[nic]), 409,
                                        "MAC_IN_USE")
        assert "52:54:00:aa:bb:01" in err["message"] and "db1" in err["message"]
        other = {"port_group": "vm-net", "mac": "52:54:00:aa:bb:02"}
        await assert_define_fails(lab, http, lab.spec("web1", nics=[other]), 404,
                                  "PORTGROUP_NOT_FOUND")


async def test_unknown_port_group_is_404_listing_known_ones(lab: Lab,
                                                            agent: AgentFactory) -> None:
    nic = {"port_group": "nowhere", "mac": "52:54:00:00:00:01"}
    async with agent() as http:
        err = await assert_define_fails(lab, http, lab.spec("web1", nics=[nic]), 404,
                                        "PORTGROUP_NOT_FOUND")
        assert "nowhere" in err["message"] and "none" in err["hint"]
    config = lab.config(port_groups={"vm-net": "sgnobr0", "backup": "sgnobr1"})
    async with agent(config) as http:
        err = await assert_define_fails(lab, http, lab.spec("web1", nics=[nic]), 404,
                                        "PORTGROUP_NOT_FOUND")
        assert "backup, vm-net" in err["hint"]


async def test_port_group_without_bridge_is_409_down(lab: Lab, agent: AgentFactory) -> None:
    nic = {"port_group": "vm-net", "mac": "52:54:00:00:00:01"}
    async with agent(lab.config(port_groups={"vm-net": "sgnobr0"})) as http:
        await assert_define_fails(lab, http, lab.spec("web1", nics=[nic]), 409,
                                  "PORTGROUP_DOWN")


async def test_datastore_errors(lab: Lab, agent: AgentFactory) -> None:
    unmounted = lab.root / "datastores" / "unmounted"
    unmounted.mkdir()  # present but without an identity file
    config = lab.config(datastores={"shared": lab.datastore, "unmounted": unmounted})
    async with agent(config) as http:
        err = await assert_define_fails(lab, http, lab.spec("web1", datastore="nas9"), 404,
                                        "DATASTORE_NOT_FOUND")
        assert "nas9" in err["message"] and "shared" in err["hint"]
        await assert_define_fails(lab, http, lab.spec("web1", datastore="unmounted"), 409,
                                  "DATASTORE_UNAVAILABLE")
        disk = {"datastore": "nas9", "path": "web1/disk0.qcow2"}
        err = await assert_define_fails(lab, http, lab.spec("web1", disks=[disk]), 404,
                                        "DATASTORE_NOT_FOUND")
        assert err["message"].startswith("disks[0]")


async def test_a_disk_is_opened_with_o_direct_where_its_datastore_takes_it(
        lab: Lab, agent: AgentFactory) -> None:
    disk_file = lab.datastore / "web1" / "disk0.raw"
    disk_file.parent.mkdir()
    disk_file.write_bytes(bytes(1 << 20))
    disk = {"datastore": "shared", "path": "web1/disk0.raw", "format": "raw"}
    async with agent() as http:
        await define(http, lab.spec("web1", disks=[disk]))
        pid = (await start(http, "web1"))["pid"]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        (file_node,) = [a for a in argv if a.startswith("driver=file,")]
        direct = "on" if probe_direct_io(disk_file) is True else "off"
        assert f"filename={disk_file}," in file_node
        assert f"cache.direct={direct},cache.no-flush=off" in file_node
        resp = await http.post("/vms/web1/stop", params={"force": True})
        assert resp.status_code == 200, resp.text


async def test_missing_files(lab: Lab, agent: AgentFactory) -> None:
    async with agent() as http:
        err = await assert_define_fails(
            lab, http, lab.spec("web1", kernel=str(lab.kernel.parent / "no-vmlinuz")), 404,
            "IMAGE_NOT_FOUND")
        assert "no-vmlinuz" in err["message"]
        await assert_define_fails(
            lab, http, lab.spec("web1", initrd=str(lab.kernel.parent / "no-initrd")), 404,
            "IMAGE_NOT_FOUND")
        disk = {"datastore": "shared", "path": "web1/disk0.qcow2"}
        err = await assert_define_fails(lab, http, lab.spec("web1", disks=[disk]), 404,
                                        "DISK_NOT_FOUND")
        assert str(lab.datastore / "web1" / "disk0.qcow2") in err["message"]


async def test_resource_and_spec_errors(lab: Lab, agent: AgentFactory) -> None:
    async with agent() as http:
        await assert_define_fails(lab, http, lab.spec("web1", memory_mib=1024 * 1024), 409,
                                  "MEMORY_EXCEEDS_HOST")
        await assert_define_fails(lab, http, lab.spec("web1", vcpus=64), 409,
                                  "VCPUS_EXCEED_HOST")
        err = await assert_define_fails(lab, http, lab.spec("Web 1"), 400, "VM_SPEC_INVALID")
        assert err["details"] == {"field": "name"}
        err = await assert_define_fails(lab, http, lab.spec("Web1"), 400, "VM_SPEC_INVALID")
        assert err["details"] == {"field": "name"}
        await assert_define_fails(lab, http, lab.spec("web1", machine="pc-i440fx-1.0"), 400,
                                  "MACHINE_UNKNOWN")
        before = tree(lab.state_dir, lab.datastore)
        resp = await http.post("/vms", json={"datastore": "shared"})  # no name: the wire model
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["code"] == "REQUEST_FIELD_MISSING" and error["field"] == "name", error
        assert tree(lab.state_dir, lab.datastore) == before


async def test_q35_alias_is_resolved(lab: Lab, agent: AgentFactory) -> None:
    async with agent() as http:
        assert (await define(http, lab.spec("web1", machine="q35")))["spec"]["machine"] \
            == "pc-q35-7.2"


async def test_start_and_stop_in_the_wrong_state(lab: Lab, agent: AgentFactory) -> None:
    async with agent() as http:
        await define(http, lab.spec("web1"))
        resp = await http.post("/vms/web1/stop")
        assert resp.status_code == 409 and error_of(resp)["code"] == "VM_NOT_RUNNING"
        pid = (await start(http, "web1"))["pid"]
        resp = await http.post("/vms/web1/start")
        assert resp.status_code == 409 and error_of(resp)["code"] == "VM_NOT_STOPPED"
        assert str(pid) in error_of(resp)["message"]
        assert lab.qemu_pids() == [pid]  # no second QEMU was launched


async def test_start_needs_free_memory(lab: Lab, agent: AgentFactory) -> None:
    total, _ = parse_meminfo(Path("/proc/meminfo").read_text())
    async with agent() as http:
        # fits the host's size (define passes), never its free memory plus QEMU's overhead
        await define(http, lab.spec("big", memory_mib=total - 1))
        resp = await http.post("/vms/big/start")
        assert resp.status_code == 409, resp.text
        assert error_of(resp)["code"] == "INSUFFICIENT_MEMORY"
        assert lab.qemu_pids() == []


async def test_start_rechecks_files(lab: Lab, agent: AgentFactory) -> None:
    async with agent() as http:
        await define(http, lab.spec("web1"))
        lab.initrd.unlink()
        resp = await http.post("/vms/web1/start")
        assert resp.status_code == 404 and error_of(resp)["code"] == "IMAGE_NOT_FOUND"
        assert lab.qemu_pids() == []


async def test_launch_failure_is_503_and_leaves_nothing(lab: Lab, agent: AgentFactory,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    async with agent() as http:
        await define(http, lab.spec("web1"))
        monkeypatch.setenv("FAKE_QEMU_FAIL_START", "1")
        resp = await http.post("/vms/web1/start")
        assert resp.status_code == 503, resp.text
        assert resp.json()["kind"] == "unavailable"
        err = error_of(resp)
        assert err["code"] == "QEMU_LAUNCH_FAILED"
        assert "exit 1" in err["message"] and "simulated launch failure" in err["message"]
        assert lab.qemu_pids() == []
        assert not (vm_dir(lab, "web1") / "qemu.pid").exists()
        shown = await http.get("/vms/web1")
        assert shown.status_code == 200 and shown.json()["pid"] is None
        assert (lab.datastore / "web1" / "vm.json").exists()
        # the failure is not sticky: fixed, the VM starts
        monkeypatch.delenv("FAKE_QEMU_FAIL_START")
        assert (await start(http, "web1"))["state"] == "running"


async def test_define_with_start_that_fails_defines_nothing(
        lab: Lab, agent: AgentFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_FAIL_START", "1")
    async with agent() as http:
        before = tree(lab.datastore)
        resp = await http.post("/vms", json=lab.spec("web1"), params={"start": True})
        assert resp.status_code == 503, resp.text
        assert error_of(resp)["code"] == "QEMU_LAUNCH_FAILED"
        assert (await http.get("/vms/web1")).status_code == 404
        assert tree(lab.datastore) == before
        assert not vm_dir(lab, "web1").exists()
        assert lab.qemu_pids() == []


async def test_launch_failure_leaves_the_vm_stopped(lab: Lab, agent: AgentFactory,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    async with agent() as http:
        await define(http, lab.spec("web1"))
        monkeypatch.setenv("FAKE_QEMU_FAIL_START", "1")
        assert (await http.post("/vms/web1/start")).status_code == 503
        assert (await http.get("/vms/web1")).json()["state"] == "stopped"


# ---- agent restart: adoption ----

async def test_restarted_agent_adopts_running_vm(lab: Lab, agent: AgentFactory) -> None:
    async with agent() as http:
        await define(http, lab.spec("web1"))
        await define(http, lab.spec("idle"))
        started = await start(http, "web1")
    pid = started["pid"]
    assert process.is_qemu_of(pid, started["uuid"]), "an agent shutdown must not stop VMs"

    async with agent() as http:
        listed = {v["name"]: v for v in (await http.get("/vms")).json()}
        assert listed["web1"]["state"] == "running"
        assert listed["web1"]["adopted"] is True
        assert listed["web1"]["pid"] == pid
        assert listed["web1"]["started_at"] is not None
        assert listed["idle"]["state"] == "stopped" and listed["idle"]["adopted"] is False
        # the adopted VM is fully managed: stop and destroy work through the new session
        resp = await http.post("/vms/web1/stop", params={"timeout": 10})
        assert resp.status_code == 200, resp.text
        assert resp.json()["state"] == "stopped"
        assert "guest shut down" in resp.json()["last_exit"]
        await start(http, "web1")
        assert (await http.delete("/vms/web1")).status_code == 204
    assert lab.qemu_pids() == []
    assert not (lab.datastore / "web1").exists()


async def test_restart_does_not_adopt_a_stale_pidfile(lab: Lab, agent: AgentFactory) -> None:
    async with agent() as http:
        await define(http, lab.spec("web1"))
    # a pidfile naming a live process that is not this VM's QEMU (this test process)
    (vm_dir(lab, "web1") / "qemu.pid").write_text(f"{os.getpid()}\n")
    async with agent() as http:
        shown = (await http.get("/vms/web1")).json()
        assert shown["state"] == "stopped" and shown["pid"] is None
        assert not (vm_dir(lab, "web1") / "qemu.pid").exists()
    assert process.pid_alive(os.getpid())


# ---- the client, used synchronously, against a served agent ----

@pytest.fixture
def served_agent(lab: Lab, caps: QemuCapabilities) -> Iterator[str]:
    """The agent app served by uvicorn on a unix socket in a thread; yields the socket."""
    uds = str(lab.root / "agent.sock")
    server = uvicorn.Server(uvicorn.Config(create_app(lab.config(), caps), uds=uds,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "agent did not start"
        time.sleep(0.02)
    yield uds
    server.should_exit = True
    thread.join(timeout=10)


def test_agent_client_round_trip(lab: Lab, served_agent: str) -> None:
    with Blocking(AgentClient(f"unix:{served_agent}")) as agent:
        client = agent.client
        assert agent.run(client.health()).host == "host1"
        spec = VMSpecBody.model_validate(lab.spec("web1"))
        info = agent.run(client.define_vm(spec, start=True))
        assert info.state is VMState.RUNNING
        assert agent.run(client.get_vm("web1")).pid == info.pid
        assert [v.name for v in agent.run(client.list_vms())] == ["web1"]
        assert "RESUME" in [e.event for e in agent.run(client.events("web1"))]
        assert agent.run(client.serial("web1")) == []
        with pytest.raises(Conflict) as exc:
            agent.run(client.define_vm(spec))
        assert exc.value.code == "VM_EXISTS"
        assert agent.run(client.stop_vm("web1", timeout=10)).state is VMState.STOPPED
        agent.run(client.destroy_vm("web1"))
        with pytest.raises(NotFound) as missing:
            agent.run(client.get_vm("web1"))
        assert missing.value.code == "VM_NOT_FOUND"
    assert lab.qemu_pids() == []


# ---- the fake itself, through Segue's own QEMU layer (it must behave like QEMU) ----

async def launch_fake(lab: Lab, name: str = "probe") -> tuple[int, RuntimePaths, str]:
    runtime = RuntimePaths(lab.state_dir / "vms" / name)
    runtime.directory.mkdir(parents=True)
    vm_uuid = "11111111-2222-4333-8444-555555555555"
    spec = VMSpec(name=name, datastore="shared", uuid=vm_uuid, kernel=str(lab.kernel))
    argv = build_argv(spec, LaunchPlan(binary=str(lab.qemu_binary), accel="tcg",
                                       runtime=runtime, disk_files=()))
    pid = await process.launch_daemon(argv, runtime.qemu_log, runtime.pidfile,
                                      runtime.qmp_socket, timeout=20)
    return pid, runtime, vm_uuid


async def test_fake_qemu_speaks_qmp(lab: Lab) -> None:
    pid, runtime, vm_uuid = await launch_fake(lab)
    assert process.is_qemu_of(pid, vm_uuid)
    assert not process.is_qemu_of(pid, "00000000-0000-4000-8000-000000000000")
    qmp = QMPSession("probe")
    await qmp.connect(runtime.qmp_socket, timeout=5)
    assert await qmp.execute("query-status") == {"status": "prelaunch", "running": False,
                                                 "singlestep": False}
    with pytest.raises(QMPCommandFailed) as exc:
        await qmp.execute("no-such-command")
    assert exc.value.details["qmp_class"] == "CommandNotFound"
    await qmp.execute("cont")
    resume = await qmp.next_event(2)
    assert resume is not None and resume.event == "RESUME"
    # QEMU's timestamp: {"seconds", "microseconds"}, both set
    assert resume.timestamp.model_fields_set == {"seconds", "microseconds"}
    assert abs(resume.at - time.time()) < 30
    await qmp.execute("stop")
    stop = await qmp.next_event(2)
    assert stop is not None and stop.event == "STOP"
    assert (await qmp.execute("query-status"))["status"] == "paused"
    await qmp.close()

    again = QMPSession("probe-again")  # a new client after the first one left
    await again.connect(runtime.qmp_socket, timeout=5)
    assert (await again.execute("query-status"))["status"] == "paused"
    await again.execute("quit")
    assert await process.wait_exit(pid, 5)
    await again.close()
    assert not runtime.pidfile.exists()


async def test_fake_qemu_launch_failure(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_QEMU_FAIL_START", "1")
    with pytest.raises(process.QEMULaunchFailed) as exc:
        await launch_fake(lab)
    assert exc.value.code == "QEMU_LAUNCH_FAILED"
    assert "simulated launch failure" in exc.value.message
    assert lab.qemu_pids() == []


@pytest.mark.parametrize("how", ["runtime dir removed", "lifetime over"])
async def test_fake_qemu_cannot_leak(lab: Lab, monkeypatch: pytest.MonkeyPatch,
                                     how: str) -> None:
    if how == "lifetime over":
        monkeypatch.setenv("FAKE_QEMU_MAX_LIFETIME", "0.5")
    pid, runtime, _ = await launch_fake(lab)
    if how == "runtime dir removed":
        shutil.rmtree(runtime.directory)
    assert await process.wait_exit(pid, 5)
