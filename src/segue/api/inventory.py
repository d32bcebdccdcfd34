"""The controller's inventory bodies: heartbeats, hosts, VMs and their events.

``Heartbeat`` is what an agent POSTs to ``/hosts/heartbeat`` (its host's facts as
``HostFactsBody``, its VMs as ``VMReport``); ``HostView``/``HostDetail`` and
``VMView``/``VMDetail`` are what the inventory routes answer; ``CreateVMBody`` is
``POST /vms``. A VM's ``state`` in the inventory is a ``segue.domain.vm.VMState`` or
``missing`` (its host's agent stopped reporting it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, JsonValue

from segue.api.base import ErrorDetail, Name, NonNegInt, RequestModel, ResponseModel, ShortText
from segue.api.vm import VMInfo, VMSpecBody
from segue.domain.host import (
    CpuFacts,
    DatastoreFacts,
    HostFacts,
    MemoryFacts,
    MigrationNicFacts,
    PortGroupFacts,
    QemuFacts,
)
from segue.domain.vm import VMState

MISSING: Literal["missing"] = "missing"
InventoryState = VMState | Literal["missing"]
HostConnection = Literal["connected", "disconnected"]
HostMaintenance = Literal["normal", "entering-maintenance", "in-maintenance"]
# An enum on the wire is its value: taken from JSON as such although requests are strict.
WireVMState = Annotated[VMState, Field(strict=False)]
Url = Annotated[str, Field(min_length=1, max_length=255)]
Pid = Annotated[int, Field(ge=1, le=2**31 - 1)]
Features = Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=1024)]
Mib = Annotated[int, Field(ge=0, le=2**40)]


# ---- heartbeats ----
class CpuFactsBody(RequestModel):
    host_model: ShortText
    accel: Annotated[str, Field(max_length=16)]
    accel_reason: ShortText = ""
    logical_cpus: Annotated[int, Field(ge=0, le=65536)]
    features: Features = []


class MemoryFactsBody(RequestModel):
    total_mib: Mib
    available_mib: Mib


class QemuFactsBody(RequestModel):
    binary: Annotated[str, Field(max_length=1024)]
    version: Annotated[str, Field(max_length=64)]
    machines: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=512)] = []
    machine_aliases: Annotated[dict[Annotated[str, Field(max_length=64)],
                                    Annotated[str, Field(max_length=64)]],
                               Field(max_length=512)] = {}
    sandbox: bool = False


class MigrationNicFactsBody(RequestModel):
    interface: Annotated[str, Field(max_length=64)] | None
    present: bool
    up: bool
    addresses: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=64)] = []
    speed_mbps: Annotated[int, Field(ge=0, le=10**7)] | None = None
    tls: bool = False  # credentials for encrypted migrations


class PortGroupFactsBody(RequestModel):
    name: Name
    bridge: Annotated[str, Field(max_length=64)]
    exists: bool
    up: bool


class DatastoreFactsBody(RequestModel):
    name: Name
    path: Annotated[str, Field(max_length=1024)]
    present: bool
    uuid: Annotated[str, Field(max_length=64)] | None
    total_bytes: NonNegInt = 0
    free_bytes: NonNegInt = 0


class HostFactsBody(RequestModel):
    """What an agent reports about its host (``segue.domain.host.HostFacts``)."""

    name: Name
    cpu: CpuFactsBody
    memory: MemoryFactsBody
    qemu: QemuFactsBody
    migration: MigrationNicFactsBody
    port_groups: Annotated[list[PortGroupFactsBody], Field(max_length=256)] = []
    datastores: Annotated[list[DatastoreFactsBody], Field(max_length=256)] = []
    vms: Annotated[int, Field(ge=0, le=1_000_000)] = 0

    def to_domain(self) -> HostFacts:
        return HostFacts(
            name=self.name, cpu=CpuFacts(**self.cpu.model_dump()),
            memory=MemoryFacts(**self.memory.model_dump()),
            qemu=QemuFacts(**self.qemu.model_dump()),
            migration=MigrationNicFacts(**self.migration.model_dump()),
            port_groups=[PortGroupFacts(**p.model_dump()) for p in self.port_groups],
            datastores=[DatastoreFacts(**d.model_dump()) for d in self.datastores],
            vms=self.vms)

    @classmethod
    def from_domain(cls, facts: HostFacts) -> HostFactsBody:
        return cls.model_validate(facts.to_dict())


class VMReport(RequestModel):
    """One VM a host's agent runs or keeps defined, as its heartbeat reports it: its role
    there (owner, source, incoming), the lease generation the host holds it at (None: no
    lease) and why it is fenced there, if it is."""

    name: Name
    uuid: Annotated[str, Field(max_length=36)]
    state: WireVMState
    pid: Pid | None = None
    spec: VMSpecBody
    role: Literal["owner", "source", "incoming"] = "owner"
    generation: Annotated[int, Field(ge=0, le=2**62)] | None = None
    fenced: Annotated[str, Field(max_length=1024)] | None = None
    migration_id: Annotated[str, Field(max_length=64)] | None = None

    @classmethod
    def from_info(cls, info: VMInfo) -> VMReport:
        role = info.role if info.role in ("owner", "source", "incoming") else "owner"
        return cls(name=info.name, uuid=info.uuid, state=info.state, pid=info.pid,
                   spec=info.spec, role=role, generation=info.generation,  # type: ignore[arg-type]
                   fenced=info.fenced, migration_id=info.migration_id)


class Heartbeat(RequestModel):
    """``POST /hosts/heartbeat``: an agent is alive, where it listens, its host and VMs."""

    name: Name
    url: Url
    facts: HostFactsBody
    vms: Annotated[list[VMReport], Field(max_length=4096)] = []


class HeartbeatAnswer(ResponseModel):
    name: str
    state: HostConnection


# ---- hosts ----
class HostView(ResponseModel):
    """A host as the inventory knows it; ``state`` is fresh (``disconnected`` once its
    heartbeats stopped for longer than the controller's heartbeat timeout)."""

    name: str
    url: str
    state: HostConnection
    migration_address: str | None = None
    maintenance: bool = False  # maintenance_state is not normal
    maintenance_state: HostMaintenance = "normal"
    maintenance_reason: str | None = None  # why it is stuck entering maintenance
    migration_enabled: bool = True
    last_heartbeat: datetime | None = None
    created_at: datetime
    cpus: int | None = None
    accel: str | None = None
    memory_total_mib: int | None = None
    memory_available_mib: int | None = None
    vms: list[str] = []
    tags: list[str] = []


class HostDetail(HostView):
    """``GET /hosts/{name}``: the host and the facts of its last heartbeat (None before any)."""

    facts: HostFacts | None = None


# ---- VMs ----
class CreateVMBody(RequestModel):
    """``POST /vms``: define the VM on ``host`` (and start it unless ``start`` is false)."""

    host: Name
    spec: VMSpecBody
    start: bool = True
    tags: Annotated[list[Name], Field(max_length=64)] = []  # given before any policy decides


class VMView(ResponseModel):
    """A VM as the inventory knows it (its last known state; ``missing`` when its host no
    longer reports it)."""

    name: str
    uuid: str
    host: str
    state: InventoryState
    pid: int | None = None
    updated_at: datetime
    spec: VMSpecBody
    tags: list[str] = []  # segue.security.policies: what policies and roles match on


class VMDetail(VMView):
    """A VM with what its host's agent says now: ``live`` (None, and ``live_error`` set,
    when the agent could not be asked)."""

    live: VMInfo | None = None
    live_error: ErrorDetail | None = None


class VMEventView(ResponseModel):
    """One entry of a VM's event log (``kind``: defined, discovered, started, stopped, state,
    moved, destroyed, and the migration engine's)."""

    id: int
    vm: str
    at: datetime
    kind: str
    detail: dict[str, JsonValue] = {}
