"""A VM's spec on the wire, and a VM as its host agent reports it.

``VMSpecBody`` mirrors ``segue.domain.vm.VMSpec`` field for field, with bounds; the deeper
checks (MAC syntax, ...) stay in ``validate_vm_spec`` and answer ``VM_SPEC_INVALID`` naming the
field (``PATH_OUTSIDE_DATASTORE`` for a disk path climbing out of its datastore); the agent
checks that every file lies under its datastores or image dirs. ``serial_log``: leave it out
(the agent writes the console log in the VM's runtime dir and refuses any other).
``to_domain``/``from_domain`` convert.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from segue.api.base import Name, RequestModel, ResponseModel, Text
from segue.domain.vm import DiskSpec, NicSpec, VMSpec, VMState

PathText = Annotated[str, Field(min_length=1, max_length=1024)]


class NicBody(RequestModel):
    port_group: Name
    mac: Annotated[str, Field(max_length=17)]
    model: Annotated[str, Field(max_length=32)] = "virtio-net-pci"


class DiskBody(RequestModel):
    datastore: Name
    path: PathText
    format: Annotated[str, Field(max_length=16)] = "qcow2"
    readonly: bool = False


class VMSpecBody(RequestModel):
    """What a VM is (``segue.domain.vm.VMSpec``)."""

    # the name's syntax is the domain's (``validate_vm_spec``: VM_SPEC_INVALID naming it)
    name: Annotated[str, Field(min_length=1, max_length=64)]
    datastore: Name
    uuid: Annotated[str, Field(max_length=36)] = ""
    memory_mib: Annotated[int, Field(ge=16, le=1024 * 1024)] = 256
    vcpus: Annotated[int, Field(ge=1, le=64)] = 1
    cpu_model: Text = "qemu64"  # a baseline names every feature: long
    machine: Annotated[str, Field(max_length=64)] = "pc"
    nics: Annotated[list[NicBody], Field(max_length=8)] = []
    disks: Annotated[list[DiskBody], Field(max_length=8)] = []
    kernel: PathText | None = None
    initrd: PathText | None = None
    cmdline: Text = ""
    serial_log: PathText | None = None

    def to_domain(self) -> VMSpec:
        return VMSpec(
            name=self.name, datastore=self.datastore, uuid=self.uuid,
            memory_mib=self.memory_mib, vcpus=self.vcpus, cpu_model=self.cpu_model,
            machine=self.machine,
            nics=[NicSpec(n.port_group, n.mac, n.model) for n in self.nics],
            disks=[DiskSpec(d.datastore, d.path, d.format, d.readonly) for d in self.disks],
            kernel=self.kernel, initrd=self.initrd, cmdline=self.cmdline,
            serial_log=self.serial_log)

    @classmethod
    def from_domain(cls, spec: VMSpec) -> VMSpecBody:
        return cls.model_validate(spec.to_dict(), strict=False)


class VMInfo(ResponseModel):
    """A VM as its host agent sees it now (QEMU is asked, not remembered). ``role``:
    ``owner``, ``source`` or ``incoming`` (``segue.agent.roles``); ``migration_id`` while
    it is an unclaimed destination; ``generation``: the lease generation this host holds the
    VM at (``segue.agent.leases``; None: it holds no lease of it); ``fenced``: why it must
    never run here again (its lease went to another host); ``serial_log``: the console log,
    always in the VM's runtime dir on its host (``GET /vms/{name}/serial`` reads it)."""

    name: str
    uuid: str
    host: str
    state: VMState
    role: str
    migration_id: str | None = None
    generation: int | None = None
    fenced: str | None = None
    pid: int | None = None
    started_at: float | None = None
    adopted: bool = False
    last_exit: str | None = None
    accel: str = ""
    serial_log: str = ""
    spec: VMSpecBody
