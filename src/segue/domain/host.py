"""What a host agent reports about its host (plain data).

Every part has an empty default (``""``, ``0``, ``False``, no items): facts stored before a
host reported some part read as empty there, which the checks then report as a problem
rather than assume fine (``segue.checks.context.host_facts_from_dict``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class CpuFacts:
    """The host CPU and what its accelerator offers a guest.

    ``accel`` is ``kvm`` or ``tcg``; ``accel_reason`` says why that one was chosen.
    ``features`` are the CPU features QEMU's ``max`` model has under that accelerator.
    """

    host_model: str = ""
    accel: str = ""
    accel_reason: str = ""
    logical_cpus: int = 0
    features: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MemoryFacts:
    total_mib: int = 0
    available_mib: int = 0


@dataclass(frozen=True)
class PortGroupFacts:
    name: str
    bridge: str = ""
    exists: bool = False
    up: bool = False


@dataclass(frozen=True)
class DatastoreFacts:
    """A datastore as this host mounts it; ``uuid`` comes from its identity file."""

    name: str
    path: str = ""
    present: bool = False
    uuid: str | None = None
    total_bytes: int = 0
    free_bytes: int = 0


@dataclass(frozen=True)
class MigrationNicFacts:
    interface: str | None = None
    present: bool = False
    up: bool = False
    addresses: list[str] = field(default_factory=list)
    speed_mbps: int | None = None
    tls: bool = False  # the host has a credential set its QEMU can encrypt migrations with


@dataclass(frozen=True)
class QemuFacts:
    binary: str = ""
    version: str = ""
    machines: list[str] = field(default_factory=list)
    machine_aliases: dict[str, str] = field(default_factory=dict)
    sandbox: bool = False  # the host's QEMUs run under QEMU's seccomp filter


@dataclass(frozen=True)
class HostFacts:
    name: str
    cpu: CpuFacts = field(default_factory=CpuFacts)
    memory: MemoryFacts = field(default_factory=MemoryFacts)
    qemu: QemuFacts = field(default_factory=QemuFacts)
    migration: MigrationNicFacts = field(default_factory=MigrationNicFacts)
    port_groups: list[PortGroupFacts] = field(default_factory=list)
    datastores: list[DatastoreFacts] = field(default_factory=list)
    vms: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
