"""Pre-migration check output: ``segue vm where`` and the tables ``segue vm migrate`` prints.

``results_table`` shows one row per result (check, result, code, message, hint);
``where_table`` shows hosts x checks with ✓ (ok), ! (warning) or ✗ (error).
"""

from __future__ import annotations

from collections.abc import Iterable

import typer
from rich.table import Table

from segue.api.checks import CheckResultView, WhereAnswer
from segue.cli.connect import URL, controller
from segue.cli.output import console, handles_errors, print_json
from segue.cli.vms import vm_app

MARKS = {"ok": "[green]✓[/]", "warning": "[yellow]![/]", "error": "[red]✗[/]"}
WORDS = {"ok": "[green]ok[/]", "warning": "[yellow]warning[/]", "error": "[red]error[/]"}


def results_table(results: Iterable[CheckResultView], title: str) -> Table:
    """One row per check result, in the order the controller gave them."""
    table = Table("check", "result", "code", "message", "hint", title=title)
    for r in results:
        table.add_row(r.check, WORDS.get(r.severity, r.severity), r.code, r.message, r.hint)
    return table


def where_table(answer: WhereAnswer) -> Table:
    """Hosts x checks, plus the blocking codes of each host."""
    checks = list(answer.checks)
    table = Table("host", *checks, "can go", "errors",
                  title=f"where can {answer.vm} (on {answer.source}) go")
    for row in answer.hosts:
        codes = sorted({r.code for r in row.results if r.severity == "error"})
        table.add_row(row.host, *(MARKS.get(row.checks.get(c, ""), "?") for c in checks),
                      "[green]yes[/]" if row.ok else "[red]no[/]", ", ".join(codes))
    return table


def has_errors(results: Iterable[CheckResultView]) -> bool:
    return any(r.severity == "error" for r in results)


@vm_app.command("where")
@handles_errors
def where(name: str, url: str | None = URL,
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Every other host with pass (✓), warning (!) or fail (✗) per check."""
    with controller(url) as c:
        answer = c.run(c.client.where(name))
    if as_json:
        print_json(answer)
        return
    if not answer.hosts:
        console.print(f"{name} has no other host to go to")
        return
    console.print(where_table(answer))
