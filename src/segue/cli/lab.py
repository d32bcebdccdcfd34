"""``segue lab``: a real multi-host cluster on this machine, and its guests."""

from __future__ import annotations

from typing import Any

import typer
from pydantic import JsonValue, ValidationError
from rich.table import Table

from segue.api.migration import MigrationJobView, MigrationRequestBody
from segue.cli.output import console, handles_errors, print_json
from segue.domain.errors import InvalidRequest
from segue.image.protocol import parse_verify
from segue.lab import guests
from segue.lab import lab as labops
from segue.lab.topology import OLDER_CPU_EXCLUDES, LabPlan, mixed_host_overrides

lab_app = typer.Typer(help="A cluster of namespaced hosts on this machine.", no_args_is_help=True)
vm_app = typer.Typer(help="Guests in the lab (booted from the test image).",
                     no_args_is_help=True)
lab_app.add_typer(vm_app, name="vm")

NAME = typer.Option("segue", "--name", help="Lab name (prefix of its namespaces).")


def _plan(name: str) -> LabPlan:
    return labops.load_state(name).plan


@lab_app.command("up")
@handles_errors
def up(hosts: int = typer.Option(2, help="Number of hosts."), name: str = NAME,
       older_cpu: list[str] = typer.Option(
           [], "--older-cpu", metavar="HOST[:FEAT,...]",
           help="This host offers fewer CPU features, as an older one would "
                f"(default without {', '.join(OLDER_CPU_EXCLUDES)}). Repeatable."),
       without_port_group: list[str] = typer.Option(
           [], "--without-port-group", metavar="HOST:PORTGROUP",
           help="This host lacks the port group (no bridge, no uplink). Repeatable.")) -> None:
    """Build the lab: namespaces, fabric, shared datastore, one agent per host."""
    from segue.image.builder import build_image

    port_groups = ("vm-net",)
    overrides = mixed_host_overrides(port_groups, older_cpu, without_port_group)
    with console.status("building the guest image"):
        build_image()
    with console.status(f"bringing lab {name} up with {hosts} hosts"):
        labops.lab_up(name, hosts, port_groups, host_overrides=overrides)
    console.print(f"lab [bold]{name}[/] is up:")
    _status_table(labops.lab_status(name).to_dict())


@lab_app.command("down")
@handles_errors
def down(name: str = NAME) -> None:
    """Remove every namespace, process and file the lab made."""
    report = labops.lab_down(name)
    console.print(report.message)


@lab_app.command("status")
@handles_errors
def status(name: str = NAME, as_json: bool = typer.Option(False, "--json")) -> None:
    """Namespaces and agents of the lab."""
    data = labops.lab_status(name).to_dict()
    if as_json:
        print_json(data)
    else:
        _status_table(data)


def _status_table(data: dict[str, Any]) -> None:
    if not data.get("up") and not data.get("hosts"):
        console.print(f"lab {data.get('name')} is not up")
        return
    table = Table("host", "namespace", "management ip", "agent pid", "agent")
    for host in data.get("hosts", []):
        table.add_row(host["name"], host["netns"], host.get("mgmt_ip", ""),
                      str(host.get("agent_pid") or "-"),
                      "up" if host.get("agent_healthy") else "DOWN")
    console.print(table)


@lab_app.command("probe")
@handles_errors
def probe(vm: str, seconds: float = typer.Option(5.0, help="How long to probe."),
          interval_ms: float = typer.Option(1.5, help="Send interval."), name: str = NAME,
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Probe a guest over UDP from the client namespace: loss and the longest gap."""
    result = guests.probe_vm(_plan(name), vm, seconds, interval_ms)
    if as_json:
        print_json(result)
        return
    console.print(
        f"{vm}: sent {result['sent']} received {result['received']} lost {result['lost']} "
        f"longest gap {result['longest_gap_ms']:.1f} ms (max rtt {result['max_rtt_ms']:.1f} ms) "
        f"boot id {','.join(result['boot_ids']) or '-'}", highlight=False)
    if result["received"] == 0:
        raise typer.Exit(1)


@lab_app.command("verify")
@handles_errors
def verify(vm: str, name: str = NAME) -> None:
    """Ask the guest's checker to verify all of its memory."""
    line = guests.verify_vm(_plan(name), vm)
    console.print(line, highlight=False)
    if "result=ok" not in line:
        raise typer.Exit(1)


@lab_app.command("facts")
@handles_errors
def facts(host: str, name: str = NAME, as_json: bool = typer.Option(False, "--json")) -> None:
    """What a host's agent reports about its host."""
    with guests.agent(_plan(name).host(host)) as a:
        data = a.run(a.client.facts())
    if as_json:
        print_json(data)
        return
    cpu, mem, mig = data.cpu, data.memory, data.migration
    console.print(f"[bold]{data.name}[/]: {cpu.host_model}, {cpu.logical_cpus} CPUs, "
                  f"{mem.available_mib}/{mem.total_mib} MiB free", highlight=False)
    console.print(f"  accelerator {cpu.accel} ({cpu.accel_reason}), "
                  f"{len(cpu.features)} CPU features, QEMU {data.qemu.version}",
                  highlight=False)
    console.print(f"  migration {mig.interface} {','.join(mig.addresses)} "
                  f"{'up' if mig.up else 'DOWN'} {mig.speed_mbps} Mbit/s", highlight=False)
    for pg in data.port_groups:
        console.print(f"  port group {pg.name} on {pg.bridge}: "
                      f"{'up' if pg.up else 'DOWN'}", highlight=False)
    for ds in data.datastores:
        console.print(f"  datastore {ds.name} at {ds.path} id {ds.uuid}", highlight=False)


@vm_app.command("create")
@handles_errors
def vm_create(vm: str, host: str = typer.Option(..., help="Host to define it on."),
              memory: int = typer.Option(256, help="Memory in MiB."),
              dirty_mbps: int = typer.Option(0, help="Rate at which the checker rewrites memory."),
              hot_mib: int = typer.Option(16, help="Size of the rewritten region."),
              start: bool = typer.Option(True, help="Start it right away."),
              cpu: str = typer.Option("qemu64", help="CPU model; qemu64 means the cluster's "
                                                     "CPU baseline."),
              kernel: str = typer.Option(
                  "", help="Your own kernel: an absolute path under the image cache "
                           "($SEGUE_HOME/images) or the lab's shared datastore (the agents "
                           "refuse any other: PATH_OUTSIDE_DATASTORE)."),
              initrd: str = typer.Option("", help="Your own initrd (where --kernel may be)."),
              append: str = typer.Option("", help="Kernel command line for --kernel."),
              disk: str = typer.Option("", help="Boot from this qcow2/raw file, relative "
                                                "to the shared datastore."),
              disk_mib: int = typer.Option(
                  0, help="Give the test image a journal disk of this size on the shared "
                          "datastore: its checker writes numbered records there and VERIFY "
                          "reads them back (64 MiB lasts over 40 minutes at 50 records/s)."),
              disk_rate: int = typer.Option(50, help="Journal records per second."),
              name: str = NAME) -> None:
    """Define (and start) a guest on a lab host: the test image, or your own kernel or disk."""
    from segue.image.builder import build_image

    if disk_mib and (kernel or disk):
        raise InvalidRequest("LAB_INVALID", "--disk-mib gives the test image a journal disk; "
                             "your own kernel or disk would not use it",
                             "drop --disk-mib, or --kernel/--disk")
    plan = _plan(name)
    target = plan.host(host)
    opts = guests.GuestOptions(memory_mib=memory, dirty_mbps=dirty_mbps, hot_mib=hot_mib,
                               disk_mib=disk_mib, disk_rate=disk_rate)
    try:
        spec = guests.respec(guests.guest_spec(plan, vm, build_image(), opts), cpu_model=cpu)
    except ValidationError:
        raise  # a spec the wire model refuses: handles_errors shows it with its field
    except ValueError as err:  # a setting the guest's command line refuses
        raise InvalidRequest("LAB_INVALID", str(err), "see segue lab vm create --help") from err
    if kernel or disk:
        spec = guests.own_image(spec, kernel=kernel, initrd=initrd, cmdline=append, disk=disk)
    with guests.controller(plan) as c:
        info = c.run(c.client.create_vm(target.name, spec, start=start))
    ip = guests.guest_ip(info) if not (kernel or disk) else "set by your image"
    console.print(f"{vm} on {host}: {info.state} (ip {ip}, "
                  f"mac {info.spec.nics[0].mac})", highlight=False)


@vm_app.command("list")
@handles_errors
def vm_list(name: str = NAME, as_json: bool = typer.Option(False, "--json")) -> None:
    """Every guest of the lab with its host and state."""
    vms = guests.all_vms(_plan(name))
    if as_json:
        print_json(vms)
        return
    table = Table("name", "host", "state", "pid", "memory", "ip")
    for vm in vms:
        ip = guests.guest_ip(vm) if guests.is_lab_guest(vm) else "-"
        table.add_row(vm.name, vm.host, vm.state, str(vm.pid or "-"),
                      f"{vm.spec.memory_mib} MiB", ip)
    console.print(table)


@vm_app.command("show")
@handles_errors
def vm_show(vm: str, name: str = NAME) -> None:
    """A guest's full record (JSON)."""
    _, info = guests.find_vm(_plan(name), vm)
    print_json(info)


@vm_app.command("start")
@handles_errors
def vm_start(vm: str, name: str = NAME) -> None:
    """Start a defined guest."""
    with guests.controller(_plan(name)) as c:
        console.print(f"{vm}: {c.run(c.client.start_vm(vm)).state}")


@vm_app.command("stop")
@handles_errors
def vm_stop(vm: str, force: bool = typer.Option(False, help="Hard power-off at once."),
            timeout: float = typer.Option(30.0, help="Seconds to wait for ACPI shutdown."),
            name: str = NAME) -> None:
    """Shut a guest down (ACPI, then hard after the timeout)."""
    with guests.controller(_plan(name)) as c:
        info = c.run(c.client.stop_vm(vm, timeout=timeout, force=force))
    state, last_exit = (info.live.state, info.live.last_exit) if info.live else (info.state, None)
    console.print(f"{vm}: {state} ({last_exit})", highlight=False)


@vm_app.command("destroy")
@handles_errors
def vm_destroy(vm: str, name: str = NAME) -> None:
    """Power off (hard) and remove a guest's definition."""
    with guests.controller(_plan(name)) as c:
        c.run(c.client.destroy_vm(vm))
    console.print(f"{vm}: destroyed")


@vm_app.command("serial")
@handles_errors
def vm_serial(vm: str, lines: int = typer.Option(20), name: str = NAME) -> None:
    """The last lines of a guest's serial console."""
    host, _ = guests.find_vm(_plan(name), vm)
    with guests.agent(host) as a:
        for line in a.run(a.client.serial(vm, lines)):
            console.print(line, highlight=False, markup=False)


@lab_app.command("demo")
@handles_errors
def demo(keep: bool = typer.Option(False, help="Leave the lab up afterwards."),
         dirty_mbps: int = typer.Option(8, help="How fast the guest rewrites its memory."),
         name: str = typer.Option("demo", "--name", help="Lab name.")) -> None:
    """A 2-host lab, a guest dirtying memory, migrated host1 -> host2 -> host1 under a prober."""
    from segue.image.builder import build_image

    with console.status("building the guest image"):
        image = build_image()
    with console.status(f"bringing lab {name} up (2 hosts, controller, agents)"):
        labops.lab_up(name, 2)
    try:
        plan = _plan(name)
        spec = guests.guest_spec(plan, "web1", image,
                                 guests.GuestOptions(dirty_mbps=dirty_mbps))
        with guests.controller(plan) as c, console.status("booting web1 on host1"):
            c.run(c.client.create_vm("host1", spec, start=True))
            first = parse_verify(guests.wait_answering(plan, "web1"))
        console.print(f"web1 runs on host1, ip {guests.guest_ip(spec)}, "
                      f"boot id {first.boot_id}, rewriting {dirty_mbps} MiB/s", highlight=False)
        rows = [_demo_migration(plan, "web1", dest, first.boot_id) for dest in ("host2", "host1")]
        _demo_table(rows)
    finally:
        if not keep:
            console.print(labops.lab_down(name).message)
        else:
            console.print(f"lab {name} kept: `segue lab down --name {name}` removes it")


def _demo_migration(plan: LabPlan, vm: str, dest: str, boot: str) -> dict[str, Any]:
    from segue.cli.migrations import follow

    _, info = guests.find_vm(plan, vm)
    console.print(f"migrating {vm} {info.host} -> {dest}")

    def move() -> MigrationJobView:
        with guests.controller(plan) as c:
            job = c.run(c.client.request_migration(vm, MigrationRequestBody(to=dest)))
            return follow(c, job)

    watched = guests.watch_migration(plan, vm, move)
    verdict = parse_verify(guests.verify_vm(plan, vm))
    return {"job": watched.job, "probe": watched.probe, "verdict": verdict,
            "same_boot": verdict.boot_id == boot, "parts": watched.breakdown.to_dict()}


def _number(value: JsonValue) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _ms(value: Any) -> str:
    """A part of the breakdown: ``12.3 ms``, or ``-`` when it was not measured."""
    return "-" if value is None else f"{value:.1f} ms"


def _demo_table(rows: list[dict[str, Any]]) -> None:
    table = Table("migration", "result", "total", "QEMU downtime", "switchover",
                  "network path", "guest answer", "blackout (prober)", "sent / RAM",
                  "iterations", "checker", title="live migrations of web1")
    for row in rows:
        job, seen, verdict, parts = row["job"], row["probe"], row["verdict"], row["parts"]
        s = job.summary
        sent = _number(s.get("bytes_sent"))
        ram = _number(s.get("ram_total"))
        checker = ("same boot, memory ok" if row["same_boot"] and verdict.ok
                   else f"boot {verdict.boot_id} result {'ok' if verdict.ok else 'fail'}")
        table.add_row(f"{job.source} -> {job.destination}", job.phase,
                      f"{s.get('total_s', '-')} s", f"{s.get('qemu_downtime_ms', '-')} ms",
                      _ms(parts["switchover_ms"]), _ms(parts["network_path_ms"]),
                      _ms(parts["guest_answer_ms"]),
                      f"{seen['longest_gap_ms']:.0f} ms ({seen['lost']} lost)",
                      f"{sent / 2**20:.0f} / {ram / 2**20:.0f} MiB", str(s.get("iterations")),
                      checker)
    console.print(table)
    console.print("switchover: source STOP -> destination RESUME (QMP); network path: RESUME -> "
                  "first ping at the destination's bridge; guest answer: RESUME -> the guest's "
                  "first reply there; blackout: the prober's longest gap", highlight=False)
