"""``segue host``: the cluster's hosts as the controller sees them, and join tokens for new
ones (``segue host token HOST``: the token, the CA pin and the ``segue agent join`` command
to run on the host)."""

from __future__ import annotations

import typer
from rich.table import Table

from segue.cli.connect import URL, controller
from segue.cli.maintenance import maintenance_app
from segue.cli.output import console, err_console, handles_errors, print_json
from segue.cli.times import parse_duration

DEFAULT_HOST_PKI_DIR = "/var/lib/segue/pki"

host_app = typer.Typer(help="Hosts of the cluster (via the controller).", no_args_is_help=True)
host_app.add_typer(maintenance_app, name="maintenance")


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{int(value)} MiB"


def _maintenance(state: str) -> str:
    """The maintenance state, coloured: entering (yellow), in (red), normal (plain)."""
    colour = {"entering-maintenance": "yellow", "in-maintenance": "red"}.get(state)
    return f"[{colour}]{state}[/]" if colour else state


@host_app.command("list")
@handles_errors
def list_hosts(url: str | None = URL, as_json: bool = typer.Option(False, "--json")) -> None:
    """Every host: state, migration address, CPUs, free memory, VMs, migration allowed."""
    with controller(url) as c:
        hosts = c.run(c.client.list_hosts())
    if as_json:
        print_json(hosts)
        return
    table = Table("host", "state", "migration address", "CPUs", "memory free", "VMs",
                  "migration", "maintenance", "tags")
    for h in hosts:
        state = "[green]connected[/]" if h.state == "connected" else "[red]disconnected[/]"
        table.add_row(h.name, state, h.migration_address or "-", str(h.cpus or "-"),
                      _mib(h.memory_available_mib), str(len(h.vms)),
                      "enabled" if h.migration_enabled else "disabled",
                      _maintenance(h.maintenance_state), ", ".join(h.tags) or "-")
    console.print(table)


@host_app.command("show")
@handles_errors
def show_host(name: str, url: str | None = URL,
              as_json: bool = typer.Option(False, "--json")) -> None:
    """One host: its summary and the facts its agent reported."""
    with controller(url) as c:
        host = c.run(c.client.get_host(name))
    if as_json:
        print_json(host)
        return
    facts = host.facts
    rows = [
        ("state", host.state), ("agent", host.url),
        ("last heartbeat", host.last_heartbeat or "-"),
        ("migration address", host.migration_address or "-"),
        ("migration", "enabled" if host.migration_enabled else "disabled"),
        ("maintenance", _maintenance(host.maintenance_state)),
        ("maintenance reason", host.maintenance_reason or "-"),
        ("CPU", f"{facts.cpu.host_model if facts else '?'}, {host.cpus} logical, {host.accel}"),
        ("memory", f"{_mib(host.memory_available_mib)} free of "
                   f"{_mib(host.memory_total_mib)}"),
        ("QEMU", f"{facts.qemu.version} ({facts.qemu.binary})" if facts else "? (?)"),
        ("port groups", ", ".join(p.name for p in facts.port_groups) if facts else "-"),
        ("datastores", ", ".join(d.name for d in facts.datastores) if facts else "-"),
        ("VMs", ", ".join(host.vms) or "-"),
        ("tags", ", ".join(host.tags) or "-"),
    ]
    table = Table(title=f"host {host.name}", show_header=False)
    for key, value in rows:
        table.add_row(key, str(value or "-"))
    console.print(table)


@host_app.command("enable-migration")
@handles_errors
def enable_migration(name: str, url: str | None = URL) -> None:
    """Allow live migrations to this host."""
    with controller(url) as c:
        c.run(c.client.set_migration_enabled(name, True))
    console.print(f"migration to {name} enabled")


@host_app.command("disable-migration")
@handles_errors
def disable_migration(name: str, url: str | None = URL) -> None:
    """Forbid live migrations to this host."""
    with controller(url) as c:
        c.run(c.client.set_migration_enabled(name, False))
    console.print(f"migration to {name} disabled")


@host_app.command("token")
@handles_errors
def join_token(name: str = typer.Argument(..., help="The host's name, as it will join."),
               ttl: str = typer.Option("1h", "--ttl", help="Lifetime: 10m, 1h, 2d (at most "
                                       "7d)."),
               url: str | None = URL, as_json: bool = typer.Option(False, "--json")) -> None:
    """A one-time join token for a new host, and the command to run on that host."""
    ttl_s = int(parse_duration(ttl, "--ttl").total_seconds())
    with controller(url) as c:
        made = c.run(c.client.create_join_token(name, ttl_s))
        used_url = c.client.url
    if as_json:
        print_json(made)
        return
    reach = made.controller_url or (used_url if used_url.startswith(("http://", "https://"))
                                    else "https://CONTROLLER:7700")
    err_console.print(f"join token {made.id} for host {made.host}, valid until "
                      f"{made.expires_at.isoformat(timespec='seconds')}, once; shown once, "
                      "keep it safe:", highlight=False)
    console.print(f"token:  {made.token}\nCA pin: {made.ca_pin}", highlight=False,
                  soft_wrap=True)
    err_console.print(f"on {made.host}, as root:", highlight=False)
    console.print(f"segue agent join --controller {reach} --host {made.host} --token "
                  f"{made.token} --ca-pin {made.ca_pin} --pki-dir {DEFAULT_HOST_PKI_DIR}",
                  highlight=False, soft_wrap=True)


@host_app.command("revoke")
@handles_errors
def revoke(name: str = typer.Argument(..., help="The host whose certificates to revoke."),
           reason: str = typer.Option("", "--reason", help="Why (kept in the audit log)."),
           url: str | None = URL, as_json: bool = typer.Option(False, "--json")) -> None:
    """Revoke every certificate of a host: the controller refuses it and sends it nothing;
    the other hosts refuse it in migrations once they fetch the CRL (within minutes). It
    comes back only by joining again with a new ticket."""
    with controller(url) as c:
        done = c.run(c.client.revoke_host(name, reason))
    if as_json:
        print_json(done)
        return
    console.print(f"host {done.host} revoked at {done.revoked_at.isoformat(timespec='seconds')}"
                  f" ({len(done.serials)} certificate(s): {', '.join(done.serials) or '-'}); "
                  f"to let it back: segue host token {done.host}, then segue agent join "
                  "--force on it", highlight=False, soft_wrap=True)
