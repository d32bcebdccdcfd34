"""The ``segue`` command (Typer + Rich).

Every command prints a clear one-line error (code, message, hint) and exits 1 on a
``SegueError``; read commands take ``--json``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from segue.cli import checks  # noqa: F401 - adds `segue vm where`
from segue.cli.access import events as audit_events
from segue.cli.access import token_app, user_app
from segue.cli.access import whoami as show_whoami
from segue.cli.cluster import cluster_app
from segue.cli.connect import use_token
from segue.cli.hosts import host_app
from segue.cli.lab import lab_app
from segue.cli.migrations import migration_app  # also adds `segue vm migrate`
from segue.cli.output import console, handles_errors, print_json
from segue.cli.policies import policy_app  # also adds vm/host tag commands, user set-tags
from segue.cli.rules import rule_app
from segue.cli.vms import vm_app

app = typer.Typer(help="Segue: live migration and cluster management for QEMU/KVM.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
image_app = typer.Typer(help="The guest test image.", no_args_is_help=True)
app.add_typer(image_app, name="image")


@app.callback()
def options(token: str | None = typer.Option(
        None, "--token", help="API token to send to the controller over TCP; default "
        "$SEGUE_TOKEN, else ~/.config/segue/token (none over the unix socket).")) -> None:
    """Segue: live migration and cluster management for QEMU/KVM."""
    use_token(token)


@image_app.command("build")
@handles_errors
def image_build(force: bool = typer.Option(False, help="Rebuild even if cached."),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Build (or find in the cache) the guest image: kernel + initramfs with the checker."""
    from segue.image.builder import build_image

    with console.status("building the guest image"):
        image = build_image(force=force)
    data = {"kernel": str(image.kernel), "initrd": str(image.initrd), "key": image.key,
            "kernel_version": image.kernel_version}
    if as_json:
        print_json(data)
    else:
        console.print(f"guest image {image.key[:12]} (kernel {image.kernel_version})")
        console.print(f"  kernel {image.kernel}\n  initrd {image.initrd}")


agent_app = typer.Typer(help="The host agent: run it, or join this host to a cluster.")


@agent_app.callback(invoke_without_command=True)
@handles_errors
def agent(ctx: typer.Context, config: Path | None = typer.Option(
        None, help="Agent configuration file (TOML); default /etc/segue/agent.toml.")) -> None:
    """Run the host agent on this host (normally as root, inside the host's namespace).

    Environment variables SEGUE_AGENT_<KEY> override keys of the file."""
    if ctx.invoked_subcommand is not None:
        return
    from segue.agent.config import load_config
    from segue.agent.server import run_agent

    run_agent(load_config(config))


@agent_app.command("join")
@handles_errors
def agent_join(
    controller: str = typer.Option(..., "--controller", help="The controller's URL "
                                   "(https://ADDRESS:7700; http:// only in the lab)."),
    host: str = typer.Option(..., "--host", help="This host's name, as the token names it."),
    token: str = typer.Option(..., "--token", envvar="SEGUE_JOIN_TOKEN",
                              help="The join token (segue host token); or $SEGUE_JOIN_TOKEN."),
    ca_pin: str = typer.Option(..., "--ca-pin", help="The CA pin of the ticket, sha256:..."),
    pki_dir: Path = typer.Option(Path("/var/lib/segue/pki"), "--pki-dir",
                                 help="Where this host keeps its credentials."),
    force: bool = typer.Option(False, "--force", help="Join again over credentials already "
                               "there (a new CA, a lost certificate)."),
) -> None:
    """Join this host to the cluster: its key made here, its certificate from the controller."""
    import asyncio

    from segue.agent import credentials

    paths = asyncio.run(credentials.join_cluster(controller, token, ca_pin, host, pki_dir,
                                                 force=force))
    console.print(f"host {host} joined the cluster: its credentials are in {paths.dir} "
                  f"({pki_dir / 'current'})", highlight=False, soft_wrap=True)
    console.print(f"next: set pki_dir = \"{pki_dir}\" in agent.toml and (re)start the agent",
                  highlight=False, soft_wrap=True)


@app.command("server")
@handles_errors
def server(config: Path | None = typer.Option(
        None, help="Controller configuration file (TOML); default /etc/segue/controller.toml.",
), create_database: bool = typer.Option(
        False, "--create-database",
        help="A new cluster: give an empty database its schema (refused otherwise).",
)) -> None:
    """Run the controller: inventory, migrations and the cluster's API.

    Environment variables SEGUE_CONTROLLER_<KEY> override keys of the file."""
    from segue.controller.config import load_controller_config
    from segue.controller.server import run_controller

    loaded = load_controller_config(config)
    if create_database:
        loaded = loaded.model_copy(update={"create_database": True})
    run_controller(loaded)


app.add_typer(agent_app, name="agent")
app.add_typer(lab_app, name="lab")
app.add_typer(host_app, name="host")
app.add_typer(vm_app, name="vm")
app.add_typer(migration_app, name="migration")
app.add_typer(cluster_app, name="cluster")
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")
app.add_typer(policy_app, name="policy")
app.add_typer(rule_app, name="rule")
app.command("events")(audit_events)
app.command("whoami")(show_whoami)


def main() -> None:
    app()
