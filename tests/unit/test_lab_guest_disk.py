"""A lab guest's journal disk: ``guest_spec`` creates it on the shared datastore and puts it
in the spec and on the kernel command line (the controller's inventory is faked)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from segue.api.inventory import VMView
from segue.api.vm import DiskBody
from segue.cli.main import app as cli
from segue.domain.errors import Conflict, InvalidRequest, Unavailable
from segue.image.builder import GuestImage
from segue.image.cmdline import parse_guest_cmdline
from segue.lab import guests
from segue.lab.topology import LabPlan, plan_lab

IMAGE = GuestImage(kernel=Path("/img/vmlinuz"), initrd=Path("/img/initrd.img"), key="k",
                   kernel_version="6.1")


@pytest.fixture
def plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LabPlan:
    """A planned lab whose datastore directory exists and whose inventory is empty."""
    lab = plan_lab("unit", 2, root=tmp_path / "lab")
    lab.datastore_dir.mkdir(parents=True)
    monkeypatch.setattr(guests, "all_vms", lambda plan: [])
    return lab


def test_a_guest_without_disk_mib_has_no_disk(plan: LabPlan) -> None:
    spec = guests.guest_spec(plan, "g1", IMAGE, guests.GuestOptions())
    assert spec.disks == []
    keys = parse_guest_cmdline(spec.cmdline)
    assert "disk" not in keys and "disk_rate" not in keys
    assert not (plan.datastore_dir / "g1").exists()


def test_disk_mib_creates_a_fresh_raw_disk_on_the_datastore(plan: LabPlan) -> None:
    old = plan.datastore_dir / "g1" / "disk0.raw"
    old.parent.mkdir()
    old.write_bytes(b"SEGUEJNL an earlier guest's journal")
    spec = guests.guest_spec(plan, "g1", IMAGE, guests.GuestOptions(disk_mib=4, disk_rate=25))
    assert spec.disks == [DiskBody(datastore="shared", path="g1/disk0.raw", format="raw")]
    keys = parse_guest_cmdline(spec.cmdline)
    assert (keys["disk"], keys["disk_rate"]) == ("/dev/vda", "25")
    disk = plan.datastore_dir / spec.disks[0].path
    assert disk.stat().st_size == 4 << 20
    assert disk.read_bytes() == bytes(4 << 20)  # nothing of the earlier guest is left


def test_the_disk_lies_where_every_host_mounts_the_datastore(plan: LabPlan) -> None:
    guests.guest_spec(plan, "g1", IMAGE, guests.GuestOptions(disk_mib=1))
    for host in plan.hosts:
        assert (Path(host.agent_config()["datastores"]["shared"]) / "g1/disk0.raw").is_file()


def test_an_existing_vm_keeps_its_disk(plan: LabPlan, monkeypatch: pytest.MonkeyPatch) -> None:
    first = guests.guest_spec(plan, "g1", IMAGE, guests.GuestOptions(disk_mib=1))
    disk = plan.datastore_dir / "g1" / "disk0.raw"
    disk.write_bytes(b"in use")
    view = VMView(name="g1", uuid="", host="host1", state="running",
                  updated_at=datetime.now(UTC), spec=first)
    monkeypatch.setattr(guests, "all_vms", lambda plan: [view])
    with pytest.raises(Conflict) as err:
        guests.guest_spec(plan, "g1", IMAGE, guests.GuestOptions(disk_mib=1))
    assert err.value.code == "VM_EXISTS"
    assert disk.read_bytes() == b"in use"


def test_a_bad_disk_rate_creates_nothing(plan: LabPlan) -> None:
    with pytest.raises(ValueError, match="disk_rate"):
        guests.guest_spec(plan, "g1", IMAGE, guests.GuestOptions(disk_mib=1, disk_rate=0))
    assert not (plan.datastore_dir / "g1").exists()


@pytest.mark.parametrize(("name", "size"), [("../escape", 1), ("Upper", 1), ("g1", -1)])
def test_bad_names_and_sizes_are_refused(plan: LabPlan, name: str, size: int) -> None:
    with pytest.raises(InvalidRequest) as err:
        guests.create_guest_disk(plan, name, size)
    assert err.value.code == "LAB_INVALID"
    assert list(plan.datastore_dir.parent.rglob("*")) == [plan.datastore_dir]


def test_a_lab_that_is_not_up_has_no_datastore(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guests, "all_vms", lambda plan: [])
    lab = plan_lab("down", 2, root=tmp_path / "lab")
    with pytest.raises(Unavailable) as err:
        guests.guest_spec(lab, "g1", IMAGE, guests.GuestOptions(disk_mib=1))
    assert err.value.code == "LAB_DATASTORE_MISSING"
    assert "segue lab up" in err.value.hint


def test_the_cli_refuses_a_journal_disk_for_your_own_kernel() -> None:
    out = CliRunner().invoke(cli, ["lab", "vm", "create", "g1", "--host", "host1",
                                   "--disk-mib", "8", "--kernel", "/boot/vmlinuz"])
    assert out.exit_code == 1
    assert "LAB_INVALID" in out.output and "--disk-mib" in out.output
