"""A virtual machine's definition (its spec) and its run state.

A ``VMSpec`` is plain data: what the VM is (memory, vCPUs, CPU model, machine type, NICs on
port groups, disks on datastores, how it boots). ``vm_spec_from_dict`` reads a stored spec
with pydantic (strict: unknown fields and values of the wrong type are refused).
``validate_vm_spec`` checks what can be checked without a host and raises ``InvalidRequest``
naming the field and the fix; checks against a host (does the port group exist, is there
memory) belong to the agent.

Errors: ``InvalidRequest`` (``VM_SPEC_INVALID``) naming the field;
(``PATH_OUTSIDE_DATASTORE``) for a disk path that is absolute or climbs out with ``..``
(the agent also resolves symlinks and checks the kernel and initrd: ``segue.agent.confine``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from pydantic import ConfigDict, TypeAdapter, with_config

from segue.domain.errors import InvalidRequest
from segue.domain.validation import parse_json_data

VM_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,47}")
MAC_RE = re.compile(r"([0-9a-f]{2}:){5}[0-9a-f]{2}")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Fixed PCI slots leave room for this many of each (see segue.qemu.argv).
MAX_NICS = 8
MAX_DISKS = 8
DISK_FORMATS = ("qcow2", "raw")
NIC_MODELS = ("virtio-net-pci", "e1000")
MAX_VCPUS = 64


class VMState(StrEnum):
    """Run state of a VM as its host sees it (QEMU's run state, folded)."""

    STOPPED = "stopped"  # defined, no QEMU process
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    INMIGRATE = "inmigrate"  # waiting for an incoming migration
    POSTMIGRATE = "postmigrate"  # migrated away, source side
    SHUTDOWN = "shutdown"  # guest shut down, process still there
    CRASHED = "crashed"  # guest panicked or QEMU internal error
    UNKNOWN = "unknown"


QMP_STATUS_TO_STATE: dict[str, VMState] = {
    "running": VMState.RUNNING,
    "paused": VMState.PAUSED,
    "prelaunch": VMState.PAUSED,
    "suspended": VMState.PAUSED,
    "save-vm": VMState.PAUSED,
    "restore-vm": VMState.PAUSED,
    "debug": VMState.PAUSED,
    "io-error": VMState.PAUSED,
    "watchdog": VMState.PAUSED,
    "colo": VMState.PAUSED,
    "finish-migrate": VMState.PAUSED,
    "inmigrate": VMState.INMIGRATE,
    "postmigrate": VMState.POSTMIGRATE,
    "shutdown": VMState.SHUTDOWN,
    "guest-panicked": VMState.CRASHED,
    "internal-error": VMState.CRASHED,
}


def state_from_qmp_status(status: str) -> VMState:
    """Fold a QMP ``query-status`` status into a VMState (unknown strings → UNKNOWN)."""
    return QMP_STATUS_TO_STATE.get(status, VMState.UNKNOWN)


# Stored specs are read closed: a field unknown here means the spec is not one of ours.
_CLOSED = ConfigDict(extra="forbid")


@with_config(_CLOSED)
@dataclass(frozen=True)
class NicSpec:
    """A NIC: the port group it plugs into and its MAC (kept across migrations)."""

    port_group: str
    mac: str
    model: str = "virtio-net-pci"


@with_config(_CLOSED)
@dataclass(frozen=True)
class DiskSpec:
    """A disk file on a datastore, named by datastore and path relative to its root."""

    datastore: str
    path: str
    format: str = "qcow2"
    readonly: bool = False


@with_config(_CLOSED)
@dataclass(frozen=True)
class VMSpec:
    """Everything needed to start the VM on any host that has its port groups and datastores.

    Boot is direct kernel boot when ``kernel`` is set (``initrd``/``cmdline`` optional),
    else from the first disk. ``datastore`` is the VM's home: its spec file lives there.
    ``serial_log`` is read for specs stored by older versions: the agent decides where the
    console log goes (the VM's runtime dir), and refuses a new VM's that names elsewhere.
    """

    name: str
    datastore: str
    uuid: str = ""
    memory_mib: int = 256
    vcpus: int = 1
    cpu_model: str = "qemu64"
    machine: str = "pc"
    nics: list[NicSpec] = field(default_factory=list)
    disks: list[DiskSpec] = field(default_factory=list)
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""
    serial_log: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_changes(self, **changes: Any) -> VMSpec:
        return replace(self, **changes)


_VM_SPEC = TypeAdapter(VMSpec)


def vm_spec_from_dict(data: object) -> VMSpec:
    """Rebuild a spec from its ``to_dict`` form (``nics``/``disks`` of null read as none);
    raises InvalidRequest (``VM_SPEC_INVALID``) naming the field of a malformed one."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if not (k in ("nics", "disks") and v is None)}
    return parse_json_data(_VM_SPEC, data, "VM_SPEC_INVALID", "VM spec",
                           "compare it with the VMSpec fields")


def _invalid(field_name: str, problem: str, hint: str) -> InvalidRequest:
    return InvalidRequest("VM_SPEC_INVALID", f"{field_name}: {problem}", hint, field=field_name)


def validate_vm_spec(spec: VMSpec) -> None:
    """Check a spec on its own; raises InvalidRequest (code VM_SPEC_INVALID) on the first fault."""
    if not VM_NAME_RE.fullmatch(spec.name):
        raise _invalid(
            "name", f"{spec.name!r} is not a valid VM name",
            "use 1-48 lowercase letters, digits, '.', '_' or '-', starting with a letter/digit",
        )
    if spec.uuid and not UUID_RE.fullmatch(spec.uuid):
        raise _invalid("uuid", f"{spec.uuid!r} is not a UUID", "leave it empty to generate one")
    if not 16 <= spec.memory_mib <= 1024 * 1024:
        raise _invalid("memory_mib", f"{spec.memory_mib} MiB is out of range",
                       "use 16 MiB to 1 TiB")
    if not 1 <= spec.vcpus <= MAX_VCPUS:
        raise _invalid("vcpus", f"{spec.vcpus} vCPUs is out of range", f"use 1 to {MAX_VCPUS}")
    _validate_nics(spec.nics)
    _validate_disks(spec.disks)
    if spec.kernel is None and not spec.disks:
        raise _invalid("kernel", "the VM has neither a kernel nor a disk to boot from",
                       "give kernel (and initrd) or at least one disk")
    if spec.serial_log is not None and ("," in spec.serial_log
                                        or not spec.serial_log.startswith("/")):
        raise _invalid("serial_log", f"{spec.serial_log!r} is not an absolute path without commas",
                       "leave it out: the agent writes the console log in the VM's runtime dir")
    if spec.kernel is None and spec.initrd is not None:
        raise _invalid("initrd", "an initrd needs a kernel", "give kernel too, or drop initrd")


def _validate_nics(nics: list[NicSpec]) -> None:
    if len(nics) > MAX_NICS:
        raise _invalid("nics", f"{len(nics)} NICs, at most {MAX_NICS} are supported",
                       "use fewer NICs")
    seen: set[str] = set()
    for i, nic in enumerate(nics):
        mac = nic.mac.lower()
        if not MAC_RE.fullmatch(mac) or int(mac[:2], 16) & 1:
            raise _invalid(f"nics[{i}].mac", f"{nic.mac!r} is not a unicast MAC address",
                           "use six hex pairs like 52:54:00:12:34:56")
        if mac in seen:
            raise _invalid(f"nics[{i}].mac", f"MAC {mac} is used twice in this VM",
                           "give each NIC its own MAC")
        seen.add(mac)
        if nic.model not in NIC_MODELS:
            raise _invalid(f"nics[{i}].model", f"unknown NIC model {nic.model!r}",
                           f"use one of {', '.join(NIC_MODELS)}")
        if not nic.port_group:
            raise _invalid(f"nics[{i}].port_group", "empty port group", "name a port group")


def _validate_disks(disks: list[DiskSpec]) -> None:
    if len(disks) > MAX_DISKS:
        raise _invalid("disks", f"{len(disks)} disks, at most {MAX_DISKS} are supported",
                       "use fewer disks")
    for i, disk in enumerate(disks):
        if disk.format not in DISK_FORMATS:
            raise _invalid(f"disks[{i}].format", f"unknown disk format {disk.format!r}",
                           f"use one of {', '.join(DISK_FORMATS)}")
        parts = disk.path.split("/")
        if "," in disk.path:  # QEMU option syntax: a comma would start a new option
            raise _invalid(f"disks[{i}].path", f"{disk.path!r} contains a comma",
                           "rename the file without commas")
        if disk.path.startswith("/") or ".." in parts or not disk.path:
            raise InvalidRequest(
                "PATH_OUTSIDE_DATASTORE",
                f"disks[{i}].path: {disk.path!r} is not a path inside datastore {disk.datastore}",
                "give a path relative to the datastore, without '..', such as "
                "web1/disk0.qcow2", field=f"disks[{i}].path", path=disk.path)
