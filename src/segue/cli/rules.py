"""``segue rule create|list|delete``: placement rules (docs/operations.md, "Placement rules").

``rule create NAME KIND`` with ``--vm`` (repeatable) and/or ``--vm-tag`` for the rule's VMs,
``--host-tag`` for a vm-host rule's host group, ``--should`` for a rule that may be broken
with a recorded reason (default: must). The controller refuses a rule set that cannot be
met, naming the conflict, and changes nothing.
"""

from __future__ import annotations

import typer
from rich.table import Table

from segue.api.rules import RuleBody, RuleView
from segue.cli.connect import URL, controller
from segue.cli.output import console, handles_errors, print_json

rule_app = typer.Typer(help="Placement rules: affinity, anti-affinity, VM-host (must or "
                       "should).", no_args_is_help=True)
JSON = typer.Option(False, "--json")


def _members(rule: RuleView) -> str:
    parts = [", ".join(rule.vms)] if rule.vms else []
    if rule.vm_tag:
        parts.append(f"tagged {rule.vm_tag}")
    return "; ".join(parts)


@rule_app.command("create")
@handles_errors
def create(name: str, kind: str = typer.Argument(
               ..., help="affinity (run together), anti-affinity (run apart) or vm-host "
               "(run on hosts tagged --host-tag)."),
           vm: list[str] = typer.Option([], "--vm", help="A VM the rule binds (repeat)."),
           vm_tag: str | None = typer.Option(None, "--vm-tag",
                                             help="Bind every VM with this tag."),
           host_tag: str | None = typer.Option(None, "--host-tag",
                                               help="vm-host: the host group's tag."),
           should: bool = typer.Option(False, "--should", help="A preference, broken only "
                                       "with a recorded reason (default: must)."),
           url: str | None = URL, as_json: bool = JSON) -> None:
    """Add a rule; refused, naming the conflict, if the rules could then not be met."""
    body = RuleBody.model_validate({"name": name, "kind": kind,
                                    "strength": "should" if should else "must", "vms": vm,
                                    "vm_tag": vm_tag, "host_tag": host_tag})
    with controller(url) as c:
        rule = c.run(c.client.create_rule(body))
    if as_json:
        print_json(rule)
    else:
        console.print(f"rule {rule.name} created: {rule.strength} {rule.kind} "
                      f"({_members(rule)})"
                      + (f" -> hosts tagged {rule.host_tag}" if rule.host_tag else ""),
                      highlight=False)


@rule_app.command("list")
@handles_errors
def list_rules(url: str | None = URL, as_json: bool = JSON) -> None:
    """Every rule, by name."""
    with controller(url) as c:
        rules = c.run(c.client.list_rules())
    if as_json:
        print_json(rules)
        return
    table = Table("rule", "kind", "strength", "VMs", "host group", "created")
    for r in rules:
        table.add_row(r.name, r.kind, r.strength, _members(r), r.host_tag or "",
                      f"{r.created_at:%Y-%m-%d %H:%M} by {r.created_by}")
    console.print(table)


@rule_app.command("delete")
@handles_errors
def delete(name: str, url: str | None = URL) -> None:
    """Remove a rule."""
    with controller(url) as c:
        c.run(c.client.delete_rule(name))
    console.print(f"rule {name} deleted", highlight=False)
