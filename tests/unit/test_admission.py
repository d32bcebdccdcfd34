"""Admission checks over a host snapshot (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segue.agent.admission import (
    QEMU_OVERHEAD_MIB,
    HostView,
    check_cpu,
    check_fits,
    check_references,
    check_unique,
    resolve_machine,
)
from segue.domain.errors import (
    Conflict,
    InsufficientResources,
    InvalidRequest,
    NotFound,
    SegueError,
)
from segue.domain.vm import DiskSpec, NicSpec, VMSpec

KERNEL = "/img/vmlinuz"
INITRD = "/img/initrd.img"
DISK0 = "/ds/shared/web1/disk0.qcow2"


def host_view(**changes: Any) -> HostView:
    """A healthy host: 8 GiB (4 GiB free), 4 CPUs, one port group up and one down."""
    fields: dict[str, Any] = {
        "host": "host1",
        "port_groups": {"vm-net": True, "storage-net": False},
        "datastores": {"shared": True, "stale": False},
        "existing_files": frozenset({KERNEL, INITRD, DISK0}),
        "machines": frozenset({"pc-i440fx-7.2", "pc-q35-7.2", "none"}),
        "machine_aliases": {"pc": "pc-i440fx-7.2", "q35": "pc-q35-7.2"},
        "memory_total_mib": 8192,
        "memory_available_mib": 4096,
        "logical_cpus": 4,
    }
    fields.update(changes)
    return HostView(**fields)


def vm(name: str = "web1", *macs: str, **changes: Any) -> VMSpec:
    spec = VMSpec(name=name, datastore="shared", memory_mib=512, vcpus=2,
                  nics=[NicSpec("vm-net", m) for m in macs], kernel=KERNEL, initrd=INITRD)
    return spec.with_changes(**changes)


def paths(spec: VMSpec) -> dict[str, str]:
    out = {"kernel": spec.kernel or "", "initrd": spec.initrd or ""}
    out.update({f"disks[{i}]": f"/ds/{d.datastore}/{d.path}" for i, d in enumerate(spec.disks)})
    return {k: v for k, v in out.items() if v}


def raises(cls: type[SegueError], code: str, fn: Any, *args: Any, **kwargs: Any) -> SegueError:
    with pytest.raises(SegueError) as exc:
        fn(*args, **kwargs)
    err = exc.value
    assert type(err) is cls, f"{code} should be {cls.__name__}, is {type(err).__name__}"
    assert err.code == code
    assert err.message and err.hint
    return err


# ---- check_unique ----

def test_unique_passes_on_an_empty_host() -> None:
    check_unique(vm("web1", "52:54:00:00:00:01"), host_view())


def test_unique_passes_beside_other_vms() -> None:
    view = host_view(local_vms={"db1": vm("db1", "52:54:00:00:00:02")},
                     datastore_vms={"db2": ("host2", vm("db2", "52:54:00:00:00:03"))})
    check_unique(vm("web1", "52:54:00:00:00:01"), view)


def test_vm_exists_locally() -> None:
    err = raises(Conflict, "VM_EXISTS", check_unique, vm("web1"),
                 host_view(local_vms={"web1": vm("web1")}))
    assert "web1" in err.message and "host1" in err.message


def test_vm_exists_on_the_datastore_names_its_host() -> None:
    err = raises(Conflict, "VM_EXISTS", check_unique, vm("web1"),
                 host_view(datastore_vms={"web1": ("host2", vm("web1"))}))
    assert "host2" in err.message


@pytest.mark.parametrize(("theirs", "mine"), [
    ("52:54:00:AA:BB:CC", "52:54:00:aa:bb:cc"),
    ("52:54:00:aa:bb:cc", "52:54:00:AA:BB:CC"),
    ("52:54:00:aa:bb:cc", "52:54:00:aa:bb:cc"),
])
@pytest.mark.parametrize("where", ["local", "datastore"])
def test_mac_in_use_whatever_its_case(theirs: str, mine: str, where: str) -> None:
    other = vm("db1", "52:54:00:00:00:09", theirs)
    view = (host_view(local_vms={"db1": other}) if where == "local"
            else host_view(datastore_vms={"db1": ("host2", other)}))
    err = raises(Conflict, "MAC_IN_USE", check_unique, vm("web1", "52:54:00:00:00:01", mine),
                 view)
    assert "52:54:00:aa:bb:cc" in err.message and "db1" in err.message


def test_name_is_checked_before_macs() -> None:
    view = host_view(local_vms={"web1": vm("web1", "52:54:00:00:00:01")})
    raises(Conflict, "VM_EXISTS", check_unique, vm("web1", "52:54:00:00:00:01"), view)


# ---- check_references ----

def test_references_pass_when_everything_exists() -> None:
    spec = vm("web1", "52:54:00:00:00:01", disks=[DiskSpec("shared", "web1/disk0.qcow2")])
    check_references(spec, host_view(), paths(spec))


def test_portgroup_not_found_lists_the_known_ones() -> None:
    spec = vm("web1", "52:54:00:00:00:01").with_changes(
        nics=[NicSpec("vm-net", "52:54:00:00:00:01"), NicSpec("dmz", "52:54:00:00:00:02")])
    err = raises(NotFound, "PORTGROUP_NOT_FOUND", check_references, spec, host_view(),
                 paths(spec))
    assert err.message.startswith("nics[1]") and "'dmz'" in err.message
    assert err.hint == "use one of: storage-net, vm-net"
    err = raises(NotFound, "PORTGROUP_NOT_FOUND", check_references, spec,
                 host_view(port_groups={}), paths(spec))
    assert err.hint == "use one of: none"


def test_portgroup_down() -> None:
    spec = vm("web1").with_changes(nics=[NicSpec("storage-net", "52:54:00:00:00:01")])
    err = raises(Conflict, "PORTGROUP_DOWN", check_references, spec, host_view(), paths(spec))
    assert "storage-net" in err.message


def test_datastore_not_found_for_home_and_for_disks() -> None:
    spec = vm("web1", datastore="nas9")
    err = raises(NotFound, "DATASTORE_NOT_FOUND", check_references, spec, host_view(), {})
    assert err.message.startswith("datastore:") and "'nas9'" in err.message
    assert "shared, stale" in err.hint
    spec = vm("web1", disks=[DiskSpec("nas9", "web1/disk0.qcow2")])
    err = raises(NotFound, "DATASTORE_NOT_FOUND", check_references, spec, host_view(), {})
    assert err.message.startswith("disks[0]:")


def test_datastore_unavailable() -> None:
    raises(Conflict, "DATASTORE_UNAVAILABLE", check_references, vm("web1", datastore="stale"),
           host_view(), {})


def test_missing_disk_is_disk_not_found() -> None:
    spec = vm("web1", disks=[DiskSpec("shared", "web1/disk0.qcow2"),
                             DiskSpec("shared", "web1/gone.qcow2")])
    err = raises(NotFound, "DISK_NOT_FOUND", check_references, spec, host_view(), paths(spec))
    assert err.message.startswith("disks[1]") and "gone.qcow2" in err.message
    assert "qemu-img" in err.hint


@pytest.mark.parametrize("role", ["kernel", "initrd"])
def test_missing_boot_file_is_image_not_found(role: str) -> None:
    spec = vm("web1")
    view = host_view(existing_files=frozenset({KERNEL, INITRD} - {getattr(spec, role)}))
    err = raises(NotFound, "IMAGE_NOT_FOUND", check_references, spec, view, paths(spec))
    assert err.message.startswith(role)
    assert "segue image build" in err.hint


def test_port_groups_are_checked_before_datastores() -> None:
    spec = vm("web1", datastore="nas9").with_changes(nics=[NicSpec("dmz", "52:54:00:00:00:01")])
    raises(NotFound, "PORTGROUP_NOT_FOUND", check_references, spec, host_view(), paths(spec))


# ---- resolve_machine ----

@pytest.mark.parametrize(("machine", "resolved"), [
    ("pc", "pc-i440fx-7.2"), ("q35", "pc-q35-7.2"), ("pc-q35-7.2", "pc-q35-7.2"),
    ("none", "none"),
])
def test_machine_aliases_resolve(machine: str, resolved: str) -> None:
    assert resolve_machine(vm(machine=machine), host_view()) == resolved


@pytest.mark.parametrize("machine", ["pc-i440fx-9.0", "microvm", "PC"])
def test_machine_unknown(machine: str) -> None:
    err = raises(InvalidRequest, "MACHINE_UNKNOWN", resolve_machine, vm(machine=machine),
                 host_view())
    assert repr(machine) in err.message


def test_alias_to_a_machine_not_offered_is_unknown() -> None:
    view = host_view(machine_aliases={"pc": "pc-i440fx-9.9"})
    raises(InvalidRequest, "MACHINE_UNKNOWN", resolve_machine, vm(machine="pc"), view)


# ---- check_fits ----

def test_fits_passes() -> None:
    check_fits(vm(memory_mib=1024, vcpus=4), host_view(), starting=True)


def test_memory_exceeds_host() -> None:
    err = raises(InsufficientResources, "MEMORY_EXCEEDS_HOST", check_fits,
                 vm(memory_mib=8192), host_view(), starting=False)
    assert "8192" in err.message and "host1" in err.message
    check_fits(vm(memory_mib=8191), host_view(memory_available_mib=8192), starting=False)


def test_vcpus_exceed_host() -> None:
    err = raises(InsufficientResources, "VCPUS_EXCEED_HOST", check_fits, vm(vcpus=5),
                 host_view(), starting=False)
    assert "5 vCPUs" in err.message and "4" in err.message
    check_fits(vm(vcpus=4), host_view(), starting=False)


def test_insufficient_memory_only_when_starting() -> None:
    spec = vm(memory_mib=4096 - QEMU_OVERHEAD_MIB + 1)
    check_fits(spec, host_view(), starting=False)  # define: the host is big enough
    err = raises(InsufficientResources, "INSUFFICIENT_MEMORY", check_fits, spec, host_view(),
                 starting=True)
    assert str(4096 - QEMU_OVERHEAD_MIB + 1 + QEMU_OVERHEAD_MIB) in err.message
    check_fits(vm(memory_mib=4096 - QEMU_OVERHEAD_MIB), host_view(), starting=True)


@given(memory=st.integers(16, 20000), vcpus=st.integers(1, 64),
       total=st.integers(256, 16384), free=st.integers(0, 16384), cpus=st.integers(1, 64),
       starting=st.booleans())
def test_fits_exactly_when_the_rules_say(memory: int, vcpus: int, total: int, free: int,
                                         cpus: int, starting: bool) -> None:
    free = min(free, total)
    view = host_view(memory_total_mib=total, memory_available_mib=free, logical_cpus=cpus)
    fits = (memory < total and vcpus <= cpus
            and (not starting or memory + QEMU_OVERHEAD_MIB <= free))
    try:
        check_fits(vm(memory_mib=memory, vcpus=vcpus), view, starting=starting)
    except InsufficientResources:
        assert not fits
    else:
        assert fits


# ---- check_cpu ----

def test_cpu_passes_when_nothing_is_excluded_or_asked() -> None:
    check_cpu(vm(cpu_model="qemu64,+aes"), host_view())
    check_cpu(vm(cpu_model="max"), host_view(cpu_excluded=frozenset({"aes", "avx2"})))
    check_cpu(vm(cpu_model="qemu64,-aes,+sse4.2"), host_view(cpu_excluded=frozenset({"aes"})))


def test_cpu_feature_missing_lists_every_excluded_feature_asked_for() -> None:
    err = raises(InsufficientResources, "CPU_FEATURE_MISSING", check_cpu,
                 vm(cpu_model="qemu64,+avx2,aes=on,+sse4.2"),
                 host_view(cpu_excluded=frozenset({"aes", "avx2", "movbe"})))
    assert err.details["missing"] == ["aes", "avx2"]
    assert "aes, avx2" in err.message and "host1" in err.message


def test_cpu_model_malformed_is_invalid() -> None:
    err = raises(InvalidRequest, "VM_SPEC_INVALID", check_cpu, vm(cpu_model="qemu64,,+aes"),
                 host_view(cpu_excluded=frozenset({"aes"})))
    assert err.details["field"] == "cpu_model"
