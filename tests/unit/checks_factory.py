"""Builders of pre-migration check contexts for the unit tests: a healthy pair of hosts and a
running VM, changed one fact at a time."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from segue.checks import HostRecord, MigrationContext, PathProbe, host_facts_from_dict
from segue.domain.vm import DiskSpec, NicSpec, VMSpec

DS_UUID = "0b7c5d4e-1f2a-4b3c-8d9e-0f1a2b3c4d5e"
FEATURES = ("aes", "avx", "lahf_lm", "lm", "sse2", "sse4.2")


def facts(name: str = "host2", **changes: Any) -> dict[str, Any]:
    """Agent facts JSON of a healthy host; ``changes`` replace whole sections."""
    data: dict[str, Any] = {
        "name": name,
        "cpu": {"host_model": "x", "accel": "tcg", "accel_reason": "", "logical_cpus": 8,
                "features": list(FEATURES)},
        "memory": {"total_mib": 16384, "available_mib": 8192},
        "qemu": {"binary": "qemu", "version": "7.2.0",
                 "machines": ["pc-i440fx-7.2", "pc-q35-7.2"],
                 "machine_aliases": {"pc": "pc-i440fx-7.2", "q35": "pc-q35-7.2"}},
        "migration": {"interface": "mig0", "present": True, "up": True,
                      "addresses": [f"10.0.1.{name[-1]}/24"], "speed_mbps": 10000},
        "port_groups": [{"name": "vm-net", "bridge": "br-vm", "exists": True, "up": True}],
        "datastores": [{"name": "shared", "path": "/srv/shared", "present": True,
                        "uuid": DS_UUID, "total_bytes": 10, "free_bytes": 5}],
        "vms": 0,
    }
    data.update(changes)
    return data


def host(name: str = "host2", *, connected: bool = True, maintenance: bool = False,
         migration_enabled: bool = True, reachable: bool = True, **changes: Any) -> HostRecord:
    return HostRecord(name, connected, maintenance, migration_enabled,
                      host_facts_from_dict(name, facts(name, **changes)), reachable,
                      "" if reachable else "AGENT_UNREACHABLE: connection refused")


def vm(**changes: Any) -> VMSpec:
    spec = VMSpec(name="web1", datastore="shared", uuid="", memory_mib=256, vcpus=1,
                  nics=[NicSpec("vm-net", "52:54:00:00:00:01")],
                  disks=[DiskSpec("shared", "web1/disk0.qcow2")], kernel="/k")
    return replace(spec, **changes)


def ctx(*, source: HostRecord | None = None, dest: HostRecord | None = None,
        **changes: Any) -> MigrationContext:
    """A context in which every check passes, but for ``changes``."""
    base = MigrationContext(
        vm=vm(), vm_state="running", vm_cpu_features=frozenset({"lm", "sse2", "lahf-lm"}),
        source=source or host("host1"), dest=dest or host("host2"), reserved_mib=0,
        probe=PathProbe(ok=True, dest_address="10.0.1.2", port=40000,
                        source_address="10.0.1.1", rtt_ms=0.25),
        in_flight=None)
    return replace(base, **changes)


def codes(results: list[Any]) -> list[str]:
    return [r.code for r in results]
