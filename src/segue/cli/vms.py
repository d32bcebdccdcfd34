"""``segue vm``: VMs of the cluster, created and driven through the controller.

Other command modules extend ``vm_app`` (e.g. ``segue vm migrate``); every command talks
through ``segue.cli.connect.controller(url)``.
"""

from __future__ import annotations

import random
from pathlib import Path

import typer
from rich.table import Table

from segue.api.rules import PlacementAnswer
from segue.api.vm import DiskBody, NicBody, VMSpecBody
from segue.cli.connect import URL, controller
from segue.cli.output import console, handles_errors, print_json
from segue.cli.placement import RUNNERS_UP, choice_of, print_placement, register
from segue.domain.errors import InvalidRequest
from segue.domain.vm import DISK_FORMATS

vm_app = typer.Typer(help="VMs of the cluster (via the controller).", no_args_is_help=True)
register(vm_app)  # segue vm placement


def random_mac(rng: random.Random | None = None) -> str:
    """A MAC in QEMU's locally administered range, ``52:54:00:xx:xx:xx``."""
    rng = rng or random.Random()
    return "52:54:00:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(3))


def parse_disk(text: str) -> DiskBody:
    """``DATASTORE:PATH[:FORMAT]`` as a disk spec; raises InvalidRequest (CLI_DISK_INVALID)."""
    parts = text.split(":")
    fmt = "qcow2"
    if len(parts) == 3 and parts[2] in DISK_FORMATS:
        fmt = parts.pop()
    if len(parts) != 2 or not all(parts):
        raise InvalidRequest("CLI_DISK_INVALID", f"--disk {text!r} is not DATASTORE:PATH[:FORMAT]",
                             f"e.g. --disk shared:web1/disk0.qcow2 (formats: "
                             f"{', '.join(DISK_FORMATS)})")
    return DiskBody(datastore=parts[0], path=parts[1], format=fmt)


def parse_nic(text: str, rng: random.Random | None = None) -> NicBody:
    """``PORTGROUP[=MAC]`` as a NIC spec (a random 52:54:00 MAC if none is given)."""
    port_group, _, mac = text.partition("=")
    if not port_group:
        raise InvalidRequest("CLI_NIC_INVALID", f"--nic {text!r} names no port group",
                             "e.g. --nic vm-net or --nic vm-net=52:54:00:12:34:56")
    return NicBody(port_group=port_group, mac=(mac or random_mac(rng)).lower())


def _absolute(path: str | None) -> str | None:
    """Paths go to an agent elsewhere: make them independent of this shell's directory."""
    return str(Path(path).absolute()) if path else None


@vm_app.command("create")
@handles_errors
def create(
    name: str,
    host: str | None = typer.Option(None, "--host", help="Host to define the VM on; "
                                    "default: the best by placement (printed with the "
                                    "runners-up and why others are excluded)."),
    memory: int = typer.Option(256, help="Memory in MiB."),
    vcpus: int = typer.Option(1, help="Number of vCPUs."),
    kernel: str | None = typer.Option(None, help="Kernel for direct boot: a path under one "
                                      "of the host's image_dirs or datastores."),
    initrd: str | None = typer.Option(None, help="Initrd for direct boot (where --kernel "
                                      "may be)."),
    append: str = typer.Option("", help="Kernel command line."),
    disk: list[str] = typer.Option([], help="DATASTORE:PATH[:FORMAT], repeatable."),
    nic: list[str] = typer.Option([], help="PORTGROUP[=MAC], repeatable."),
    datastore: str = typer.Option("shared", help="Datastore that keeps the VM's definition."),
    start: bool = typer.Option(True, "--start/--no-start", help="Start it once defined."),
    tag: list[str] = typer.Option([], "--tag", help="A tag of the VM from its creation "
                                  "(rules and policies match on tags), repeatable."),
    url: str | None = URL,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Define a VM on a host (and start it, unless --no-start); without --host, on the
    host placement chooses, its tags' rules included (--json: {"placement": ...,
    "vm": ...})."""
    spec = VMSpecBody(name=name, datastore=datastore, memory_mib=memory, vcpus=vcpus,
                      kernel=_absolute(kernel), initrd=_absolute(initrd), cmdline=append,
                      disks=[parse_disk(d) for d in disk], nics=[parse_nic(n) for n in nic])
    answer: PlacementAnswer | None = None
    with controller(url) as c:
        if host is None:
            answer = c.run(c.client.place_new_vm(spec, tag))
            if not as_json:
                print_placement(answer, RUNNERS_UP)
            host = choice_of(answer)
        vm = c.run(c.client.create_vm(host, spec, start=start, tags=tag))
    if as_json:
        print_json(vm if answer is None else {"placement": answer, "vm": vm})
    else:
        console.print(f"VM {vm.name} ({vm.uuid}) on {vm.host}: {vm.state}")


@vm_app.command("list")
@handles_errors
def list_vms(url: str | None = URL, host: str | None = typer.Option(None, help="Only this host."),
             as_json: bool = typer.Option(False, "--json")) -> None:
    """Every VM of the inventory: host, state, memory, vCPUs."""
    with controller(url) as c:
        vms = c.run(c.client.list_vms(host))
    if as_json:
        print_json(vms)
        return
    table = Table("VM", "host", "state", "memory", "vCPUs", "pid", "tags", "uuid")
    for vm in vms:
        table.add_row(vm.name, vm.host, vm.state, f"{vm.spec.memory_mib} MiB",
                      str(vm.spec.vcpus), str(vm.pid or "-"), ", ".join(vm.tags) or "-",
                      vm.uuid)
    console.print(table)


@vm_app.command("show")
@handles_errors
def show(name: str, url: str | None = URL, as_json: bool = typer.Option(False, "--json")) -> None:
    """One VM: the inventory's record and what its host says now."""
    with controller(url) as c:
        vm = c.run(c.client.get_vm(name))
    if as_json:
        print_json(vm)
        return
    spec, live = vm.spec, vm.live
    rows = [("host", vm.host), ("state", live.state if live else vm.state),
            ("uuid", vm.uuid), ("pid", (live.pid if live else vm.pid) or "-"),
            ("memory", f"{spec.memory_mib} MiB"), ("vCPUs", spec.vcpus),
            ("NICs", ", ".join(f"{n.port_group}={n.mac}" for n in spec.nics) or "-"),
            ("disks", ", ".join(f"{d.datastore}:{d.path}" for d in spec.disks) or "-"),
            ("last exit", (live.last_exit if live else None) or "-"),
            ("tags", ", ".join(vm.tags) or "-")]
    if vm.live_error:
        err = vm.live_error
        rows.append(("live state", f"unavailable: {err.code}: {err.message}"))
    table = Table(title=f"VM {vm.name}", show_header=False)
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)


@vm_app.command("start")
@handles_errors
def start_vm(name: str, url: str | None = URL) -> None:
    """Start a stopped VM on its host."""
    with controller(url) as c:
        vm = c.run(c.client.start_vm(name))
    console.print(f"VM {name} on {vm.host}: {vm.state} (pid {vm.pid})")


@vm_app.command("stop")
@handles_errors
def stop_vm(name: str, url: str | None = URL,
            force: bool = typer.Option(False, "--force", help="Hard power-off at once."),
            timeout: float = typer.Option(30.0, help="Seconds to wait for an ACPI shutdown.")
            ) -> None:
    """ACPI power-off (hard power-off after --timeout s, or at once with --force)."""
    with controller(url) as c:
        vm = c.run(c.client.stop_vm(name, force=force, timeout=timeout))
    console.print(f"VM {name} on {vm.host}: {vm.state}")


@vm_app.command("destroy")
@handles_errors
def destroy(name: str, url: str | None = URL) -> None:
    """Power off and remove the VM everywhere (its event log stays)."""
    with controller(url) as c:
        c.run(c.client.destroy_vm(name))
    console.print(f"VM {name} destroyed")


@vm_app.command("events")
@handles_errors
def events(name: str, url: str | None = URL, as_json: bool = typer.Option(False, "--json")
           ) -> None:
    """What happened to the VM, oldest first."""
    with controller(url) as c:
        entries = c.run(c.client.vm_events(name))
    if as_json:
        print_json(entries)
        return
    table = Table("at", "event", "detail")
    for e in entries:
        detail = ", ".join(f"{k}={v}" for k, v in e.detail.items())
        table.add_row(e.at.isoformat(), e.kind, detail)
    console.print(table)
