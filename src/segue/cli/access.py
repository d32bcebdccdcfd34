"""``segue user``, ``segue token``, ``segue events`` (the audit log) and ``segue whoami``.

Users, tokens and the audit log are an admin's (root's through the unix socket, or a user
with role admin over TCP). A token's secret is printed once, when it is made: keep it in
``$SEGUE_TOKEN`` or ``~/.config/segue/token`` (mode 0600), never in a shared place.
"""

from __future__ import annotations

from datetime import UTC, datetime

import typer
from rich.table import Table

from segue.api.access import TokenView, UserView
from segue.cli.connect import URL, controller
from segue.cli.output import console, err_console, handles_errors, print_json
from segue.cli.times import parse_duration, parse_time

user_app = typer.Typer(help="Users of the controller's API and their roles.",
                       no_args_is_help=True)
token_app = typer.Typer(help="API tokens of the users.", no_args_is_help=True)
JSON = typer.Option(False, "--json")
ROLES = "viewer, operator or admin (docs/security.md says what each may do)"


def _when(at: datetime | None) -> str:
    return at.isoformat(timespec="seconds") if at is not None else "-"


def _print_users(users: list[UserView]) -> None:
    table = Table("user", "role", "disabled", "active tokens", "tags", "created")
    for u in users:
        table.add_row(u.name, u.role, "yes" if u.disabled else "no", str(u.tokens),
                      ", ".join(u.tags) or "-", _when(u.created_at))
    console.print(table)


def _print_tokens(tokens: list[TokenView]) -> None:
    table = Table("id", "user", "role", "state", "expires", "last used", "note")
    for t in tokens:
        table.add_row(t.id, t.user, t.role or "(user's)", t.state, _when(t.expires_at),
                      _when(t.last_used_at), t.note or "")
    console.print(table)


# ---- users ----
@user_app.command("create")
@handles_errors
def create_user(name: str, role: str = typer.Option(..., "--role", help=ROLES),
                url: str | None = URL, as_json: bool = JSON) -> None:
    """A new user with a role (then: segue token create --user NAME)."""
    with controller(url) as c:
        user = c.run(c.client.create_user(name, role))
    if as_json:
        print_json(user)
    else:
        console.print(f"user {user.name} created, role {user.role}", highlight=False)


@user_app.command("list")
@handles_errors
def list_users(url: str | None = URL, as_json: bool = JSON) -> None:
    """Every user: role, disabled, active tokens."""
    with controller(url) as c:
        users = c.run(c.client.list_users())
    if as_json:
        print_json(users)
    else:
        _print_users(users)


@user_app.command("set-role")
@handles_errors
def set_role(name: str, role: str = typer.Argument(..., help=ROLES), url: str | None = URL,
             as_json: bool = JSON) -> None:
    """Change a user's role (its tokens follow at once)."""
    with controller(url) as c:
        user = c.run(c.client.update_user(name, role=role))
    if as_json:
        print_json(user)
    else:
        console.print(f"user {user.name}: role {user.role}", highlight=False)


@user_app.command("disable")
@handles_errors
def disable_user(name: str, url: str | None = URL) -> None:
    """Disable a user: its tokens stop working until it is enabled again."""
    with controller(url) as c:
        c.run(c.client.update_user(name, disabled=True))
    console.print(f"user {name} disabled", highlight=False)


@user_app.command("enable")
@handles_errors
def enable_user(name: str, url: str | None = URL) -> None:
    """Enable a disabled user again."""
    with controller(url) as c:
        c.run(c.client.update_user(name, disabled=False))
    console.print(f"user {name} enabled", highlight=False)


@user_app.command("delete")
@handles_errors
def delete_user(name: str, url: str | None = URL) -> None:
    """Delete a user and its tokens (the audit log keeps what it did)."""
    with controller(url) as c:
        c.run(c.client.delete_user(name))
    console.print(f"user {name} deleted", highlight=False)


# ---- tokens ----
@token_app.command("create")
@handles_errors
def create_token(
    user: str = typer.Option(..., "--user", help="The user the token acts for."),
    role: str | None = typer.Option(None, "--role", help="Narrow the token to this role "
                                    "(the user's or a narrower one); default: the user's."),
    ttl: str | None = typer.Option(None, "--ttl", help="Lifetime: 90s, 30m, 12h, 30d, 52w; "
                                   "default: until revoked."),
    note: str | None = typer.Option(None, "--note", help="What the token is for."),
    url: str | None = URL, as_json: bool = JSON,
) -> None:
    """A new API token of a user; its secret is printed once, here."""
    ttl_s = int(parse_duration(ttl, "--ttl").total_seconds()) if ttl else None
    with controller(url) as c:
        made = c.run(c.client.create_token(user, role=role, ttl_s=ttl_s, note=note))
    if as_json:
        print_json(made)
        return
    err_console.print(f"token {made.id} of user {made.user} (role {made.role or 'of the user'}"
                      f", expires {_when(made.expires_at)}); shown once, keep it safe:",
                      highlight=False)
    console.print(made.token, highlight=False, soft_wrap=True)


@token_app.command("list")
@handles_errors
def list_tokens(user: str | None = typer.Option(None, "--user", help="Only this user's."),
                url: str | None = URL, as_json: bool = JSON) -> None:
    """Tokens (never their secrets): user, role, state, expiry, last use."""
    with controller(url) as c:
        tokens = c.run(c.client.list_tokens(user))
    if as_json:
        print_json(tokens)
    else:
        _print_tokens(tokens)


@token_app.command("revoke")
@handles_errors
def revoke_token(token_id: str = typer.Argument(..., metavar="ID"), url: str | None = URL
                 ) -> None:
    """Revoke a token at once (it stays listed, revoked)."""
    with controller(url) as c:
        c.run(c.client.revoke_token(token_id))
    console.print(f"token {token_id} revoked", highlight=False)


# ---- the audit log, the caller ----
@handles_errors
def events(
    actor: str | None = typer.Option(None, "--actor", help="Only this actor (a user's "
                                     "name, root, a host's name, anonymous, token:<id>)."),
    since: str | None = typer.Option(None, "--since", help="From: 1h (an hour ago), 7d, or "
                                     "an ISO time (UTC unless it has a zone)."),
    until: str | None = typer.Option(None, "--until", help="Until (same forms as --since)."),
    target: str | None = typer.Option(None, "--target", help="vm:web1, host:h1, "
                                      "migration:<id>, user:alice, or a bare name."),
    limit: int = typer.Option(100, "--limit", min=1, max=10000),
    url: str | None = URL, as_json: bool = JSON,
) -> None:
    """The audit log: every state-changing request, newest first."""
    now = datetime.now(UTC)
    start = parse_time(since, "--since", now) if since else None
    end = parse_time(until, "--until", now) if until else None
    with controller(url) as c:
        entries = c.run(c.client.audit(actor=actor, since=start, until=end, target=target,
                                       limit=limit))
    if as_json:
        print_json(entries)
        return
    table = Table("at", "actor", "request", "target", "outcome")
    for e in entries:
        outcome = str(e.status) + (f" {e.error_code}" if e.error_code else "")
        colour = "green" if e.status < 400 else "red"
        table.add_row(_when(e.at), f"{e.actor} ({e.actor_kind})", e.route, e.target or "-",
                      f"[{colour}]{outcome}[/]")
    console.print(table)


@handles_errors
def whoami(url: str | None = URL, as_json: bool = JSON) -> None:
    """Who the controller takes you for, and what you may do."""
    with controller(url) as c:
        me = c.run(c.client.whoami())
    if as_json:
        print_json(me)
        return
    narrowed = f", token narrowed to {me.token_role}" if me.token_role else ""
    console.print(f"{me.kind} {me.name}, role {me.role}{narrowed}", highlight=False)
    console.print("may: " + ", ".join(me.permissions), highlight=False, soft_wrap=True)
