"""Can this host define or start a VM? Pure checks over a snapshot of the host.

Each check raises a ``SegueError`` with a stable code, naming the problem and the fix:
``VM_EXISTS``, ``MAC_IN_USE``, ``DISK_IN_USE``, ``PORTGROUP_NOT_FOUND``, ``PORTGROUP_DOWN``,
``DATASTORE_NOT_FOUND``, ``DATASTORE_UNAVAILABLE``, ``DISK_NOT_FOUND``, ``IMAGE_NOT_FOUND``,
``MACHINE_UNKNOWN``, ``MEMORY_EXCEEDS_HOST``, ``INSUFFICIENT_MEMORY``, ``VCPUS_EXCEED_HOST``,
``CPU_FEATURE_MISSING``, and ``VM_SPEC_INVALID`` for a malformed ``cpu_model``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from segue.domain.errors import Conflict, InsufficientResources, InvalidRequest, NotFound
from segue.domain.vm import VMSpec
from segue.qemu.cpu_model import required_features

# Memory QEMU itself needs beside guest RAM (TCG translation cache, device model).
QEMU_OVERHEAD_MIB = 128


@dataclass(frozen=True)
class HostView:
    """What the admission checks need to know of the host, gathered by the caller."""

    host: str
    port_groups: dict[str, bool]  # name -> bridge exists and is up
    datastores: dict[str, bool]  # name -> present with an identity
    existing_files: frozenset[str]  # absolute paths (disks, kernels) that exist
    machines: frozenset[str]
    machine_aliases: dict[str, str]
    memory_total_mib: int
    memory_available_mib: int
    logical_cpus: int
    local_vms: dict[str, VMSpec] = field(default_factory=dict)
    datastore_vms: dict[str, tuple[str, VMSpec]] = field(default_factory=dict)  # name->(host,spec)
    cpu_excluded: frozenset[str] = frozenset()  # CPU features this host does not offer


def resolve_machine(spec: VMSpec, view: HostView) -> str:
    """The versioned machine type for the spec's machine (``pc`` -> ``pc-i440fx-7.2``)."""
    machine = view.machine_aliases.get(spec.machine, spec.machine)
    if machine not in view.machines:
        raise InvalidRequest(
            "MACHINE_UNKNOWN", f"machine type {spec.machine!r} is not offered by this host's QEMU",
            "use pc or q35, or a versioned type listed in the host facts",
        )
    return machine


def check_unique(spec: VMSpec, view: HostView) -> None:
    """The VM's name and MACs must not be used by another VM on this host or its datastores."""
    if spec.name in view.local_vms:
        raise Conflict("VM_EXISTS", f"a VM named {spec.name} is already defined on {view.host}",
                       "choose another name, or destroy the existing VM first")
    if spec.name in view.datastore_vms:
        owner = view.datastore_vms[spec.name][0]
        raise Conflict("VM_EXISTS", f"a VM named {spec.name} is already defined on host {owner}",
                       "choose another name, or destroy the existing VM first")
    in_use: dict[str, str] = {}
    for other in [*view.local_vms.values(), *(s for _, s in view.datastore_vms.values())]:
        for nic in other.nics:
            in_use[nic.mac.lower()] = other.name
    for nic in spec.nics:
        if nic.mac.lower() in in_use:
            raise Conflict("MAC_IN_USE",
                           f"MAC {nic.mac.lower()} is already used by VM {in_use[nic.mac.lower()]}",
                           "give the NIC a MAC no other VM has")
    disks: dict[tuple[str, str], str] = {}
    for other in [*view.local_vms.values(), *(s for _, s in view.datastore_vms.values())]:
        if other.name != spec.name:
            for disk in other.disks:
                if not disk.readonly:
                    disks[(disk.datastore, os.path.normpath(disk.path))] = other.name
    for i, disk in enumerate(spec.disks):
        other_vm = disks.get((disk.datastore, os.path.normpath(disk.path)))
        if other_vm is not None and not disk.readonly:
            raise Conflict("DISK_IN_USE",
                           f"disks[{i}]: {disk.datastore}:{disk.path} is the disk of VM "
                           f"{other_vm}", "give the VM a disk of its own (two VMs writing one "
                           "disk corrupt it), or attach it read-only")


def check_references(spec: VMSpec, view: HostView, paths: dict[str, str]) -> None:
    """Port groups, datastores, disks and boot files must exist here.

    ``paths`` maps each referenced file role (``kernel``, ``disks[0]``...) to its absolute path.
    """
    for i, nic in enumerate(spec.nics):
        if nic.port_group not in view.port_groups:
            known = ", ".join(sorted(view.port_groups)) or "none"
            raise NotFound("PORTGROUP_NOT_FOUND",
                           f"nics[{i}]: port group {nic.port_group!r} does not exist "
                           f"on {view.host}",
                           f"use one of: {known}")
        if not view.port_groups[nic.port_group]:
            raise Conflict("PORTGROUP_DOWN",
                           f"nics[{i}]: the bridge of port group {nic.port_group} is down",
                           "bring the bridge up on the host")
    for role, ds in [("datastore", spec.datastore)] + [
            (f"disks[{i}]", d.datastore) for i, d in enumerate(spec.disks)]:
        if ds not in view.datastores:
            known = ", ".join(sorted(view.datastores)) or "none"
            raise NotFound("DATASTORE_NOT_FOUND",
                           f"{role}: datastore {ds!r} is not mounted on {view.host}",
                           f"use one of: {known}")
        if not view.datastores[ds]:
            raise Conflict("DATASTORE_UNAVAILABLE",
                           f"{role}: datastore {ds} is missing or has no identity file",
                           "mount the datastore (it needs .segue-datastore.json)")
    for role, path in paths.items():
        if path not in view.existing_files:
            code = "DISK_NOT_FOUND" if role.startswith("disks") else "IMAGE_NOT_FOUND"
            hint = ("run `segue image build`" if code == "IMAGE_NOT_FOUND"
                    else "create the disk file first (qemu-img create)")
            raise NotFound(code, f"{role}: {path} does not exist", hint)


def check_fits(spec: VMSpec, view: HostView, *, starting: bool) -> None:
    """The VM must fit the host: always its total size; when starting, what is free now."""
    need = spec.memory_mib + QEMU_OVERHEAD_MIB
    if spec.memory_mib >= view.memory_total_mib:
        raise InsufficientResources(
            "MEMORY_EXCEEDS_HOST",
            f"{spec.memory_mib} MiB is more than {view.host} has ({view.memory_total_mib} MiB)",
            "give the VM less memory or choose a larger host",
        )
    if spec.vcpus > view.logical_cpus:
        raise InsufficientResources(
            "VCPUS_EXCEED_HOST", f"{spec.vcpus} vCPUs but {view.host} has {view.logical_cpus}",
            "give the VM fewer vCPUs",
        )
    if starting and need > view.memory_available_mib:
        raise InsufficientResources(
            "INSUFFICIENT_MEMORY",
            f"{spec.name} needs {need} MiB, {view.host} has {view.memory_available_mib} MiB free",
            "stop another VM or give this one less memory",
        )


def check_cpu(spec: VMSpec, view: HostView) -> None:
    """The VM's ``cpu_model`` must not explicitly ask for (``+feat``, ``feat=on``) a CPU
    feature this host does not offer; raises InsufficientResources (``CPU_FEATURE_MISSING``,
    ``details.missing``) listing every such feature, InvalidRequest for a malformed model."""
    missing = required_features(spec.cpu_model, view.cpu_excluded)
    if missing:
        raise InsufficientResources(
            "CPU_FEATURE_MISSING",
            f"{spec.name}'s CPU model {spec.cpu_model!r} needs {', '.join(missing)}, "
            f"which {view.host} does not offer",
            "run the VM on a host that offers them, or drop them from its cpu_model",
            missing=missing,
        )
