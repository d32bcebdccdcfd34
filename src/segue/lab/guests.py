"""Guests in a lab: define them on a host's agent from the test image, find them, and
probe or verify them from the client namespace (as an outside user of the VM network would).

The clients are the typed ones (``segue.clients``) used synchronously:
``with controller(plan) as c: c.run(c.client.list_vms())``.

A guest with ``GuestOptions.disk_mib`` gets a raw disk of that size on the lab's shared
datastore (``<vm>/disk0.raw``, which every host mounts), its first virtio-blk disk: the guest
sees it as ``/dev/vda`` and its checker keeps a journal of numbered, checksummed records there
(``segue.image.protocol``), so that a migration losing or reordering acknowledged writes fails
the guest's VERIFY.

Errors: ``NotFound`` (``VM_NOT_FOUND``) for an unknown VM, ``Unavailable``
(``PROBE_FAILED``) when the prober cannot run, plus the agents' own errors; for a guest with
a disk, ``Conflict`` (``VM_EXISTS``) when a VM of that name exists (its disk is left alone),
``InvalidRequest`` (``LAB_INVALID``) for a bad name or size, ``Unavailable``
(``LAB_DATASTORE_MISSING``, ``LAB_DISK_FAILED``) when the disk cannot be made.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from segue.api.inventory import VMView
from segue.api.migration import MigrationJobView, MigrationRequestBody
from segue.api.vm import DiskBody, NicBody, VMInfo, VMSpecBody
from segue.clients.agent import AgentClient
from segue.clients.base import Blocking
from segue.clients.controller import ControllerClient
from segue.domain.errors import Conflict, InvalidRequest, Unavailable
from segue.domain.vm import VM_NAME_RE
from segue.engine.phases import TERMINAL
from segue.image.builder import GuestImage
from segue.image.cmdline import guest_cmdline, parse_guest_cmdline
from segue.lab.blackout import Breakdown, breakdown
from segue.lab.netns import run_in_netns
from segue.lab.tools import Tool, finish, spawn
from segue.lab.topology import (
    DATASTORE_NAME,
    PREFIXLEN,
    HostPlan,
    LabPlan,
    next_guest_ip,
    random_guest_mac,
)


@dataclass(frozen=True)
class GuestOptions:
    """What a lab guest looks like: size and the checker's workload."""

    memory_mib: int = 256
    hot_mib: int = 16
    dirty_mbps: int = 0
    pattern_mib: int = 16
    zero_mib: int = 8
    port_group: str = "vm-net"
    disk_mib: int = 0  # a journal disk of this size on the shared datastore; 0: no disk
    disk_rate: int = 50  # journal records (512 bytes each) per second


GUEST_DISK = "disk0.raw"  # in the VM's directory on the shared datastore
GUEST_DISK_DEVICE = "/dev/vda"  # the first virtio-blk disk (segue.qemu.argv) in the guest


LabVM = VMInfo | VMView  # a VM as its agent sees it now, else as the inventory last knew it


def agent(host: HostPlan, timeout: float = 120.0) -> Blocking[AgentClient]:
    """The host's agent over its unix socket, for blocking calls."""
    return Blocking(AgentClient(f"unix:{host.agent_socket}", timeout=timeout))


def controller(plan: LabPlan, timeout: float = 300.0) -> Blocking[ControllerClient]:
    """The lab's controller over its unix socket, for blocking calls."""
    return Blocking(ControllerClient(f"unix:{plan.controller.socket}", timeout=timeout))


def all_vms(plan: LabPlan) -> list[VMView]:
    """Every VM of the lab as the controller's inventory has it (each with its ``host``)."""
    with controller(plan) as c:
        return c.run(c.client.list_vms())


def find_vm(plan: LabPlan, name: str) -> tuple[HostPlan, LabVM]:
    """The host that owns VM ``name`` and the VM: its agent's live view if it answers, else
    the inventory's record.

    Raises NotFound (``VM_NOT_FOUND``) for a VM the controller does not know.
    """
    with controller(plan) as c:
        record = c.run(c.client.get_vm(name))
    return plan.host(record.host), record.live or record


def guest_ip(vm: LabVM | VMSpecBody) -> str:
    """The guest's address, read back from its kernel command line."""
    spec = vm if isinstance(vm, VMSpecBody) else vm.spec
    keys = parse_guest_cmdline(spec.cmdline)
    if "ip" not in keys:
        raise InvalidRequest("VM_NOT_A_LAB_GUEST", f"{spec.name} has no segue.ip on its cmdline",
                             "only VMs made with `segue lab vm create` can be probed")
    return keys["ip"].split("/")[0]


def is_lab_guest(vm: LabVM) -> bool:
    """Whether the VM boots the test image (its address is on its kernel command line)."""
    return "segue.ip" in vm.spec.cmdline


def respec(spec: VMSpecBody, **changes: object) -> VMSpecBody:
    """``spec`` with ``changes``, checked again (raises pydantic's ValidationError)."""
    return VMSpecBody.model_validate({**dict(spec), **changes})


def guest_spec(plan: LabPlan, name: str, image: GuestImage, opts: GuestOptions) -> VMSpecBody:
    """A VM spec for a lab guest with a free IP and MAC.

    With ``opts.disk_mib`` it first creates the guest's journal disk, fresh and all zero, on
    the shared datastore (``create_guest_disk``); raises Conflict (``VM_EXISTS``) rather than
    touch the disk of an existing VM of that name. Raises ValueError for settings the guest's
    command line refuses (``segue.image.cmdline.guest_cmdline``) before creating anything.
    """
    existing = all_vms(plan)
    used_ips = [guest_ip(vm) for vm in existing if is_lab_guest(vm)]
    used_macs = [n.mac for vm in existing for n in vm.spec.nics]
    ip = next_guest_ip(used_ips)
    cmdline = guest_cmdline(f"{ip}/{PREFIXLEN}", hot_mib=opts.hot_mib,
                            dirty_mbps=opts.dirty_mbps, pattern_mib=opts.pattern_mib,
                            zero_mib=opts.zero_mib,
                            disk=GUEST_DISK_DEVICE if opts.disk_mib else "",
                            disk_rate=opts.disk_rate)
    disks: list[DiskBody] = []
    if opts.disk_mib:
        if any(vm.name == name for vm in existing):
            raise Conflict("VM_EXISTS", f"a VM named {name} already exists",
                           "pick another name, or destroy that VM first")
        disks.append(create_guest_disk(plan, name, opts.disk_mib))
    return VMSpecBody(
        name=name, datastore=DATASTORE_NAME, memory_mib=opts.memory_mib, vcpus=1,
        cpu_model="qemu64", machine="pc",
        nics=[NicBody(port_group=opts.port_group, mac=random_guest_mac(used_macs))],
        disks=disks, kernel=str(image.kernel), initrd=str(image.initrd), cmdline=cmdline)


def create_guest_disk(plan: LabPlan, name: str, size_mib: int) -> DiskBody:
    """A fresh raw disk of ``size_mib`` MiB (sparse, reading all zero) for VM ``name`` at
    ``<name>/disk0.raw`` on the lab's shared datastore, replacing any file there; the disk as
    a spec names it.

    Raises InvalidRequest (``LAB_INVALID``) for a name that is not a VM name or a size below
    1 MiB, Unavailable (``LAB_DATASTORE_MISSING``) when the datastore directory does not exist
    (the lab is not up), Unavailable (``LAB_DISK_FAILED``) when the file cannot be written.
    """
    if not VM_NAME_RE.fullmatch(name):
        raise InvalidRequest("LAB_INVALID", f"{name!r} is not a valid VM name",
                             "use 1-48 lowercase letters, digits, '.', '_' or '-'")
    if size_mib < 1:
        raise InvalidRequest("LAB_INVALID", f"a guest disk needs at least 1 MiB, not {size_mib}",
                             "give disk_mib >= 1, or 0 for no disk")
    if not plan.datastore_dir.is_dir():
        raise Unavailable("LAB_DATASTORE_MISSING",
                          f"the lab's datastore {plan.datastore_dir} does not exist",
                          f"bring the lab up first: segue lab up --name {plan.name}")
    relative = f"{name}/{GUEST_DISK}"
    path: Path = plan.datastore_dir / relative
    try:
        path.parent.mkdir(exist_ok=True)
        with path.open("wb") as disk:  # truncates: a new guest never sees an old one's records
            disk.truncate(size_mib << 20)
    except OSError as err:
        raise Unavailable("LAB_DISK_FAILED", f"cannot create the guest disk {path}: {err}",
                          "check the datastore's free space and permissions") from err
    return DiskBody(datastore=DATASTORE_NAME, path=relative, format="raw")


def own_image(spec: VMSpecBody, *, kernel: str = "", initrd: str = "", cmdline: str = "",
              disk: str = "") -> VMSpecBody:
    """The spec booting the user's kernel (+initrd) or disk instead of the test image.

    ``disk`` is relative to the shared datastore; ``.qcow2`` files are qcow2, others raw.
    """
    changes: dict[str, object] = {"kernel": kernel or None, "initrd": initrd or None,
                                  "cmdline": cmdline if kernel else ""}
    if disk:
        fmt = "qcow2" if disk.endswith(".qcow2") else "raw"
        changes["disks"] = [DiskBody(datastore=DATASTORE_NAME, path=disk, format=fmt)]
    return respec(spec, **changes)


def run_prober(plan: LabPlan, args: list[str], timeout: float) -> str:
    """Run the prober inside the client namespace; returns its stdout."""
    proc = run_in_netns(plan.client_ns, [sys.executable, "-m", "segue.lab.prober", *args],
                        timeout=timeout)
    if proc.returncode != 0:
        raise Unavailable("PROBE_FAILED", f"prober failed: {proc.stderr.strip()[-500:]}",
                          "check that the VM runs (segue lab vm list)")
    return proc.stdout


def probe_vm(plan: LabPlan, name: str, seconds: float, interval_ms: float = 1.5
             ) -> dict[str, Any]:
    """Probe VM ``name`` from the client namespace for ``seconds``; the prober's result."""
    _, vm = find_vm(plan, name)
    out = run_prober(plan, ["--ip", guest_ip(vm), "--seconds", str(seconds),
                            "--interval-ms", str(interval_ms), "--json"], timeout=seconds + 30)
    result: dict[str, Any] = json.loads(out)
    return result


def verify_vm(plan: LabPlan, name: str) -> str:
    """Ask VM ``name``'s checker for a full memory verification; its VERIFY line."""
    _, vm = find_vm(plan, name)
    return verify_ip(plan, guest_ip(vm))


def verify_ip(plan: LabPlan, ip: str) -> str:
    """The VERIFY line of the guest at ``ip``, asked from the client namespace."""
    return run_prober(plan, ["--ip", ip, "--verify"], timeout=60).strip()


def wait_answering(plan: LabPlan, name: str, timeout: float = 180.0) -> str:
    """Wait until VM ``name``'s checker answers VERIFY; returns the reply line.

    Raises Unavailable (``GUEST_NOT_ANSWERING``) after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            return verify_vm(plan, name)
        except Unavailable as err:
            last = err.message
    raise Unavailable("GUEST_NOT_ANSWERING",
                      f"{name} did not answer within {timeout:.0f} s ({last})",
                      f"look at its console: segue lab vm serial {name}")


class BackgroundProbe:
    """A prober running in the client namespace until ``stop()`` (for timing a migration)."""

    def __init__(self, plan: LabPlan, ip: str, interval_ms: float = 1.5) -> None:
        self.tool = Tool("PROBE_FAILED", "prober", "check the lab's client namespace")
        self.proc = spawn(self.tool, plan.client_ns, "segue.lab.prober",
                          ["--ip", ip, "--seconds", "3600", "--interval-ms", str(interval_ms),
                           "--json"], listening=False)
        time.sleep(0.3)  # let it start sending before what it should time begins

    def stop(self) -> dict[str, Any]:
        """End the probe; its result (sent, received, lost, longest gap and when)."""
        return finish(self.tool, self.proc, timeout=30)


class BackgroundSniffer:
    """``segue.lab.sniffer`` running in lab namespace ``ns`` on bridge ``iface`` until
    ``stop()``; the constructor returns once its socket is bound. Raises Unavailable
    (``SNIFFER_FAILED``) if it cannot start or its result cannot be read."""

    def __init__(self, ns: str, iface: str, mac: str, ip: str, port: int = 7777) -> None:
        self.where = f"{ns}/{iface}"
        self.tool = Tool("SNIFFER_FAILED", f"sniffer on {self.where}")
        self.proc = spawn(self.tool, ns, "segue.lab.sniffer",
                          ["--iface", iface, "--mac", mac, "--ip", ip, "--port", str(port)],
                          listening=True)

    def stop(self) -> dict[str, Any]:
        """End the capture; the sniffer's result (see ``segue.lab.sniffer``)."""
        return finish(self.tool, self.proc, timeout=30)


@dataclass
class WatchedMigration:
    """A migration seen from outside: the job, the prober's result, each sniffer's result
    (by host name, and ``"fabric"`` for the switch) and the blackout's breakdown."""

    job: MigrationJobView
    probe: dict[str, Any]
    sniffs: dict[str, dict[str, Any]]
    breakdown: Breakdown


def _sniffers(plan: LabPlan, vm: LabVM, ip: str) -> dict[str, BackgroundSniffer]:
    """A sniffer on every host's bridge of the VM's port group, and one on the fabric."""
    nic = vm.spec.nics[0]
    mac, group = nic.mac, nic.port_group
    found: dict[str, BackgroundSniffer] = {}
    try:
        for host in plan.hosts:
            if group in host.port_groups:
                found[host.name] = BackgroundSniffer(host.netns, host.port_groups[group], mac, ip)
        found["fabric"] = BackgroundSniffer(plan.switch_ns, plan.fabric_bridges[group], mac, ip)
    except Exception:
        for sniffer in found.values():
            sniffer.stop()
        raise
    return found


def migrate_and_wait(plan: LabPlan, name: str, dest: str, timeout: float = 600.0,
                     **options: Any) -> MigrationJobView:
    """Ask the lab's controller to move VM ``name`` to ``dest`` (``options``: the request's
    other fields, ``segue.api.migration.MigrationOptionsBody``, e.g. ``deadline_s``) and poll
    it until it ends; the ended job. Raises Unavailable (``MIGRATION_WAIT_TIMEOUT``) if it has
    not ended within ``timeout`` s (the job runs on)."""
    deadline = time.monotonic() + timeout
    body = MigrationRequestBody.model_validate({"to": dest, **options})
    with controller(plan) as c:
        job = c.run(c.client.request_migration(name, body))
        while job.phase not in TERMINAL:
            if time.monotonic() > deadline:
                raise Unavailable("MIGRATION_WAIT_TIMEOUT",
                                  f"migration {job.id} of {name} still {job.phase} "
                                  f"after {timeout:.0f} s", f"segue migration show {job.id}")
            time.sleep(0.1)
            job = c.run(c.client.get_migration(job.id))
    return job


def _seconds(value: JsonValue) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def watch_migration(plan: LabPlan, name: str, migrate: Callable[[], MigrationJobView],
                    interval_ms: float = 1.5) -> WatchedMigration:
    """Run ``migrate()`` (which moves VM ``name`` and returns the finished job, with its
    ``summary``) under the prober and a sniffer on every host and on the fabric; returns
    what they saw and the blackout breakdown (parts are None where data is missing)."""
    _, vm = find_vm(plan, name)
    ip = guest_ip(vm)
    sniffers = _sniffers(plan, vm, ip)
    probe = BackgroundProbe(plan, ip, interval_ms)
    try:
        job = migrate()
    finally:
        try:
            seen = probe.stop()
        finally:
            sniffs = {where: sniffer.stop() for where, sniffer in sniffers.items()}
    summary = job.summary
    parts = breakdown(_seconds(summary.get("source_stop_at")),
                      _seconds(summary.get("dest_resume_at")), seen,
                      sniffs.get(job.destination), sniffs.get("fabric"))
    return WatchedMigration(job, seen, sniffs, parts)


def shape_migration_link(plan: LabPlan, host: str, mbit: int | None) -> None:
    """Limit ``host``'s migration interface to ``mbit`` Mbit/s on egress (tc tbf, inside its
    namespace), or remove the limit with None: a slow migration network, for real.

    QEMU's own rate limit (``max-bandwidth``) is not a substitute here: QEMU 7.2 under TCG
    loses pages the guest dirties while it rate-limits a migration (see the README).
    """
    ns = plan.host(host).netns
    if mbit is None:
        run_in_netns(ns, ["tc", "qdisc", "del", "dev", "mig0", "root"])
        return
    proc = run_in_netns(ns, ["tc", "qdisc", "replace", "dev", "mig0", "root", "tbf", "rate",
                             f"{mbit}mbit", "burst", "32kb", "latency", "400ms"])
    if proc.returncode != 0:
        raise Unavailable("LAB_SHAPE_FAILED", f"tc failed on {host}: {proc.stderr.strip()}",
                          "check that iproute2's tc is installed")
