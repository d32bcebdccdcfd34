"""Gather this host's facts: CPU and accelerator, memory, port groups, datastores,
migration interface, QEMU capabilities. QEMU's capabilities are probed once per agent
(a short-lived ``-machine none`` QEMU answering QMP); the rest is read on each call.

Errors: ``Unavailable`` (code ``QEMU_PROBE_FAILED``) if QEMU cannot be probed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from pyroute2 import IPRoute

from segue.agent import migtls
from segue.agent.config import AgentConfig
from segue.agent.facts_parse import (
    choose_accel,
    features_from_expansion,
    machines_from_query,
    offered_features,
    parse_cpu_model_name,
    parse_link_speed,
    parse_meminfo,
)
from segue.domain.errors import SegueError, Unavailable
from segue.domain.host import (
    CpuFacts,
    DatastoreFacts,
    HostFacts,
    MemoryFacts,
    MigrationNicFacts,
    PortGroupFacts,
    QemuFacts,
)
from segue.qemu.qmp import QMPSession

DATASTORE_IDENTITY = ".segue-datastore.json"


@dataclass(frozen=True)
class QemuCapabilities:
    accel: str
    accel_reason: str
    features: list[str]
    qemu: QemuFacts


def detect_accel(requested: str) -> tuple[str, str]:
    """The accelerator this host gives guests, with the reason."""
    usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
    modules = {m for m in ("kvm_intel", "kvm_amd", "kvm_pvm") if Path(f"/sys/module/{m}").exists()}
    return choose_accel(requested, usable, modules)


async def probe_qemu(binary: str, accel: str, accel_reason: str) -> QemuCapabilities:
    """Start a throwaway QEMU with no machine and ask it what it offers."""
    if shutil.which(binary) is None:
        raise Unavailable("QEMU_PROBE_FAILED", f"{binary} not found",
                          "install qemu-system-x86 (make setup does)")
    with tempfile.TemporaryDirectory(prefix="segue-probe-") as tmp:
        sock = Path(tmp) / "qmp.sock"
        proc = await asyncio.create_subprocess_exec(
            binary, "-machine", "none", "-accel", accel, "-nodefaults", "-display", "none",
            "-qmp", f"unix:{sock},server=on,wait=off",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        qmp = QMPSession("probe")
        try:
            await qmp.connect(sock, timeout=20)
            version = await qmp.execute("query-version")
            machines = await qmp.execute("query-machines")
            expansion = await qmp.execute(
                "query-cpu-model-expansion", {"type": "full", "model": {"name": "max"}})
            await qmp.execute("quit")
        finally:
            await qmp.close()
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
    names, aliases = machines_from_query(machines)
    q = version["qemu"]
    return QemuCapabilities(
        accel=accel, accel_reason=accel_reason, features=features_from_expansion(expansion),
        qemu=QemuFacts(binary=binary, version=f"{q['major']}.{q['minor']}.{q['micro']}",
                       machines=names, machine_aliases=aliases),
    )


def memory_facts() -> MemoryFacts:
    total, available = parse_meminfo(Path("/proc/meminfo").read_text())
    return MemoryFacts(total_mib=total, available_mib=available)


def _sysfs(ifname: str, attr: str) -> str | None:
    try:
        return Path(f"/sys/class/net/{ifname}/{attr}").read_text().strip()
    except OSError:
        return None


def link_is_up(ifname: str) -> bool:
    return _sysfs(ifname, "operstate") in ("up", "unknown")


def port_group_facts(config: AgentConfig) -> list[PortGroupFacts]:
    out = []
    for name, bridge in sorted(config.port_groups.items()):
        exists = Path(f"/sys/class/net/{bridge}/bridge").is_dir()
        out.append(PortGroupFacts(name=name, bridge=bridge, exists=exists,
                                  up=exists and link_is_up(bridge)))
    return out


def datastore_identity(path: Path) -> str | None:
    """The datastore's uuid from its identity file, or None if it has none."""
    try:
        return str(json.loads((path / DATASTORE_IDENTITY).read_text())["uuid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def datastore_facts(config: AgentConfig) -> list[DatastoreFacts]:
    out = []
    for name, path in sorted(config.datastores.items()):
        if not path.is_dir():
            out.append(DatastoreFacts(name=name, path=str(path), present=False, uuid=None))
            continue
        st = os.statvfs(path)
        out.append(DatastoreFacts(
            name=name, path=str(path), present=True, uuid=datastore_identity(path),
            total_bytes=st.f_blocks * st.f_frsize, free_bytes=st.f_bavail * st.f_frsize,
        ))
    return out


def migration_nic_facts(ifname: str | None) -> MigrationNicFacts:
    if not ifname or _sysfs(ifname, "operstate") is None:
        return MigrationNicFacts(interface=ifname, present=False, up=False)
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        addrs = [a.get("IFA_ADDRESS") for a in ipr.get_addr(index=idx[0])] if idx else []
    return MigrationNicFacts(
        interface=ifname, present=True, up=link_is_up(ifname),
        addresses=[str(a) for a in addrs if a],
        speed_mbps=parse_link_speed(_sysfs(ifname, "speed") or ""),
    )


def migration_tls_ready(config: AgentConfig) -> bool:
    """Whether this host has a credential set for encrypted migrations."""
    try:
        migtls.credentials_dir(config)
    except SegueError:
        return False
    return True


def host_facts(config: AgentConfig, caps: QemuCapabilities, vms: int) -> HostFacts:
    """All facts of this host now (QEMU capabilities as probed at agent start); the CPU
    features are those QEMU offers minus the configured ``cpu_exclude_features``."""
    return HostFacts(
        name=config.host,
        cpu=CpuFacts(
            host_model=parse_cpu_model_name(Path("/proc/cpuinfo").read_text()),
            accel=caps.accel, accel_reason=caps.accel_reason,
            logical_cpus=len(os.sched_getaffinity(0)),
            features=offered_features(caps.features, config.cpu_exclude_features),
        ),
        memory=memory_facts(), qemu=replace(caps.qemu, sandbox=config.qemu_sandbox),
        migration=replace(migration_nic_facts(config.migration_interface),
                          tls=migration_tls_ready(config)),
        port_groups=port_group_facts(config), datastores=datastore_facts(config), vms=vms,
    )
