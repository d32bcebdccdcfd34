"""``segue policy apply|list|show`` and the tag commands: ``segue vm tag|untag``,
``segue host tag|untag``, ``segue user set-tags`` (docs/security.md, "Policies").

``policy apply FILE`` reads the TOML file here (a syntax error names the line), then the
controller checks every entry and replaces the whole set, or refuses it and changes nothing
(``POLICY_INVALID``, naming the entry and the field).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import typer
from rich.table import Table

from segue.api.policies import PolicySetView, TagsView
from segue.cli.access import user_app
from segue.cli.connect import URL, controller
from segue.cli.hosts import host_app
from segue.cli.output import console, handles_errors, print_json
from segue.cli.vms import vm_app
from segue.domain.errors import InvalidRequest, NotFound
from segue.security.policy_file import entries_from_toml

policy_app = typer.Typer(help="User-defined policies: placement, encryption, migration "
                         "windows, per-role tags.", no_args_is_help=True)
JSON = typer.Option(False, "--json")
TAGS = typer.Argument(..., help="Tags: letters, digits, '.', '_', '-'.")


def _print_tags(view: TagsView, as_json: bool) -> None:
    if as_json:
        print_json(view)
    else:
        console.print(f"{view.kind} {view.name}: {', '.join(view.tags) or 'no tags'}",
                      highlight=False)


def _summary(entry: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in entry.items()
                     if k not in ("name", "kind"))


def _print_set(answer: PolicySetView) -> None:
    table = Table("policy", "kind", "settings",
                  title=f"applied {answer.applied_at:%Y-%m-%d %H:%M:%S} UTC by "
                        f"{answer.applied_by}" if answer.applied_at else "no policies")
    for p in answer.policies:
        table.add_row(p.name, p.kind, _summary(p.entry))
    console.print(table)


# ---- tags ----
@vm_app.command("tag")
@handles_errors
def tag_vm(vm: str, tags: list[str] = TAGS, url: str | None = URL, as_json: bool = JSON
           ) -> None:
    """Add tags to a VM (policies and per-role tags match on them)."""
    with controller(url) as c:
        _print_tags(c.run(c.client.change_tags("vm", vm, add=tags)), as_json)


@vm_app.command("untag")
@handles_errors
def untag_vm(vm: str, tags: list[str] = TAGS, url: str | None = URL, as_json: bool = JSON
             ) -> None:
    """Remove tags from a VM."""
    with controller(url) as c:
        _print_tags(c.run(c.client.change_tags("vm", vm, remove=tags)), as_json)


@host_app.command("tag")
@handles_errors
def tag_host(host: str, tags: list[str] = TAGS, url: str | None = URL, as_json: bool = JSON
             ) -> None:
    """Add tags to a host (placement policies match on them)."""
    with controller(url) as c:
        _print_tags(c.run(c.client.change_tags("host", host, add=tags)), as_json)


@host_app.command("untag")
@handles_errors
def untag_host(host: str, tags: list[str] = TAGS, url: str | None = URL,
               as_json: bool = JSON) -> None:
    """Remove tags from a host."""
    with controller(url) as c:
        _print_tags(c.run(c.client.change_tags("host", host, remove=tags)), as_json)


@user_app.command("set-tags")
@handles_errors
def set_user_tags(user: str, tags: list[str] = typer.Argument(
        None, help="The user's tags (none: clear them)."), url: str | None = URL,
        as_json: bool = JSON) -> None:
    """Replace a user's tags (role-tags policies let it act on VMs with one of them)."""
    with controller(url) as c:
        _print_tags(c.run(c.client.set_user_tags(user, tags or [])), as_json)


# ---- policies ----
@policy_app.command("apply")
@handles_errors
def apply(file: Path, url: str | None = URL, as_json: bool = JSON) -> None:
    """Replace every policy with FILE's (TOML, docs/examples/policies.toml); a file with a
    mistake changes nothing."""
    try:
        text = file.read_text()
    except OSError as err:
        raise InvalidRequest("POLICY_FILE_INVALID", f"cannot read {file}: {err.strerror}",
                             "give the path of a readable TOML file") from err
    entries = entries_from_toml(text, str(file))
    with controller(url) as c:
        answer = c.run(c.client.apply_policies(entries))
    if as_json:
        print_json(answer)
    else:
        console.print(f"{len(answer.policies)} policies applied from {file}", highlight=False)


@policy_app.command("list")
@handles_errors
def list_policies(url: str | None = URL, as_json: bool = JSON) -> None:
    """The policies in force, in order."""
    with controller(url) as c:
        answer = c.run(c.client.policies())
    if as_json:
        print_json(answer)
    else:
        _print_set(answer)


@policy_app.command("show")
@handles_errors
def show(name: str, url: str | None = URL, as_json: bool = JSON) -> None:
    """One policy with every setting (defaults filled in)."""
    with controller(url) as c:
        answer = c.run(c.client.policies())
    policy = next((p for p in answer.policies if p.name == name), None)
    if policy is None:
        raise NotFound("POLICY_NOT_FOUND", f"no policy named {name}",
                       "list them with segue policy list")
    if as_json:
        print_json(policy)
        return
    table = Table(title=f"policy {name}", show_header=False)
    for key, value in policy.entry.items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    console.print(table)
