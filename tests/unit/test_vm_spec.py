"""VM spec validation, its dict form, and the QMP status folding (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segue.domain.errors import InvalidRequest
from segue.domain.vm import (
    DiskSpec,
    NicSpec,
    VMSpec,
    VMState,
    state_from_qmp_status,
    validate_vm_spec,
    vm_spec_from_dict,
)

UUID = "6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b"


def good_spec(**changes: Any) -> VMSpec:
    spec = VMSpec(
        name="web-1.a_b", datastore="shared", uuid=UUID, memory_mib=512, vcpus=2,
        nics=[NicSpec("vm-net", "52:54:00:12:34:56"),
              NicSpec("backup", "52:54:00:AB:CD:EF", model="e1000")],
        disks=[DiskSpec("shared", "web1/disk0.qcow2"),
               DiskSpec("shared", "web1/data.raw", format="raw", readonly=True)],
        kernel="/var/lib/segue/images/vmlinuz", initrd="/var/lib/segue/images/initrd.img",
        cmdline="console=ttyS0",
    )
    return spec.with_changes(**changes)


def invalid_field(spec: VMSpec, code: str = "VM_SPEC_INVALID") -> str:
    with pytest.raises(InvalidRequest) as exc:
        validate_vm_spec(spec)
    err = exc.value
    assert err.code == code
    assert err.kind == "invalid"
    assert err.hint, "every error names the fix"
    field = str(err.details["field"])
    assert err.message.startswith(f"{field}: ")
    return field


def test_good_spec_is_accepted() -> None:
    validate_vm_spec(good_spec())


@pytest.mark.parametrize("changes", [
    {"uuid": ""},  # generated at define
    {"memory_mib": 16}, {"memory_mib": 1024 * 1024},
    {"vcpus": 1}, {"vcpus": 64},
    {"nics": []},
    {"kernel": None, "initrd": None},  # boots from the first disk
    {"disks": []},  # boots the kernel
    {"initrd": None, "cmdline": ""},
    {"name": "a"}, {"name": "0" + "x" * 47},
])
def test_edges_that_are_accepted(changes: dict[str, Any]) -> None:
    validate_vm_spec(good_spec(**changes))


@pytest.mark.parametrize(("changes", "field"), [
    ({"name": ""}, "name"),
    ({"name": "Web1"}, "name"),
    ({"name": "-web1"}, "name"),
    ({"name": ".web1"}, "name"),
    ({"name": "web 1"}, "name"),
    ({"name": "web/1"}, "name"),
    ({"name": "a" * 49}, "name"),
    ({"uuid": "not-a-uuid"}, "uuid"),
    ({"uuid": UUID.upper()}, "uuid"),
    ({"uuid": UUID[:-1]}, "uuid"),
    ({"memory_mib": 15}, "memory_mib"),
    ({"memory_mib": 1024 * 1024 + 1}, "memory_mib"),
    ({"memory_mib": -256}, "memory_mib"),
    ({"vcpus": 0}, "vcpus"),
    ({"vcpus": 65}, "vcpus"),
    ({"nics": [NicSpec("vm-net", "52:54:00:12:34")]}, "nics[0].mac"),
    ({"nics": [NicSpec("vm-net", "52-54-00-12-34-56")]}, "nics[0].mac"),
    ({"nics": [NicSpec("vm-net", "52:54:00:12:34:5g")]}, "nics[0].mac"),
    ({"nics": [NicSpec("vm-net", "01:00:5e:00:00:01")]}, "nics[0].mac"),  # multicast
    ({"nics": [NicSpec("vm-net", "ff:ff:ff:ff:ff:ff")]}, "nics[0].mac"),  # broadcast
    ({"nics": [NicSpec("a", "52:54:00:00:00:01"), NicSpec("b", "53:54:00:00:00:01")]},
     "nics[1].mac"),  # 0x53: the multicast bit of the second NIC
    ({"nics": [NicSpec("a", "52:54:00:aa:bb:cc"), NicSpec("b", "52:54:00:AA:BB:CC")]},
     "nics[1].mac"),  # the same MAC twice, whatever its case
    ({"nics": [NicSpec("vm-net", "52:54:00:12:34:56", model="rtl8139")]}, "nics[0].model"),
    ({"nics": [NicSpec("", "52:54:00:12:34:56")]}, "nics[0].port_group"),
    ({"disks": [DiskSpec("shared", "web1/disk0.vmdk", format="vmdk")]}, "disks[0].format"),
    ({"kernel": None, "initrd": None, "disks": []}, "kernel"),
    ({"kernel": None}, "initrd"),  # has a disk to boot from, but an initrd without kernel
])
def test_each_bad_field_is_named(changes: dict[str, Any], field: str) -> None:
    assert invalid_field(good_spec(**changes)) == field


@pytest.mark.parametrize(("disks", "field"), [
    ([DiskSpec("shared", "/etc/shadow")], "disks[0].path"),
    ([DiskSpec("shared", "../other/disk.qcow2")], "disks[0].path"),
    ([DiskSpec("shared", "web1/../../etc/shadow")], "disks[0].path"),
    ([DiskSpec("shared", "web1/..")], "disks[0].path"),
    ([DiskSpec("shared", "")], "disks[0].path"),
    ([DiskSpec("shared", "ok.qcow2"), DiskSpec("shared", "../x.qcow2")], "disks[1].path"),
])
def test_a_disk_path_leaving_its_datastore_is_named(disks: list[DiskSpec], field: str) -> None:
    assert invalid_field(good_spec(disks=disks), "PATH_OUTSIDE_DATASTORE") == field


def test_first_fault_wins_in_field_order() -> None:
    spec = good_spec(name="Bad", memory_mib=1, nics=[NicSpec("", "zz")])
    assert invalid_field(spec) == "name"
    assert invalid_field(spec.with_changes(name="ok")) == "memory_mib"


@pytest.mark.parametrize("changes", [
    {"name": "web1\n"},
    {"uuid": UUID + "\n"},
    {"nics": [NicSpec("vm-net", "52:54:00:12:34:56\n")]},
])
def test_trailing_newline_is_rejected(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        validate_vm_spec(good_spec(**changes))


@given(st.text(max_size=60))
def test_any_name_is_accepted_or_rejected_as_invalid(name: str) -> None:
    try:
        validate_vm_spec(good_spec(name=name))
    except InvalidRequest as err:
        assert err.code == "VM_SPEC_INVALID"
        assert err.details["field"] == "name"
    else:
        assert 1 <= len(name.rstrip("\n")) <= 48
        assert name[0] in "abcdefghijklmnopqrstuvwxyz0123456789"


@given(st.text(alphabet="0123456789abcdefABCDEF:-x", max_size=20))
def test_any_mac_is_accepted_or_rejected_as_invalid(mac: str) -> None:
    try:
        validate_vm_spec(good_spec(nics=[NicSpec("vm-net", mac)]))
    except InvalidRequest as err:
        assert err.details["field"] == "nics[0].mac"
    else:
        assert len(mac) == 17 and int(mac[:2], 16) % 2 == 0


def test_to_dict_round_trip() -> None:
    spec = good_spec(serial_log="/var/log/web1.serial")
    data = spec.to_dict()
    assert data["nics"][1] == {"port_group": "backup", "mac": "52:54:00:AB:CD:EF",
                               "model": "e1000"}
    assert data["disks"][1]["readonly"] is True
    again = vm_spec_from_dict(data)
    assert again == spec
    assert isinstance(again.nics[0], NicSpec) and isinstance(again.disks[0], DiskSpec)


def test_from_dict_fills_defaults() -> None:
    spec = vm_spec_from_dict({"name": "web1", "datastore": "shared", "nics": None})
    assert spec == VMSpec(name="web1", datastore="shared")
    assert spec.memory_mib == 256 and spec.machine == "pc" and spec.nics == []


@pytest.mark.parametrize("data", [
    {"datastore": "shared"},  # no name
    {"name": "web1", "datastore": "shared", "colour": "blue"},
    {"name": "web1", "datastore": "shared", "nics": [{"mac": "52:54:00:00:00:01"}]},
    {"name": "web1", "datastore": "shared", "disks": [{"datastore": "shared", "size": 1}]},
])
def test_from_dict_rejects_malformed(data: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as exc:
        vm_spec_from_dict(data)
    assert exc.value.code == "VM_SPEC_INVALID"


def test_with_changes_leaves_the_original() -> None:
    spec = good_spec()
    changed = spec.with_changes(memory_mib=1024)
    assert spec.memory_mib == 512 and changed.memory_mib == 1024
    assert changed.nics == spec.nics


@pytest.mark.parametrize(("status", "state"), [
    ("running", VMState.RUNNING),
    ("prelaunch", VMState.PAUSED),
    ("paused", VMState.PAUSED),
    ("suspended", VMState.PAUSED),
    ("finish-migrate", VMState.PAUSED),
    ("io-error", VMState.PAUSED),
    ("inmigrate", VMState.INMIGRATE),
    ("postmigrate", VMState.POSTMIGRATE),
    ("shutdown", VMState.SHUTDOWN),
    ("guest-panicked", VMState.CRASHED),
    ("internal-error", VMState.CRASHED),
    ("no-such-status", VMState.UNKNOWN),
    ("", VMState.UNKNOWN),
    ("Running", VMState.UNKNOWN),
])
def test_state_from_qmp_status(status: str, state: VMState) -> None:
    assert state_from_qmp_status(status) is state


def test_state_values_are_the_api_strings() -> None:
    assert VMState.STOPPED.value == "stopped"
    assert VMState("running") is VMState.RUNNING
