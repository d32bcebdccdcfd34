"""QEMU argv from a VM spec (pure)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segue.domain.vm import DiskSpec, NicSpec, VMSpec, validate_vm_spec, vm_spec_from_dict
from segue.qemu.argv import SANDBOX, LaunchPlan, RuntimePaths, build_argv, tap_name

UUID = "6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b"
RUN = Path("/run/segue/vms/web1")
DISK = Path("/srv/ds/shared/web1/disk0.qcow2")


def kernel_spec(**changes: object) -> VMSpec:
    spec = VMSpec(
        name="web1", datastore="shared", uuid=UUID, memory_mib=512, vcpus=2,
        machine="pc-i440fx-7.2",
        nics=[NicSpec("vm-net", "52:54:00:AA:BB:01"),
              NicSpec("backup", "52:54:00:aa:bb:02", model="e1000")],
        disks=[DiskSpec("shared", "web1/disk0.qcow2")],
        kernel="/img/vmlinuz", initrd="/img/initrd.img", cmdline="console=ttyS0 quiet",
    )
    return spec.with_changes(**changes)


def plan(accel: str = "tcg", incoming: str | None = None,
         disks: tuple[Path, ...] = (DISK,)) -> LaunchPlan:
    return LaunchPlan(binary="/usr/bin/qemu-system-x86_64", accel=accel,
                      runtime=RuntimePaths(RUN), disk_files=disks, incoming=incoming)


def values(argv: list[str], option: str) -> list[str]:
    """Every value given to ``option`` in argv."""
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == option]


def kv(arg: str) -> dict[str, str]:
    """key=value pairs of a comma-separated option value (the first bare word is 'driver')."""
    out: dict[str, str] = {}
    for i, part in enumerate(arg.split(",")):
        key, sep, value = part.partition("=")
        if sep:
            out[key] = value
        else:
            out["driver" if i == 0 else key] = part if i == 0 else ""
    return out


def test_process_management_options() -> None:
    argv = build_argv(kernel_spec(), plan())
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert "-S" in argv
    assert "-daemonize" not in argv  # the sandbox forbids its fork (segue.qemu.process)
    assert "-nodefaults" in argv and "-no-user-config" in argv
    assert values(argv, "-pidfile") == [str(RUN / "qemu.pid")]
    assert values(argv, "-qmp") == [f"unix:{RUN / 'qmp.sock'},server=on,wait=off"]
    assert values(argv, "-uuid") == [UUID]
    assert values(argv, "-name") == ["guest=web1,debug-threads=on"]
    assert values(argv, "-machine") == ["pc-i440fx-7.2"]
    assert values(argv, "-cpu") == ["qemu64,enforce"]
    assert values(argv, "-m") == ["512M"]
    assert values(argv, "-smp") == ["2"]
    assert values(argv, "-display") == ["none"]


def test_cpu_is_enforced_and_loses_the_features_the_host_lacks() -> None:
    host = LaunchPlan(binary="qemu", accel="tcg", runtime=RuntimePaths(RUN), disk_files=(DISK,),
                      cpu_exclude=("avx2", "aes"))
    assert values(build_argv(kernel_spec(cpu_model="max"), host), "-cpu") == [
        "max,-aes,-avx2,enforce"]
    custom = build_argv(kernel_spec(cpu_model="qemu64,+sse4.2"), host)
    assert values(custom, "-cpu") == ["qemu64,+sse4.2,-aes,-avx2,enforce"]


def test_serial_goes_to_a_socket_and_a_log() -> None:
    argv = build_argv(kernel_spec(), plan())
    chardev = kv(values(argv, "-chardev")[0])
    assert chardev["driver"] == "socket" and chardev["id"] == "serial0"
    assert chardev["path"] == str(RUN / "serial.sock")
    assert chardev["logfile"] == str(RUN / "serial.log")
    assert values(argv, "-serial") == ["chardev:serial0"]
    # an old spec's own log is ignored: the agent serves the runtime dir's, and only it
    custom = build_argv(kernel_spec(serial_log="/etc/os-release"), plan())
    assert kv(values(custom, "-chardev")[0])["logfile"] == str(RUN / "serial.log")


def test_boot_files_are_the_ones_the_host_checked() -> None:
    spec = kernel_spec(initrd="/images/link/initrd.img")
    assert values(build_argv(spec, plan()), "-initrd") == ["/images/link/initrd.img"]
    checked = replace(plan(), kernel_file=Path("/images/k1/vmlinuz"),
                      initrd_file=Path("/images/k1/initrd.img"))
    argv = build_argv(spec, checked)
    assert values(argv, "-kernel") == ["/images/k1/vmlinuz"]
    assert values(argv, "-initrd") == ["/images/k1/initrd.img"]


@pytest.mark.parametrize(("accel", "expected"), [
    ("tcg", "tcg,tb-size=64"), ("kvm", "kvm"), ("anything-else", "tcg,tb-size=64"),
])
def test_accelerator(accel: str, expected: str) -> None:
    assert values(build_argv(kernel_spec(), plan(accel)), "-accel") == [expected]


def test_nics_have_stable_taps_fixed_slots_and_lowercase_macs() -> None:
    argv = build_argv(kernel_spec(), plan())
    netdevs = [kv(v) for v in values(argv, "-netdev")]
    assert [n["driver"] for n in netdevs] == ["tap", "tap"]
    assert [n["id"] for n in netdevs] == ["net0", "net1"]
    assert [n["ifname"] for n in netdevs] == [tap_name(UUID, 0), tap_name(UUID, 1)]
    assert all(n["script"] == "no" and n["downscript"] == "no" for n in netdevs)
    assert all(len(n["ifname"]) <= 15 for n in netdevs)

    nics = [kv(v) for v in values(argv, "-device") if "netdev=" in v]
    assert [n["driver"] for n in nics] == ["virtio-net-pci", "e1000"]
    assert [n["netdev"] for n in nics] == ["net0", "net1"]
    assert [n["mac"] for n in nics] == ["52:54:00:aa:bb:01", "52:54:00:aa:bb:02"]
    assert [n["addr"] for n in nics] == ["0x3", "0x4"]


def test_disks_are_blockdevs_at_fixed_slots() -> None:
    argv = build_argv(kernel_spec(), plan())
    file_node, fmt_node = (kv(v) for v in values(argv, "-blockdev"))
    assert file_node["driver"] == "file" and file_node["node-name"] == "file0"
    assert file_node["filename"] == str(DISK) and file_node["read-only"] == "off"
    assert fmt_node == {"driver": "qcow2", "node-name": "disk0", "file": "file0",
                        "read-only": "off"}
    (blk,) = [kv(v) for v in values(argv, "-device") if "drive=" in v]
    assert blk["driver"] == "virtio-blk-pci" and blk["drive"] == "disk0"
    assert blk["addr"] == "0x10"
    assert "bootindex" not in blk  # kernel boot: no boot disk


def test_disks_default_to_the_host_page_cache_and_always_flush() -> None:
    (file_node, _) = (kv(v) for v in values(build_argv(kernel_spec(), plan()), "-blockdev"))
    assert (file_node["cache.direct"], file_node["cache.no-flush"]) == ("off", "off")


def test_each_disk_gets_o_direct_where_its_filesystem_takes_it() -> None:
    second = Path("/dev/shm/web1/data.raw")
    spec = kernel_spec(disks=[DiskSpec("shared", "web1/disk0.qcow2"),
                              DiskSpec("shared", "web1/data.raw", format="raw")])
    host = LaunchPlan(binary="qemu", accel="tcg", runtime=RuntimePaths(RUN),
                      disk_files=(DISK, second), disk_cache_direct=(True, False))
    files = [kv(v) for v in values(build_argv(spec, host), "-blockdev") if "driver=file" in v]
    assert [(f["filename"], f["cache.direct"]) for f in files] == [(str(DISK), "on"),
                                                                    (str(second), "off")]
    assert all(f["cache.no-flush"] == "off" for f in files)


def test_cache_modes_must_match_the_disks() -> None:
    host = LaunchPlan(binary="qemu", accel="tcg", runtime=RuntimePaths(RUN), disk_files=(DISK,),
                      disk_cache_direct=(True, True))
    with pytest.raises(ValueError, match="2 entries for 1 disks"):
        build_argv(kernel_spec(), host)


def test_readonly_raw_disk() -> None:
    spec = kernel_spec(disks=[DiskSpec("shared", "web1/seed.raw", format="raw", readonly=True)])
    file_node, fmt_node = (kv(v) for v in values(build_argv(spec, plan()), "-blockdev"))
    assert file_node["read-only"] == "on" and fmt_node["read-only"] == "on"
    assert fmt_node["driver"] == "raw"


def test_kernel_boot_options() -> None:
    argv = build_argv(kernel_spec(), plan())
    assert values(argv, "-kernel") == ["/img/vmlinuz"]
    assert values(argv, "-initrd") == ["/img/initrd.img"]
    assert values(argv, "-append") == ["console=ttyS0 quiet"]
    bare = build_argv(kernel_spec(initrd=None, cmdline=""), plan())
    assert values(bare, "-kernel") == ["/img/vmlinuz"]
    assert "-initrd" not in bare and "-append" not in bare


def test_disk_boot_marks_only_the_first_disk() -> None:
    second = Path("/srv/ds/shared/web1/data.qcow2")
    spec = kernel_spec(kernel=None, initrd=None, cmdline="",
                       disks=[DiskSpec("shared", "web1/disk0.qcow2"),
                              DiskSpec("shared", "web1/data.qcow2")])
    argv = build_argv(spec, plan(disks=(DISK, second)))
    blks = [kv(v) for v in values(argv, "-device") if "drive=" in v]
    assert [b.get("bootindex") for b in blks] == ["1", None]
    assert [b["addr"] for b in blks] == ["0x10", "0x11"]
    assert "-kernel" not in argv and "-append" not in argv


def test_incoming_only_when_asked() -> None:
    assert "-incoming" not in build_argv(kernel_spec(), plan())
    argv = build_argv(kernel_spec(), plan(incoming="defer"))
    assert values(argv, "-incoming") == ["defer"]
    assert "-S" in argv  # a destination stays paused too


def test_same_spec_gives_the_same_argv() -> None:
    spec = kernel_spec()
    assert build_argv(spec, plan()) == build_argv(spec, plan())
    assert build_argv(vm_spec_from_dict(spec.to_dict()), plan()) == build_argv(spec, plan())


def test_the_device_model_does_not_depend_on_the_host() -> None:
    """Source and destination hosts differ in paths and accelerator, never in devices."""

    def device_model(argv: list[str]) -> list[str]:
        return [re.sub(r"filename=[^,]*", "filename=*", v) for v in values(argv, "-device")]

    here = build_argv(kernel_spec(), plan("kvm"))
    there = build_argv(kernel_spec(), LaunchPlan(
        binary="qemu-system-x86_64", accel="tcg", runtime=RuntimePaths(Path("/other/run")),
        disk_files=(Path("/mnt/shared/web1/disk0.qcow2"),), incoming="defer"))
    assert device_model(here) == device_model(there)
    assert values(here, "-netdev") == values(there, "-netdev")  # same tap names


def test_missing_disk_file_is_an_error_not_a_dropped_disk() -> None:
    with pytest.raises(ValueError):
        build_argv(kernel_spec(), plan(disks=()))


def test_tap_name_is_stable_per_vm_and_index() -> None:
    assert tap_name(UUID, 0) == tap_name(UUID, 0)
    assert tap_name(UUID, 0) != tap_name(UUID, 1)
    other = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    assert tap_name(UUID, 0) != tap_name(other, 0)
    assert re.fullmatch(r"tap[0-9a-f]{8}n0", tap_name(UUID, 0))


@given(st.uuids().map(str), st.integers(min_value=0, max_value=999),
       st.integers(min_value=0, max_value=999))
def test_tap_names_fit_ifnamsiz_and_differ_per_index(vm_uuid: str, i: int, j: int) -> None:
    a, b = tap_name(vm_uuid, i), tap_name(vm_uuid, j)
    assert len(a) <= 15 and len(b) <= 15  # IFNAMSIZ - 1
    assert re.fullmatch(r"[a-z0-9]+", a)
    assert (a == b) == (i == j)


def test_a_valid_spec_never_gets_clashing_pci_slots() -> None:
    nics = [NicSpec("vm-net", f"52:54:00:00:00:{i:02x}") for i in range(14)]
    spec = kernel_spec(nics=nics)
    try:
        validate_vm_spec(spec)
    except Exception:
        return  # rejecting such a spec is a fix too
    slots = [kv(v)["addr"] for v in values(build_argv(spec, plan()), "-device")]
    assert len(slots) == len(set(slots)), f"clashing PCI slots: {slots}"
    assert all(int(s, 16) < 32 for s in slots)


def test_a_comma_in_a_valid_disk_path_cannot_inject_blockdev_options() -> None:
    spec = kernel_spec(disks=[DiskSpec("shared", "web1/a,read-only=off.qcow2")])
    try:
        validate_vm_spec(spec)
    except Exception:
        return  # rejecting such a path is a fix too
    path = Path("/srv/ds/shared/web1/a,read-only=off.qcow2")
    (file_arg, _) = values(build_argv(spec, plan(disks=(path,))), "-blockdev")
    assert "filename=/srv/ds/shared/web1/a,,read-only=off.qcow2," in file_arg


def test_qemu_runs_under_its_seccomp_filter_with_every_deny() -> None:
    (sandbox,) = values(build_argv(kernel_spec(), plan()), "-sandbox")
    assert sandbox == SANDBOX
    assert kv(sandbox) == {"driver": "on", "obsolete": "deny", "elevateprivileges": "deny",
                           "spawn": "deny", "resourcecontrol": "deny"}


def test_the_sandbox_can_be_turned_off() -> None:
    argv = build_argv(kernel_spec(), replace(plan(), sandbox=False))
    assert "-sandbox" not in argv and "-daemonize" not in argv
