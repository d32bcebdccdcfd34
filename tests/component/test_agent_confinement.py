"""An agent uses no file outside its datastores and image dirs (``segue.agent.confine``),
whoever asks: define, start, a migration's prepare, and specs it finds on disk at startup.

The attack these guard against: an unauthenticated ``POST /vms`` naming ``/etc/os-release``
as kernel and as console log, then ``GET /vms/evil/serial``, read the file back (and a
started VM would have appended its console to any file)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from test_agent_api import define, error_of, start, tree
from test_agent_migration import agent_on, prepare, refused, running_vm

from segue.agent.facts import QemuCapabilities
from segue.api.vm import VMSpecBody
from segue.domain.errors import InvalidRequest
from segue.domain.vm import VMSpec
from segue.files import write_json_atomic

if TYPE_CHECKING:
    from conftest import AgentFactory, Lab

ATTACK = "/etc/os-release"


def snapshot(lab: Lab) -> dict[str, bytes | None]:
    """Every file of the agent's state dir and the datastore (leases included)."""
    return tree(lab.state_dir, lab.datastore)


async def assert_refused(lab: Lab, http: httpx.AsyncClient, spec: dict[str, Any], code: str,
                         field: str, start: bool = False) -> dict[str, Any]:
    """POST /vms is refused (400) with ``code`` naming ``field``, and nothing changed: no
    runtime dir, no vm.json, no lease, no QEMU."""
    before = snapshot(lab)
    resp = await http.post("/vms", json=spec, params={"start": str(start).lower()})
    assert resp.status_code == 400, resp.text
    err = error_of(resp)
    assert err["code"] == code and err["field"] == field, err
    assert err["message"].startswith(f"{field}: ") and err["hint"], err
    assert snapshot(lab) == before, "a refused define changed files"
    assert lab.qemu_pids() == []
    return err


async def test_the_reported_attack_is_refused_and_changes_nothing(
        lab: Lab, agent: AgentFactory) -> None:
    async with agent() as http:
        for start_it in (False, True):
            attack = lab.spec("evil", kernel=ATTACK, serial_log=ATTACK)
            err = await assert_refused(lab, http, attack, "PATH_OUTSIDE_DATASTORE", "kernel",
                                       start=start_it)
            assert ATTACK in err["message"]
            assert str(lab.kernel.parent) in err["hint"] and str(lab.datastore) in err["hint"]
            resp = await http.get("/vms/evil/serial")
            assert resp.status_code == 404 and error_of(resp)["code"] == "VM_NOT_FOUND"
        # the console log alone, with files the host allows
        err = await assert_refused(lab, http, lab.spec("evil", serial_log=ATTACK),
                                   "SERIAL_LOG_OUTSIDE_RUNTIME", "serial_log", start=True)
        assert str(lab.state_dir / "vms" / "evil" / "serial.log") in err["hint"]
        await assert_refused(lab, http, lab.spec("evil", initrd=ATTACK),
                             "PATH_OUTSIDE_DATASTORE", "initrd")
        assert (await http.get("/vms")).json() == []


async def test_traversal_out_of_a_root_is_refused(lab: Lab, agent: AgentFactory) -> None:
    climb = f"{lab.kernel.parent}/../../../../../../..{ATTACK}"
    async with agent() as http:
        err = await assert_refused(lab, http, lab.spec("web1", kernel=climb),
                                   "PATH_OUTSIDE_DATASTORE", "kernel")
        assert f"(it resolves to {Path(ATTACK).resolve()})" in err["message"]
        for path in ("../../../../../../../etc/shadow", "web1/../../x.raw", "/etc/shadow"):
            disk = {"datastore": "shared", "path": path, "format": "raw"}
            await assert_refused(lab, http, lab.spec("web1", disks=[disk]),
                                 "PATH_OUTSIDE_DATASTORE", "disks[0].path")


async def test_a_symlink_out_of_a_datastore_is_refused(lab: Lab, agent: AgentFactory) -> None:
    outside = lab.root / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not a guest's\n")
    (lab.datastore / "web1").mkdir()
    (lab.datastore / "web1" / "disk0.raw").symlink_to(outside / "secret")
    (lab.datastore / "web1" / "etc").symlink_to("/etc")
    (lab.datastore / "evil").symlink_to(outside)  # a VM's home dir: its vm.json would go there
    (lab.kernel.parent / "os-release").symlink_to(ATTACK)
    async with agent() as http:
        for path in ("web1/disk0.raw", "web1/etc/shadow"):
            disk = {"datastore": "shared", "path": path, "format": "raw"}
            err = await assert_refused(lab, http, lab.spec("web1", disks=[disk]),
                                       "PATH_OUTSIDE_DATASTORE", "disks[0].path")
            assert "resolves to" in err["message"]
        await assert_refused(lab, http, lab.spec("evil"), "PATH_OUTSIDE_DATASTORE",
                             "datastore")
        assert sorted(p.name for p in outside.iterdir()) == ["secret"]
        await assert_refused(lab, http, lab.spec("web1", kernel=str(
            lab.kernel.parent / "os-release")), "PATH_OUTSIDE_DATASTORE", "kernel")
        lease_dir = lab.datastore / ".segue" / "leases"
        lease_dir.mkdir(parents=True, exist_ok=True)
        disk = {"datastore": "shared", "path": ".segue/leases/vm-x.json", "format": "raw"}
        await assert_refused(lab, http, lab.spec("web1", disks=[disk]), "PATH_RESERVED",
                             "disks[0].path")
        files = (await http.post("/datastores/files", json={"files": [
            {"datastore": "shared", "path": "web1/disk0.raw"}]})).json()["files"]
        assert files[0]["visible"] is False  # nor may a symlink tell what lies outside


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *args, "1M"], check=True)


async def test_a_qcow2_disk_naming_a_file_outside_its_datastore_is_refused(
        lab: Lab, agent: AgentFactory) -> None:
    """QEMU opens a qcow2 image's backing file and external data file wherever they are: a
    guest would read (or write) them. Images made by qemu-img itself."""
    web1 = lab.datastore / "web1"
    web1.mkdir()
    (lab.root / "outside").mkdir()
    qemu_img("-b", ATTACK, "-F", "raw", str(web1 / "evil.qcow2"))
    qemu_img("-o", f"data_file={lab.root / 'outside' / 'data.raw'}", str(web1 / "data.qcow2"))
    qemu_img(str(lab.datastore / "base.qcow2"))
    qemu_img("-b", "../base.qcow2", "-F", "qcow2", str(web1 / "disk0.qcow2"))
    async with agent() as http:
        for name in ("evil.qcow2", "data.qcow2"):
            disk = {"datastore": "shared", "path": f"web1/{name}"}
            err = await assert_refused(lab, http, lab.spec("web1", disks=[disk]),
                                       "PATH_OUTSIDE_DATASTORE", "disks[0].path")
            assert "file" in err["message"] and str(lab.datastore) in err["hint"]
        disk = {"datastore": "shared", "path": "web1/disk0.qcow2"}
        await define(http, lab.spec("web1", disks=[disk]))  # a chain inside: fine
        assert (await start(http, "web1"))["state"] == "running"


async def test_a_lab_like_spec_is_accepted(lab: Lab, agent: AgentFactory) -> None:
    """The lab's guests: the test image from the image cache, a raw journal disk on the
    shared datastore, the console log in the runtime dir, served back."""
    (lab.kernel.parent / "current").symlink_to(lab.kernel.parent)  # inside: fine
    disk = lab.datastore / "web1" / "disk0.raw"
    disk.parent.mkdir()
    disk.write_bytes(bytes(1 << 20))
    spec = lab.spec("web1", kernel=str(lab.kernel.parent / "current" / "vmlinuz"),
                    disks=[{"datastore": "shared", "path": "web1/disk0.raw", "format": "raw"}])
    async with agent() as http:
        defined = await define(http, spec)
        runtime = lab.state_dir / "vms" / "web1"
        assert defined["serial_log"] == str(runtime / "serial.log")
        assert defined["spec"]["serial_log"] is None
        pid = (await start(http, "web1"))["pid"]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert argv[argv.index("-kernel") + 1] == str(lab.kernel)  # resolved, as checked
        assert any(f"filename={disk}," in a for a in argv)
        assert any(f"logfile={runtime / 'serial.log'}," in a for a in argv)
        (runtime / "serial.log").write_text("booted\n")
        answer = (await http.get("/vms/web1/serial")).json()
        assert answer["lines"] == ["booted"]
        # naming its own console log is no fault (and is not kept: the agent decides)
        own = lab.spec("web2", serial_log=str(lab.state_dir / "vms" / "web2" / "serial.log"))
        assert (await define(http, own))["spec"]["serial_log"] is None


async def test_a_file_swapped_for_a_symlink_after_define_does_not_start(
        lab: Lab, agent: AgentFactory) -> None:
    """Every start checks again: the checked file is the one QEMU opens."""
    async with agent() as http:
        await define(http, lab.spec("web1"))
        lab.kernel.unlink()
        lab.kernel.symlink_to(ATTACK)
        before = snapshot(lab)
        resp = await http.post("/vms/web1/start")
        assert resp.status_code == 400 and error_of(resp)["code"] == "PATH_OUTSIDE_DATASTORE"
        assert lab.qemu_pids() == [] and snapshot(lab) == before  # no lease left held
        assert (await http.get("/vms/web1")).json()["state"] == "stopped"


async def test_a_migrations_spec_is_checked_as_a_new_one(lab: Lab,
                                                         caps: QemuCapabilities) -> None:
    async with agent_on(lab, caps, "host1") as src:
        info = await running_vm(src, lab)
    async with agent_on(lab, caps, "host2") as dst:
        before = tree(lab.root / "host2", lab.datastore)
        for changes in ({"kernel": ATTACK}, {"initrd": ATTACK},
                        {"disks": [{"datastore": "shared", "path": "../../etc/shadow"}]}):
            bad = VMSpecBody.model_validate({**info.spec.model_dump(), **changes})
            err = await refused(prepare(dst, bad, migration_id="m"), InvalidRequest,
                                "PATH_OUTSIDE_DATASTORE")
            assert ATTACK in err.message or "shadow" in err.message
        assert tree(lab.root / "host2", lab.datastore) == before
        assert len(lab.qemu_pids()) == 1  # the source's only
        # an older source's serial_log is ignored, not obeyed
        old = VMSpecBody.model_validate({**info.spec.model_dump(), "serial_log": ATTACK})
        incoming = await prepare(dst, old, migration_id="m-1")
        assert incoming.pid is not None
        argv = Path(f"/proc/{incoming.pid}/cmdline").read_bytes().decode()
        assert ATTACK not in argv
        assert (await dst.get_vm("web1")).spec.serial_log is None


async def test_a_stored_spec_outside_the_roots_loads_but_does_not_start(
        lab: Lab, agent: AgentFactory) -> None:
    """A spec an older agent stored (spec.json here, vm.json on the datastore) with a kernel
    and console log anywhere: the agent starts, lists it, ignores its serial_log, refuses
    to start it."""
    spec = VMSpec(name="old", datastore="shared", uuid="5d2b3c4d-0000-4000-8000-0000000000aa",
                  memory_mib=64, machine="pc-i440fx-7.2", kernel=ATTACK, serial_log=ATTACK)
    write_json_atomic(lab.state_dir / "vms" / "old" / "spec.json", spec.to_dict())
    write_json_atomic(lab.datastore / "old" / "vm.json", {"host": "host1",
                                                          "spec": spec.to_dict()})
    async with agent() as http:
        (shown,) = (await http.get("/vms")).json()
        assert shown["name"] == "old" and shown["state"] == "stopped"
        assert shown["spec"]["serial_log"] is None
        assert shown["serial_log"] == str(lab.state_dir / "vms" / "old" / "serial.log")
        assert (await http.get("/vms/old/serial")).json()["lines"] == []
        before = snapshot(lab)
        resp = await http.post("/vms/old/start")
        assert resp.status_code == 400, resp.text
        assert error_of(resp)["code"] == "PATH_OUTSIDE_DATASTORE"
        assert lab.qemu_pids() == [] and snapshot(lab) == before  # no lease, no QEMU
        assert (await http.delete("/vms/old")).status_code == 204
