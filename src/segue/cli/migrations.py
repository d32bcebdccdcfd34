"""``segue vm migrate`` (``--check``: the pre-migration checks only) and
``segue migration list|show|postcopy|cancel``: talk to the controller only."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from segue.api.checks import CheckResultView
from segue.api.migration import MigrationJobView, MigrationRequestBody, ProgressSample
from segue.cli.checks import results_table
from segue.cli.connect import URL, controller
from segue.cli.output import console, handles_errors, print_json
from segue.cli.placement import RUNNERS_UP, choice_of, print_placement
from segue.cli.vms import vm_app
from segue.clients.base import Blocking
from segue.clients.controller import ControllerClient
from segue.domain.errors import Conflict

migration_app = typer.Typer(help="Live migrations: list, show, cancel.", no_args_is_help=True)
TERMINAL = ("completed", "failed", "cancelled")


def _mib(n: object) -> str:
    return "-" if not isinstance(n, int | float) else f"{n / 1024**2:.1f} MiB"


def _rate(n: float | None) -> str:
    return "-" if not n else f"{n / 1024**2:.1f} MiB/s"


@vm_app.command("migrate")
@handles_errors
def migrate(vm: str, to: str | None = typer.Option(
                None, "--to", help="Destination host; default: the best by placement "
                "(printed with the runners-up and why others are excluded)."),
            check: bool = typer.Option(False, "--check", help="Only run the pre-migration "
                                       "checks and show them (exit 1 on an error)."),
            wait: bool = typer.Option(True, help="Follow the migration until it ends."),
            downtime_ms: int | None = typer.Option(
                None, help="Target downtime (ms), kept even above the bound; default: "
                           "chosen from the measured link and dirty rate, within "
                           "--max-downtime."),
            max_bandwidth: int = typer.Option(0, help="Cap in MiB/s (0: no cap)."),
            deadline: float = typer.Option(600.0, help="Give up after this many seconds."),
            stall_timeout: float = typer.Option(15.0, help="Give up when no data moved for "
                                                           "this many seconds."),
            postcopy: bool = typer.Option(True, help="Let the policy switch to post-copy "
                                                     "when pre-copy cannot converge."),
            max_downtime: int | None = typer.Option(
                None, help="Highest downtime target (ms) the policy may choose or raise to "
                           "by itself; default: the cluster's bound (the controller's "
                           "max_auto_downtime_ms, 300 ms unless set). Past it the policy "
                           "goes to post-copy, or throttles the guest with --no-postcopy."),
            tls: bool = typer.Option(True, help="Encrypt the migration stream with the "
                                                "cluster's certificates (--no-tls: plain, "
                                                "the guest's memory readable on the "
                                                "migration link)."),
            url: str | None = URL, as_json: bool = typer.Option(False, "--json")) -> None:
    """Live-migrate a running VM to another host, with live progress and a final summary.

    The controller runs every pre-migration check first and refuses on an error; the
    refusal prints the table of results (``--json``: the error as JSON on stdout). Without
    --to the destination is placement's choice (--json: {"placement": ..., "job": ...})."""
    answer = None
    if to is None:
        with controller(url) as c:
            answer = c.run(c.client.placement(vm))
        if not as_json:
            print_placement(answer, RUNNERS_UP)
        elif check:
            print_json(answer)
        to = choice_of(answer)
    if check:
        run_check(vm, to, url, as_json, tls)
        return
    body = MigrationRequestBody(to=to, downtime_limit_ms=downtime_ms, deadline_s=deadline,
                                stall_timeout_s=stall_timeout,
                                max_bandwidth_mibs=max_bandwidth or None,
                                allow_postcopy=postcopy, max_downtime_ms=max_downtime,
                                tls=tls)
    with controller(url) as c:
        job = request_migration(c, vm, body, as_json)
        if not wait:
            print_json(job if answer is None else {"placement": answer, "job": job}) \
                if as_json else console.print(
                    f"migration {job.id} of {vm} to {to} {_accepted(job)}")
            return
        job = follow(c, job, quiet=as_json)
    if as_json:
        print_json(job if answer is None else {"placement": answer, "job": job})
    else:
        print_summary(job)
    if job.phase != "completed":
        raise typer.Exit(1)


class QueuedJob(Protocol):
    @property
    def phase(self) -> str: ...
    @property
    def queue_position(self) -> int | None: ...


def phase_label(job: QueuedJob) -> str:
    """The phase as shown: a queued job with its place in the queue, e.g. ``queued (2)``."""
    return f"{job.phase} ({job.queue_position})" if job.queue_position else job.phase


def _accepted(job: MigrationJobView) -> str:
    if job.queue_position:
        return f"queued at position {job.queue_position} (per-host migration limits)"
    return f"started ({job.phase})"


def run_check(vm: str, to: str, url: str | None, as_json: bool, tls: bool = True) -> None:
    """``--check``: the results as a table (or JSON); exit 1 if any is an error."""
    with controller(url) as c:
        answer = c.run(c.client.check_migration(vm, to, tls))
    if as_json:
        print_json(answer)
    else:
        console.print(results_table(answer.results,
                                    f"can {vm} migrate from {answer.source} to {to}?"))
    if not answer.ok:
        raise typer.Exit(1)


def request_migration(c: Blocking[ControllerClient], vm: str, body: MigrationRequestBody,
                      as_json: bool) -> MigrationJobView:
    """Ask for the migration; a refusal on checks shows every result, then raises."""
    try:
        return c.run(c.client.request_migration(vm, body))
    except Conflict as err:
        if err.code == "MIGRATION_CHECKS_FAILED":
            results = [CheckResultView.model_validate(r)
                       for r in err.details.get("results") or []]
            if as_json:
                print_json({"error": err.to_dict()})
            else:
                failed = [r for r in results if r.severity != "ok"]
                console.print(results_table(failed, f"{vm} cannot migrate to {body.to}"))
        raise


def follow(c: Blocking[ControllerClient], job: MigrationJobView,
           quiet: bool = False) -> MigrationJobView:
    """Poll the job until it ends, drawing a progress bar; returns the final job."""
    columns = [TextColumn("[bold]{task.fields[phase]:<10}"), BarColumn(), DownloadColumn(),
               TextColumn("dirty {task.fields[dirty]}  sent at {task.fields[speed]}  "
                          "iter {task.fields[iteration]}  {task.fields[conv]}  "
                          "ETA {task.fields[eta]}")]
    with Progress(*columns, console=console, disable=quiet, transient=False) as bar:
        task = bar.add_task("migrate", total=None, phase=phase_label(job), dirty="-", speed="-",
                            iteration=0, eta="-", conv="-")
        shown = quiet  # --json: stdout carries the JSON only
        while job.phase not in TERMINAL:
            time.sleep(0.25)
            job = c.run(c.client.get_migration(job.id))
            shown = _show_prediction(bar, job, shown)
            p = job.progress or ProgressSample(status="none")
            bar.update(task, total=p.total or None, completed=p.transferred,
                       phase=phase_label(job), dirty=_rate(p.dirty_rate),
                       speed=_rate(p.throughput), iteration=p.iteration,
                       eta="-" if p.eta_s is None else f"{p.eta_s:.1f}s", conv=_convergence(p))
    return job


def _show_prediction(bar: Progress, job: MigrationJobView, shown: bool) -> bool:
    """Print the policy's prediction once, when the job has one; whether it was shown."""
    s = job.summary
    if shown or "predicted_total_s" not in s:
        return shown
    downtime = s.get("predicted_downtime_ms")
    bound = s.get("downtime_bound_ms")
    bar.console.print(f"prediction: {s.get('prediction')}; about {s['predicted_total_s']} s"
                      + (f", {downtime} ms of downtime" if downtime is not None else "")
                      + (f" (bound {bound} ms)" if bound is not None else ""), highlight=False)
    return True


def _convergence(p: ProgressSample) -> str:
    """The convergence indicator: dirty rate over throughput, and whether the copy gains."""
    converging = p.converging
    verdict = "-" if converging is None else "converging" if converging else "NOT converging"
    return verdict if p.dirty_ratio is None else f"{verdict} (dirty/sent {p.dirty_ratio:.2f})"


def encryption_label(job: MigrationJobView) -> str:
    """``TLS``, ``plain`` or ``-`` (not started) for the job's stream."""
    return "-" if job.encrypted is None else "TLS" if job.encrypted else "plain"


def print_summary(job: MigrationJobView) -> None:
    s = job.summary
    if job.phase != "completed":
        console.print(f"[bold red]{job.phase}[/]: migration {job.id} of {job.vm} "
                      f"{job.source} -> {job.destination} ({encryption_label(job)}): "
                      f"{job.reason}", highlight=False)
        return
    table = Table("vm", "from", "to", "stream", "total", "QEMU downtime", "switchover", "sent",
                  "RAM", "iterations", title=f"migration {job.id}")
    table.add_row(job.vm, job.source, job.destination, encryption_label(job),
                  f"{s.get('total_s')} s",
                  f"{s.get('qemu_downtime_ms')} ms", f"{s.get('switchover_ms')} ms",
                  _mib(s.get("bytes_sent")), _mib(s.get("ram_total")), str(s.get("iterations")))
    console.print(table)


@migration_app.command("list")
@handles_errors
def list_migrations(vm: str | None = typer.Option(None, help="Only this VM's."),
                    url: str | None = URL, as_json: bool = typer.Option(False, "--json")) -> None:
    """Every migration, oldest first, with its phase (queued ones with their place)."""
    with controller(url) as c:
        rows = c.run(c.client.list_migrations(vm))
    if as_json:
        print_json(rows)
        return
    table = Table("id", "vm", "from", "to", "phase", "created", "total", "reason")
    for r in rows:
        table.add_row(r.id, r.vm, r.source, r.destination, phase_label(r),
                      r.created_at.isoformat()[:19], str(r.summary.get("total_s", "-")),
                      r.reason or "")
    console.print(table)


@migration_app.command("show")
@handles_errors
def show_migration(migration_id: str, url: str | None = URL,
                   as_json: bool = typer.Option(False, "--json")) -> None:
    """One migration with every phase transition and decision."""
    with controller(url) as c:
        job = c.run(c.client.get_migration(migration_id))
    if as_json:
        print_json(job)
        return
    console.print(f"migration {job.id}: {job.vm} {job.source} -> "
                  f"{job.destination}, {job.phase}, stream {encryption_label(job)}",
                  highlight=False)
    table = Table("at", "from", "to", "message")
    for t in job.transitions or []:
        table.add_row(t.at.isoformat()[11:23], t.from_ or "", t.to, t.message)
    console.print(table)
    print_summary(job)


@migration_app.command("postcopy")
@handles_errors
def postcopy_migration(migration_id: str, url: str | None = URL,
                       as_json: bool = typer.Option(False, "--json")) -> None:
    """Switch a copying migration to post-copy now: the VM runs on the destination at once
    and pulls the memory it still lacks (the policy does this by itself when pre-copy
    cannot converge)."""
    _ask_job(lambda c: c.start_postcopy(migration_id), "post-copy", url, as_json)


@migration_app.command("cancel")
@handles_errors
def cancel_migration(migration_id: str, url: str | None = URL,
                     as_json: bool = typer.Option(False, "--json")) -> None:
    """Cancel a migration that is queued or still copying; the VM stays on its source."""
    _ask_job(lambda c: c.cancel_migration(migration_id), "cancel", url, as_json)


JobCall = Callable[[ControllerClient], Coroutine[Any, Any, MigrationJobView]]


def _ask_job(ask: JobCall, what: str, url: str | None, as_json: bool) -> None:
    """Ask the controller something about one job; prints the job (``--json``) or one line."""
    with controller(url) as c:
        job = c.run(ask(c.client))
    if as_json:
        print_json(job)
        return
    console.print(f"{what} requested for {job.id} ({job.phase})")
