"""``segue host``: the cluster's hosts as the controller sees them."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from segue.cli.output import console, handles_errors, print_json
from segue.controller.client import ControllerClient

host_app = typer.Typer(help="Hosts of the cluster (via the controller).", no_args_is_help=True)

URL = typer.Option(None, "--url", help="Controller URL (http://... or unix:PATH); default "
                   "$SEGUE_URL, else the lab controller's socket, else http://127.0.0.1:7700.")


def _mib(value: Any) -> str:
    return "-" if value is None else f"{int(value)} MiB"


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


@host_app.command("list")
@handles_errors
def list_hosts(url: str | None = URL, as_json: bool = typer.Option(False, "--json")) -> None:
    """Every host: state, migration address, CPUs, free memory, VMs, migration allowed."""
    with ControllerClient.from_env(url) as client:
        hosts = client.list_hosts()
    if as_json:
        print_json(hosts)
        return
    table = Table("host", "state", "migration address", "CPUs", "memory free", "VMs",
                  "migration", "maintenance")
    for h in hosts:
        state = "[green]connected[/]" if h["state"] == "connected" else "[red]disconnected[/]"
        table.add_row(h["name"], state, h["migration_address"] or "-", str(h["cpus"] or "-"),
                      _mib(h["memory_available_mib"]), str(len(h["vms"])),
                      "enabled" if h["migration_enabled"] else "disabled",
                      _yes_no(h["maintenance"]))
    console.print(table)


@host_app.command("show")
@handles_errors
def show_host(name: str, url: str | None = URL,
              as_json: bool = typer.Option(False, "--json")) -> None:
    """One host: its summary and the facts its agent reported."""
    with ControllerClient.from_env(url) as client:
        host = client.get_host(name)
    if as_json:
        print_json(host)
        return
    facts = host.get("facts") or {}
    cpu, qemu = facts.get("cpu") or {}, facts.get("qemu") or {}
    rows = [
        ("state", host["state"]), ("agent", host["url"]),
        ("last heartbeat", host["last_heartbeat"] or "-"),
        ("migration address", host["migration_address"] or "-"),
        ("migration", "enabled" if host["migration_enabled"] else "disabled"),
        ("maintenance", _yes_no(host["maintenance"])),
        ("CPU", f"{cpu.get('host_model', '?')}, {host['cpus']} logical, {host['accel']}"),
        ("memory", f"{_mib(host['memory_available_mib'])} free of "
                   f"{_mib(host['memory_total_mib'])}"),
        ("QEMU", f"{qemu.get('version', '?')} ({qemu.get('binary', '?')})"),
        ("port groups", ", ".join(p["name"] for p in facts.get("port_groups") or []) or "-"),
        ("datastores", ", ".join(d["name"] for d in facts.get("datastores") or []) or "-"),
        ("VMs", ", ".join(host["vms"]) or "-"),
    ]
    table = Table(title=f"host {host['name']}", show_header=False)
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)


@host_app.command("enable-migration")
@handles_errors
def enable_migration(name: str, url: str | None = URL) -> None:
    """Allow live migrations to this host."""
    with ControllerClient.from_env(url) as client:
        client.set_migration_enabled(name, True)
    console.print(f"migration to {name} enabled")


@host_app.command("disable-migration")
@handles_errors
def disable_migration(name: str, url: str | None = URL) -> None:
    """Forbid live migrations to this host."""
    with ControllerClient.from_env(url) as client:
        client.set_migration_enabled(name, False)
    console.print(f"migration to {name} disabled")
