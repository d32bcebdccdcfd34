"""``segue cluster``: cluster-wide settings; the CPU baseline (like VMware EVC)."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from segue.cli.hosts import URL
from segue.cli.output import console, handles_errors, print_json
from segue.controller.client import ControllerClient

cluster_app = typer.Typer(help="The cluster: CPU baseline.", no_args_is_help=True)


def _features(names: list[str]) -> str:
    return ", ".join(names) if names else "-"


def print_baseline(view: dict[str, Any]) -> None:
    """The baseline, what each host lacks of it, and what a raise would add."""
    console.print(f"CPU baseline: {view['model']} + {len(view['features'])} features "
                  f"(set {view['updated_at'] or 'never'}; {view['live_vms']} VMs running)",
                  highlight=False)
    console.print(f"  VMs run with: {view['cpu_model']}", highlight=False, soft_wrap=True)
    table = Table("host", "connected", "missing baseline features")
    for host in view["hosts"]:
        table.add_row(host["name"], "yes" if host["connected"] else "no",
                      _features(host["missing"]))
    console.print(table)
    if view["raisable"]:
        console.print(f"every connected host also offers: {_features(view['raisable'])} "
                      "(segue cluster raise-baseline)", highlight=False)


@cluster_app.command("baseline")
@handles_errors
def baseline(url: str | None = URL, as_json: bool = typer.Option(False, "--json")) -> None:
    """The cluster's CPU baseline: the model and features every host offers."""
    with ControllerClient.from_env(url) as client:
        view = client.call("GET", "/cluster/baseline")
    if as_json:
        print_json(view)
    else:
        print_baseline(view)


@cluster_app.command("raise-baseline")
@handles_errors
def raise_baseline(url: str | None = URL, as_json: bool = typer.Option(False, "--json")
                   ) -> None:
    """Raise the baseline to what every connected host offers (never below running VMs)."""
    with ControllerClient.from_env(url) as client:
        view = client.call("POST", "/cluster/baseline/raise")
    if as_json:
        print_json(view)
        return
    console.print(f"added: {_features(view['added'])}", highlight=False)
    print_baseline(view)
