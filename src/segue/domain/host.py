"""What a host agent reports about its host (plain data)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class CpuFacts:
    """The host CPU and what its accelerator offers a guest.

    ``accel`` is ``kvm`` or ``tcg``; ``accel_reason`` says why that one was chosen.
    ``features`` are the CPU features QEMU's ``max`` model has under that accelerator.
    """

    host_model: str
    accel: str
    accel_reason: str
    logical_cpus: int
    features: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MemoryFacts:
    total_mib: int
    available_mib: int


@dataclass(frozen=True)
class PortGroupFacts:
    name: str
    bridge: str
    exists: bool
    up: bool


@dataclass(frozen=True)
class DatastoreFacts:
    """A datastore as this host mounts it; ``uuid`` comes from its identity file."""

    name: str
    path: str
    present: bool
    uuid: str | None
    total_bytes: int = 0
    free_bytes: int = 0


@dataclass(frozen=True)
class MigrationNicFacts:
    interface: str | None
    present: bool
    up: bool
    addresses: list[str] = field(default_factory=list)
    speed_mbps: int | None = None


@dataclass(frozen=True)
class QemuFacts:
    binary: str
    version: str
    machines: list[str] = field(default_factory=list)
    machine_aliases: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HostFacts:
    name: str
    cpu: CpuFacts
    memory: MemoryFacts
    qemu: QemuFacts
    migration: MigrationNicFacts
    port_groups: list[PortGroupFacts] = field(default_factory=list)
    datastores: list[DatastoreFacts] = field(default_factory=list)
    vms: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
