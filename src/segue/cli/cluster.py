"""``segue cluster``: cluster-wide settings; the CPU baseline (like VMware EVC)."""

from __future__ import annotations

import typer
from rich.table import Table

from segue.api.cluster import BaselineView
from segue.cli.connect import URL, controller
from segue.cli.output import console, handles_errors, print_json

cluster_app = typer.Typer(help="The cluster: CPU baseline.", no_args_is_help=True)


def _features(names: list[str]) -> str:
    return ", ".join(names) if names else "-"


def print_baseline(view: BaselineView) -> None:
    """The baseline, what each host lacks of it, and what a raise would add."""
    set_at = view.updated_at.isoformat() if view.updated_at else "never"
    console.print(f"CPU baseline: {view.model} + {len(view.features)} features "
                  f"(set {set_at}; {view.live_vms} VMs running)", highlight=False)
    console.print(f"  VMs run with: {view.cpu_model}", highlight=False, soft_wrap=True)
    table = Table("host", "connected", "missing baseline features")
    for host in view.hosts:
        table.add_row(host.name, "yes" if host.connected else "no", _features(host.missing))
    console.print(table)
    if view.raisable:
        console.print(f"every connected host also offers: {_features(view.raisable)} "
                      "(segue cluster raise-baseline)", highlight=False)


@cluster_app.command("baseline")
@handles_errors
def baseline(url: str | None = URL, as_json: bool = typer.Option(False, "--json")) -> None:
    """The cluster's CPU baseline: the model and features every host offers."""
    with controller(url) as c:
        view = c.run(c.client.baseline())
    if as_json:
        print_json(view)
    else:
        print_baseline(view)


@cluster_app.command("raise-baseline")
@handles_errors
def raise_baseline(url: str | None = URL, as_json: bool = typer.Option(False, "--json")
                   ) -> None:
    """Raise the baseline to what every connected host offers (never below running VMs)."""
    with controller(url) as c:
        view = c.run(c.client.raise_baseline())
    if as_json:
        print_json(view)
        return
    console.print(f"added: {_features(view.added)}", highlight=False)
    print_baseline(view)
