"""``segue vm migrate`` (``--check``: the pre-migration checks only) and
``segue migration list|show|cancel``: talk to the controller only."""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from segue.cli.checks import results_table
from segue.cli.output import console, handles_errors, print_json
from segue.cli.vms import vm_app
from segue.controller.client import ControllerClient
from segue.domain.errors import Conflict

migration_app = typer.Typer(help="Live migrations: list, show, cancel.", no_args_is_help=True)
URL = typer.Option(None, "--url", help="Controller URL (default: $SEGUE_URL or the lab's).")
TERMINAL = ("completed", "failed", "cancelled")


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 1024**2:.1f} MiB"


def _rate(n: float | None) -> str:
    return "-" if not n else f"{n / 1024**2:.1f} MiB/s"


@vm_app.command("migrate")
@handles_errors
def migrate(vm: str, to: str = typer.Option(..., "--to", help="Destination host."),
            check: bool = typer.Option(False, "--check", help="Only run the pre-migration "
                                       "checks and show them (exit 1 on an error)."),
            wait: bool = typer.Option(True, help="Follow the migration until it ends."),
            downtime_ms: int | None = typer.Option(
                None, help="Target downtime (ms); default: chosen from the measured link "
                           "and dirty rate."),
            max_bandwidth: int = typer.Option(0, help="Cap in MiB/s (0: no cap)."),
            deadline: float = typer.Option(600.0, help="Give up after this many seconds."),
            stall_timeout: float = typer.Option(15.0, help="Give up when no data moved for "
                                                           "this many seconds."),
            postcopy: bool = typer.Option(True, help="Let the policy switch to post-copy "
                                                     "when pre-copy cannot converge."),
            max_downtime: int = typer.Option(2000, help="Highest downtime target (ms) the "
                                                        "policy may raise to."),
            url: str | None = URL, as_json: bool = typer.Option(False, "--json")) -> None:
    """Live-migrate a running VM to another host, with live progress and a final summary.

    The controller runs every pre-migration check first and refuses on an error; the
    refusal prints the table of results (``--json``: the error as JSON on stdout)."""
    if check:
        run_check(vm, to, url, as_json)
        return
    body = {"to": to, "downtime_limit_ms": downtime_ms, "deadline_s": deadline,
            "stall_timeout_s": stall_timeout, "max_bandwidth_mibs": max_bandwidth or None,
            "allow_postcopy": postcopy, "max_downtime_ms": max_downtime}
    with ControllerClient.from_env(url) as client:
        job = request_migration(client, vm, body, as_json)
        if not wait:
            print_json(job) if as_json else console.print(
                f"migration {job['id']} of {vm} to {to} {_accepted(job)}")
            return
        job = follow(client, job, quiet=as_json)
    if as_json:
        print_json(job)
    else:
        print_summary(job)
    if job["phase"] != "completed":
        raise typer.Exit(1)


def phase_label(job: dict[str, Any]) -> str:
    """The phase as shown: a queued job with its place in the queue, e.g. ``queued (2)``."""
    position = job.get("queue_position")
    return f"{job['phase']} ({position})" if position else str(job["phase"])


def _accepted(job: dict[str, Any]) -> str:
    if job.get("queue_position"):
        return f"queued at position {job['queue_position']} (per-host migration limits)"
    return f"started ({job['phase']})"


def run_check(vm: str, to: str, url: str | None, as_json: bool) -> None:
    """``--check``: the results as a table (or JSON); exit 1 if any is an error."""
    with ControllerClient.from_env(url) as client:
        answer = client.call("POST", f"/vms/{vm}/migrations/check", json={"to": to})
    if as_json:
        print_json(answer)
    else:
        console.print(results_table(answer["results"],
                                    f"can {vm} migrate from {answer['source']} to {to}?"))
    if not answer["ok"]:
        raise typer.Exit(1)


def request_migration(client: ControllerClient, vm: str, body: dict[str, Any],
                      as_json: bool) -> dict[str, Any]:
    """Ask for the migration; a refusal on checks shows every result, then raises."""
    try:
        return dict(client.call("POST", f"/vms/{vm}/migrations", json=body))
    except Conflict as err:
        if err.code == "MIGRATION_CHECKS_FAILED":
            results = list(err.details.get("results") or [])
            if as_json:
                print_json({"error": err.to_dict()})
            else:
                failed = [r for r in results if r["severity"] != "ok"]
                console.print(results_table(failed, f"{vm} cannot migrate to {body['to']}"))
        raise


def follow(client: ControllerClient, job: dict[str, Any], quiet: bool = False) -> dict[str, Any]:
    """Poll the job until it ends, drawing a progress bar; returns the final job."""
    columns = [TextColumn("[bold]{task.fields[phase]:<10}"), BarColumn(), DownloadColumn(),
               TextColumn("dirty {task.fields[dirty]}  sent at {task.fields[speed]}  "
                          "iter {task.fields[iteration]}  {task.fields[conv]}  "
                          "ETA {task.fields[eta]}")]
    with Progress(*columns, console=console, disable=quiet, transient=False) as bar:
        task = bar.add_task("migrate", total=None, phase=phase_label(job), dirty="-", speed="-",
                            iteration=0, eta="-", conv="-")
        shown = quiet  # --json: stdout carries the JSON only
        while job["phase"] not in TERMINAL:
            time.sleep(0.25)
            job = client.call("GET", f"/migrations/{job['id']}")
            shown = _show_prediction(bar, job, shown)
            p = job.get("progress") or {}
            eta = p.get("eta_s")
            bar.update(task, total=p.get("total") or None, completed=p.get("transferred", 0),
                       phase=phase_label(job), dirty=_rate(p.get("dirty_rate")),
                       speed=_rate(p.get("throughput")), iteration=p.get("iteration", 0),
                       eta="-" if eta is None else f"{eta:.1f}s", conv=_convergence(p))
    return job


def _show_prediction(bar: Progress, job: dict[str, Any], shown: bool) -> bool:
    """Print the policy's prediction once, when the job has one; whether it was shown."""
    s = job.get("summary") or {}
    if shown or "predicted_total_s" not in s:
        return shown
    bar.console.print(f"prediction: {s.get('prediction')}; about {s['predicted_total_s']} s",
                      highlight=False)
    return True


def _convergence(p: dict[str, Any]) -> str:
    """The convergence indicator: dirty rate over throughput, and whether the copy gains."""
    ratio = p.get("dirty_ratio")
    converging = p.get("converging")
    verdict = "-" if converging is None else "converging" if converging else "NOT converging"
    return verdict if ratio is None else f"{verdict} (dirty/sent {ratio:.2f})"


def print_summary(job: dict[str, Any]) -> None:
    s = job.get("summary") or {}
    if job["phase"] != "completed":
        console.print(f"[bold red]{job['phase']}[/]: migration {job['id']} of {job['vm']} "
                      f"{job['source']} -> {job['destination']}: {job.get('reason')}",
                      highlight=False)
        return
    table = Table("vm", "from", "to", "total", "QEMU downtime", "switchover", "sent",
                  "RAM", "iterations", title=f"migration {job['id']}")
    table.add_row(job["vm"], job["source"], job["destination"], f"{s.get('total_s')} s",
                  f"{s.get('qemu_downtime_ms')} ms", f"{s.get('switchover_ms')} ms",
                  _mib(s.get("bytes_sent")), _mib(s.get("ram_total")), str(s.get("iterations")))
    console.print(table)


@migration_app.command("list")
@handles_errors
def list_migrations(vm: str | None = typer.Option(None, help="Only this VM's."),
                    url: str | None = URL, as_json: bool = typer.Option(False, "--json")) -> None:
    """Every migration, oldest first, with its phase (queued ones with their place)."""
    with ControllerClient.from_env(url) as client:
        rows = client.call("GET", "/migrations", params={"vm": vm} if vm else None)
    if as_json:
        print_json(rows)
        return
    table = Table("id", "vm", "from", "to", "phase", "created", "total", "reason")
    for r in rows:
        table.add_row(r["id"], r["vm"], r["source"], r["destination"], phase_label(r),
                      r["created_at"][:19], str((r.get("summary") or {}).get("total_s", "-")),
                      r.get("reason") or "")
    console.print(table)


@migration_app.command("show")
@handles_errors
def show_migration(migration_id: str, url: str | None = URL,
                   as_json: bool = typer.Option(False, "--json")) -> None:
    """One migration with every phase transition and decision."""
    with ControllerClient.from_env(url) as client:
        job = client.call("GET", f"/migrations/{migration_id}")
    if as_json:
        print_json(job)
        return
    console.print(f"migration {job['id']}: {job['vm']} {job['source']} -> "
                  f"{job['destination']}, {job['phase']}", highlight=False)
    table = Table("at", "from", "to", "message")
    for t in job["transitions"]:
        table.add_row(t["at"][11:23], t["from"] or "", t["to"], t["message"])
    console.print(table)
    print_summary(job)


@migration_app.command("postcopy")
@handles_errors
def postcopy_migration(migration_id: str, url: str | None = URL,
                       as_json: bool = typer.Option(False, "--json")) -> None:
    """Switch a copying migration to post-copy now: the VM runs on the destination at once
    and pulls the memory it still lacks (the policy does this by itself when pre-copy
    cannot converge)."""
    _ask_job(migration_id, "postcopy", "post-copy", url, as_json)


@migration_app.command("cancel")
@handles_errors
def cancel_migration(migration_id: str, url: str | None = URL,
                     as_json: bool = typer.Option(False, "--json")) -> None:
    """Cancel a migration that is queued or still copying; the VM stays on its source."""
    _ask_job(migration_id, "cancel", "cancel", url, as_json)


def _ask_job(migration_id: str, action: str, what: str, url: str | None,
             as_json: bool) -> None:
    """``POST /migrations/ID/ACTION``; prints the job (``--json``) or one line."""
    with ControllerClient.from_env(url) as client:
        job = client.call("POST", f"/migrations/{migration_id}/{action}")
    if as_json:
        print_json(job)
        return
    console.print(f"{what} requested for {job['id']} ({job['phase']})")
