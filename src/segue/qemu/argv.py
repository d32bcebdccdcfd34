"""QEMU command line from a VM spec (pure: no I/O).

The argv fixes the whole device model with explicit ids and addresses, so that the same
spec gives the same device model on every host: this is what makes a migration's
destination accept the source's device state.

Disks are virtio-blk, in spec order from PCI slot 0x10: a Linux guest sees the first as
``/dev/vda``. Their files are opened with ``cache.direct=on`` (O_DIRECT): the disks lie on
storage shared by a migration's source and destination, and the host page cache must not
stand between them, or the destination could read blocks its cache kept from before the
source's last writes. A disk whose filesystem refuses O_DIRECT gets ``cache.direct=off``
instead (``LaunchPlan.disk_cache_direct``, probed by ``segue.qemu.direct_io``, which logs a
warning), since QEMU would not start otherwise. ``cache.no-flush=off`` either way: the guest's
flushes reach the storage. The cache mode is the host's business, not the device model's,
so the two ends of a migration may differ in it.

QEMU runs confined by its seccomp filter (``-sandbox``, ``SANDBOX``; ``LaunchPlan.sandbox``):
no obsolete system calls, no set*uid/gid, no fork or exec, no scheduler or CPU-affinity
changes. The filter is in place before QEMU opens a device or a socket, and it forbids the
fork and setsid that ``-daemonize`` needs: QEMU runs in the foreground and
``segue.qemu.process.launch_daemon`` detaches it (own session, no controlling terminal).
Post-copy's userfaultfd is not among the calls the filter denies.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from segue.domain.vm import VMSpec
from segue.qemu.cpu_model import cpu_option

# Guest PCI slots: NICs from 0x3, disks after them; fixed so every host builds the same layout.
FIRST_NIC_SLOT = 3
FIRST_DISK_SLOT = 16
# QEMU's seccomp filter with every optional deny (QEMU >= 2.11; libvirt's choice too).
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


@dataclass(frozen=True)
class RuntimePaths:
    """Per-VM files on the running host."""

    directory: Path

    @property
    def pidfile(self) -> Path:
        return self.directory / "qemu.pid"

    @property
    def qmp_socket(self) -> Path:
        return self.directory / "qmp.sock"

    @property
    def serial_socket(self) -> Path:
        return self.directory / "serial.sock"

    @property
    def serial_log(self) -> Path:
        """The guest's console log: always here, whatever an old spec's ``serial_log`` says."""
        return self.directory / "serial.log"

    @property
    def qemu_log(self) -> Path:
        return self.directory / "qemu.log"

    @property
    def events_log(self) -> Path:
        return self.directory / "events.jsonl"

    @property
    def role_file(self) -> Path:
        """Present while the VM is a migration's destination (see segue.agent.incoming)."""
        return self.directory / "role.json"


@dataclass(frozen=True)
class LaunchPlan:
    """Host-side facts the argv needs besides the spec."""

    binary: str
    accel: str  # "kvm" or "tcg"
    runtime: RuntimePaths
    disk_files: tuple[Path, ...]  # absolute path per spec disk, same order
    incoming: str | None = None  # e.g. "defer" for a migration destination
    cpu_exclude: tuple[str, ...] = ()  # CPU features this host does not offer
    # per disk, whether to open it with O_DIRECT (segue.qemu.direct_io); empty: off for all
    disk_cache_direct: tuple[bool, ...] = ()
    # the spec's kernel and initrd as the host checked them (resolved); None: as the spec says
    kernel_file: Path | None = None
    initrd_file: Path | None = None
    sandbox: bool = True  # QEMU's seccomp filter (``SANDBOX``)


def tap_name(vm_uuid: str, index: int) -> str:
    """A host-unique tap name (<= 15 chars) for NIC ``index`` of the VM."""
    digest = hashlib.sha1(vm_uuid.encode()).hexdigest()[:8]
    return f"tap{digest}n{index}"


def build_argv(spec: VMSpec, plan: LaunchPlan) -> list[str]:
    """The full QEMU argv: in the foreground (never ``-daemonize``: see the module doc),
    paused (-S), QMP on a unix socket, its pid in the runtime dir's pidfile, confined by
    ``-sandbox`` unless ``plan.sandbox`` is off.

    A destination (``incoming``) stays paused after the migration too: its agent resumes it.
    The console goes to the runtime dir's ``serial.log`` (a spec's ``serial_log`` is ignored).
    The CPU is the spec's model without the host's ``cpu_exclude`` features, enforced
    (``segue.qemu.cpu_model.cpu_option``). Raises ValueError when ``disk_cache_direct`` is
    given but not one entry per disk.
    """
    rt = plan.runtime
    accel = "kvm" if plan.accel == "kvm" else "tcg,tb-size=64"
    argv = [
        plan.binary,
        "-name", f"guest={spec.name},debug-threads=on",
        "-uuid", spec.uuid,
        "-machine", spec.machine,
        "-accel", accel,
        "-cpu", cpu_option(spec.cpu_model, plan.cpu_exclude),
        "-m", f"{spec.memory_mib}M",
        "-smp", str(spec.vcpus),
        "-nodefaults", "-no-user-config", "-display", "none",
        "-msg", "timestamp=on",
        "-pidfile", str(rt.pidfile),
        "-qmp", f"unix:{rt.qmp_socket},server=on,wait=off",
        "-chardev",
        f"socket,id=serial0,path={rt.serial_socket},server=on,wait=off,"
        f"logfile={rt.serial_log},logappend=on",
        "-serial", "chardev:serial0",
        "-S",
    ]
    if plan.sandbox:
        argv += ["-sandbox", SANDBOX]
    argv += _nic_args(spec)
    argv += _disk_args(spec, plan.disk_files, plan.disk_cache_direct)
    argv += _boot_args(spec, plan)
    if plan.incoming is not None:
        argv += ["-incoming", plan.incoming]
    return argv


def _nic_args(spec: VMSpec) -> list[str]:
    out: list[str] = []
    for i, nic in enumerate(spec.nics):
        out += [
            "-netdev", f"tap,id=net{i},ifname={tap_name(spec.uuid, i)},script=no,downscript=no",
            "-device",
            f"{nic.model},id=nic{i},netdev=net{i},mac={nic.mac.lower()},"
            f"addr={FIRST_NIC_SLOT + i:#x}",
        ]
    return out


def _disk_args(spec: VMSpec, files: tuple[Path, ...], direct: tuple[bool, ...]) -> list[str]:
    if direct and len(direct) != len(files):
        raise ValueError(f"disk_cache_direct has {len(direct)} entries for {len(files)} disks")
    out: list[str] = []
    for i, (disk, path) in enumerate(zip(spec.disks, files, strict=True)):
        ro = "on" if disk.readonly else "off"
        cache = "on" if direct and direct[i] else "off"
        out += [
            "-blockdev",
            f"driver=file,node-name=file{i},filename={path},read-only={ro},"
            f"cache.direct={cache},cache.no-flush=off",
            "-blockdev", f"driver={disk.format},node-name=disk{i},file=file{i},read-only={ro}",
            "-device",
            f"virtio-blk-pci,id=blk{i},drive=disk{i},addr={FIRST_DISK_SLOT + i:#x}"
            + (",bootindex=1" if i == 0 and spec.kernel is None else ""),
        ]
    return out


def _boot_args(spec: VMSpec, plan: LaunchPlan) -> list[str]:
    if spec.kernel is None:
        return []
    out = ["-kernel", str(plan.kernel_file or spec.kernel)]
    if spec.initrd:
        out += ["-initrd", str(plan.initrd_file or spec.initrd)]
    if spec.cmdline:
        out += ["-append", spec.cmdline]
    return out
