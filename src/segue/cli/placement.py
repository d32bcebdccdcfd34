"""What the CLI shows of a placement (``segue.api.rules.PlacementAnswer``) and how it
chooses: ``segue vm placement VM``, and ``segue vm create`` without ``--host`` or
``segue vm migrate`` without ``--to``, which take the best candidate and print it with the
runners-up and why every other host is excluded.
"""

from __future__ import annotations

import typer
from rich.table import Table

from segue.api.rules import PlacementAnswer
from segue.cli.connect import URL, controller
from segue.cli.output import console, handles_errors, print_json
from segue.domain.errors import InsufficientResources

RUNNERS_UP = 3  # candidates shown after the choice


def choice_of(answer: PlacementAnswer) -> str:
    """The best candidate's host; raises InsufficientResources (``NO_PLACEMENT``) naming
    each host's first reason when there is none."""
    if answer.choice is not None:
        return answer.choice
    why = "; ".join(f"{e.host}: {e.reasons[0].code}" for e in answer.excluded if e.reasons)
    raise InsufficientResources("NO_PLACEMENT", f"no host can take {answer.vm} ({why})",
                                f"see why with segue vm placement {answer.vm}, then fix a "
                                "host or a rule", excluded=[e.host for e in answer.excluded])


def print_placement(answer: PlacementAnswer, runners_up: int | None = None) -> None:
    """The candidates (the choice first, then up to ``runners_up``; all when None) and
    every excluded host with its reasons."""
    shown = answer.candidates if runners_up is None else answer.candidates[:1 + runners_up]
    table = Table("host", "score", "memory", "vCPUs", "notes",
                  title=f"placement of {answer.vm}"
                  + (f" (now on {answer.source})" if answer.source else ""))
    for i, c in enumerate(shown):
        notes = [r.message for r in c.broken_should] + c.warnings
        table.add_row(("-> " if i == 0 else "   ") + c.host, f"{c.score:.1f}",
                      f"{c.memory_use:.0%}", f"{c.vcpu_use:.0%}", "; ".join(notes))
    for e in answer.excluded:
        table.add_row(f"x  {e.host}", "-", "", "",
                      "; ".join(f"{r.code}: {r.message}" for r in e.reasons))
    console.print(table)


def register(vm_app: typer.Typer) -> None:
    """Add ``segue vm placement`` to ``vm_app``."""

    @vm_app.command("placement")
    @handles_errors
    def placement(vm: str, url: str | None = URL,
                  as_json: bool = typer.Option(False, "--json")) -> None:
        """Every host for moving VM: candidates best first, the others with why not."""
        with controller(url) as c:
            answer = c.run(c.client.placement(vm))
        if as_json:
            print_json(answer)
        else:
            print_placement(answer)
