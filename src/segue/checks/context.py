"""Everything the checks decide on, gathered beforehand by the controller (plain data).

Host facts arrive as the agent's ``GET /host`` JSON; ``host_facts_from_dict`` turns them into
``segue.domain.host.HostFacts``, tolerating missing parts (an unknown value becomes empty or
zero, which the checks then report as a problem rather than assume fine).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from segue.domain.host import (
    CpuFacts,
    DatastoreFacts,
    HostFacts,
    MemoryFacts,
    MigrationNicFacts,
    PortGroupFacts,
    QemuFacts,
)
from segue.domain.vm import VMSpec


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return dict(value) if isinstance(value, dict) else {}


def _cpu(cpu: dict[str, Any]) -> CpuFacts:
    return CpuFacts(host_model=str(cpu.get("host_model") or ""), accel=str(cpu.get("accel") or ""),
                    accel_reason=str(cpu.get("accel_reason") or ""),
                    logical_cpus=int(cpu.get("logical_cpus") or 0),
                    features=[str(f) for f in cpu.get("features") or []])


def _nic(nic: dict[str, Any]) -> MigrationNicFacts:
    speed = nic.get("speed_mbps")
    return MigrationNicFacts(interface=nic.get("interface"), present=bool(nic.get("present")),
                             up=bool(nic.get("up")),
                             addresses=[str(a) for a in nic.get("addresses") or []],
                             speed_mbps=int(speed) if speed is not None else None)


def host_facts_from_dict(name: str, data: dict[str, Any]) -> HostFacts:
    """The agent's facts JSON as ``HostFacts``; missing parts are empty (never raises)."""
    memory, qemu = _section(data, "memory"), _section(data, "qemu")
    return HostFacts(
        name=str(data.get("name") or name),
        cpu=_cpu(_section(data, "cpu")),
        memory=MemoryFacts(total_mib=int(memory.get("total_mib") or 0),
                           available_mib=int(memory.get("available_mib") or 0)),
        qemu=QemuFacts(binary=str(qemu.get("binary") or ""), version=str(qemu.get("version") or ""),
                       machines=[str(m) for m in qemu.get("machines") or []],
                       machine_aliases={str(k): str(v) for k, v in
                                        dict(qemu.get("machine_aliases") or {}).items()}),
        migration=_nic(_section(data, "migration")),
        port_groups=[PortGroupFacts(name=str(p.get("name")), bridge=str(p.get("bridge") or ""),
                                    exists=bool(p.get("exists")), up=bool(p.get("up")))
                     for p in data.get("port_groups") or []],
        datastores=[DatastoreFacts(name=str(d.get("name")), path=str(d.get("path") or ""),
                                   present=bool(d.get("present")), uuid=d.get("uuid"),
                                   total_bytes=int(d.get("total_bytes") or 0),
                                   free_bytes=int(d.get("free_bytes") or 0))
                    for d in data.get("datastores") or []],
        vms=int(data.get("vms") or 0),
    )


@dataclass(frozen=True)
class HostRecord:
    """A host as the controller knows it, with its facts (fresh from its agent when
    ``reachable``; else the last heartbeat's, and ``unreachable_reason`` says why)."""

    name: str
    connected: bool
    maintenance: bool
    migration_enabled: bool
    facts: HostFacts
    reachable: bool = True
    unreachable_reason: str = ""


@dataclass(frozen=True)
class PathProbe:
    """A TCP connect from the source's migration address to a one-shot listener on the
    destination's (``ok`` False with ``error`` when it failed)."""

    ok: bool
    dest_address: str
    port: int
    source_address: str | None = None
    rtt_ms: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class MigrationContext:
    """One question: can ``vm`` (``vm_state`` on ``source``) move to ``dest`` now?

    ``vm_cpu_features``: the features the VM's QEMU exposes (None: the source could not say).
    ``reserved_mib``: memory (with QEMU overhead) held for other migrations into ``dest``.
    ``probe``: the migration path test (None: not tried, as a NIC was already unusable).
    ``in_flight``: the id of another active migration of this VM, if any.
    ``files_visible``: ``"datastore:path"`` of each VM file -> whether the destination sees it
    (None: not asked, as the destination did not answer).
    """

    vm: VMSpec
    vm_state: str
    vm_cpu_features: frozenset[str] | None
    source: HostRecord
    dest: HostRecord
    reserved_mib: int = 0
    probe: PathProbe | None = None
    in_flight: str | None = None
    files_visible: dict[str, bool] | None = None
