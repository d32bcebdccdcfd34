"""``segue host maintenance``: enter (the pre-flight, then the evacuation followed live),
exit, status.

``enter HOST`` prints the pre-flight (each VM's destination or blocker, its predicted
seconds, the total ETA); ``--dry-run`` stops there. Otherwise the host enters maintenance
and the controller evacuates it; the command follows the evacuation (the status route,
each second: one row per VM with its phase and destination) until the host is
``in-maintenance`` (exit 0) or the evacuation ends with VMs that cannot move (exit 1,
naming them); ``--no-wait`` returns once the evacuation has started.

``exit HOST`` brings the host back to normal; ``--return`` also moves back the VMs its
latest evacuation moved, followed the same way (exit 1 naming the VMs that could not come
back: a rule, no room, or a VM moved elsewhere since).
"""

from __future__ import annotations

import time

import typer
from rich.live import Live
from rich.table import Table

from segue.api.maintenance import MaintenanceAnswer, MaintenanceStatus
from segue.cli.connect import URL, controller
from segue.cli.output import console, err_console, handles_errors, print_json
from segue.clients.base import Blocking
from segue.clients.controller import ControllerClient

maintenance_app = typer.Typer(help="Maintenance mode: evacuate a host, bring it back.",
                              no_args_is_help=True)
FOLLOW_POLL_S = 1.0
ENDED = ("done", "stuck", "stopped")


def preflight_table(answer: MaintenanceAnswer) -> Table:
    """Each VM with its destination or blocker and its predicted seconds, and the ETA."""
    table = Table("VM", "destination", "predicted", "blocker",
                  title=f"{answer.host}: evacuation plan, {answer.parallel} at once",
                  caption=f"total ETA {answer.predicted_s:.1f}s")
    for row in answer.vms:
        blocker = f"[red]{row.blocker}[/]: {row.message}" if row.blocker else "-"
        table.add_row(row.vm, row.dest or "-",
                      f"{row.predicted_s:.1f}s" if row.dest else "-", blocker)
    return table


def progress_table(status: MaintenanceStatus) -> Table:
    """One row per VM: its phase (its job's while it migrates), destination, job."""
    eta = "-" if status.eta_s is None else f"{status.eta_s:.0f}s"
    run = "return" if status.kind == "return" else "evacuation"
    table = Table("VM", "phase", "progress", "from", "destination", "job", "blocker",
                  title=f"{status.host}: {status.state} ({run} "
                        f"{status.evacuation or '-'}, ETA {eta})")
    colour = {"moved": "green", "blocked": "red", "migrating": "yellow"}
    for row in status.vms:
        phase = row.phase if row.job_phase is None else f"{row.phase} ({row.job_phase})"
        progress = "-" if row.progress_pct is None else f"{row.progress_pct:.0f}%" + (
            "" if row.eta_s is None else f" ({row.eta_s:.0f}s left)")
        table.add_row(row.vm, f"[{colour.get(row.phase, 'default')}]{phase}[/]", progress,
                      row.source or "-", row.dest or "-", row.job_id or "-",
                      row.blocker or "-")
    return table


def follow(c: Blocking[ControllerClient], host: str) -> MaintenanceStatus:
    """Poll the host's status each FOLLOW_POLL_S until its evacuation ends; the last one."""
    status = c.run(c.client.maintenance_status(host))
    with Live(progress_table(status), console=console, refresh_per_second=4) as live:
        while status.state != "in-maintenance" and status.evacuation not in ENDED:
            time.sleep(FOLLOW_POLL_S)
            status = c.run(c.client.maintenance_status(host))
            live.update(progress_table(status))
    return status


def fail_stuck(status: MaintenanceStatus) -> None:
    """Name what keeps the host from maintenance (or its VMs from coming back) and exit 1."""
    if status.kind == "return":
        err_console.print(f"[bold red]not every VM came back to {status.host}[/]",
                          highlight=False)
    else:
        err_console.print(f"[bold red]{status.host} is {status.state}[/]: "
                          f"{status.reason or 'its evacuation ' + str(status.evacuation)}",
                          highlight=False)
    for row in status.vms:
        if row.phase == "blocked":
            err_console.print(f"  {row.vm}: {row.blocker}: {row.message}", highlight=False)
    raise typer.Exit(1)


@maintenance_app.command("enter")
@handles_errors
def enter(name: str = typer.Argument(..., help="The host to evacuate."),
          max_parallel: int = typer.Option(2, "--max-parallel", min=1, max=16,
                                           help="Migrations at once (the per-host limits "
                                                "bound them too)."),
          dry_run: bool = typer.Option(False, "--dry-run",
                                       help="Print the plan and change nothing."),
          no_wait: bool = typer.Option(False, "--no-wait",
                                       help="Return once the evacuation has started."),
          url: str | None = URL, as_json: bool = typer.Option(False, "--json")) -> None:
    """Put a host in maintenance: print the plan, then follow its evacuation; exit 1 naming
    the VMs that cannot move."""
    with controller(url) as c:
        answer = c.run(c.client.enter_maintenance(name, max_parallel, dry_run))
        if as_json:
            print_json(answer)
            return
        console.print(preflight_table(answer))
        if dry_run:
            console.print("dry run: nothing changed")
            return
        if answer.state == "in-maintenance" or no_wait:
            console.print(f"{name} is {answer.state}"
                          + ("" if answer.state == "in-maintenance" else
                             f"; follow it: segue host maintenance status {name}"))
            return
        status = follow(c, name)
    if status.state != "in-maintenance":
        fail_stuck(status)
    console.print(f"[green]{name} is in-maintenance[/]")


@maintenance_app.command("exit")
@handles_errors
def exit_maintenance(name: str = typer.Argument(..., help="The host to bring back."),
                     return_vms: bool = typer.Option(
                         False, "--return", help="Move back the VMs its latest evacuation "
                                                 "moved (where rules and room allow)."),
                     max_parallel: int = typer.Option(2, "--max-parallel", min=1, max=16,
                                                      help="Moves back at once."),
                     no_wait: bool = typer.Option(False, "--no-wait",
                                                  help="Return once the moves have started."),
                     url: str | None = URL) -> None:
    """Take a host out of maintenance (a running evacuation stops requesting moves);
    ``--return`` brings its VMs back, exit 1 naming those that could not come back."""
    with controller(url) as c:
        answer = c.run(c.client.exit_maintenance(name, return_vms, max_parallel))
        console.print(f"{answer.host} is {answer.state}")
        if not return_vms:
            return
        if not answer.vms:
            console.print("no VM to bring back: its latest evacuation moved none")
            return
        console.print(f"bringing back: {', '.join(v.vm for v in answer.vms)}",
                      highlight=False)
        if no_wait:
            console.print(f"follow it: segue host maintenance status {name}")
            return
        status = follow(c, name)
    if status.evacuation != "done":
        fail_stuck(status)
    console.print(f"[green]{len(answer.vms)} VM(s) back on {name}[/]")


@maintenance_app.command("status")
@handles_errors
def status(name: str = typer.Argument(..., help="The host."), url: str | None = URL,
           as_json: bool = typer.Option(False, "--json")) -> None:
    """A host's maintenance state and its latest evacuation, one row per VM."""
    with controller(url) as c:
        answer = c.run(c.client.maintenance_status(name))
    if as_json:
        print_json(answer)
        return
    console.print(progress_table(answer))
    if answer.reason:
        console.print(f"reason: {answer.reason}", highlight=False)
