"""``segue cluster``: the cluster's creation (its CA) and cluster-wide settings; the CPU
baseline (like VMware EVC).

``segue cluster init NAME`` runs offline on the controller's machine, before the
controller's first start with a ``pki_dir``: it makes the cluster's CA and the controller's
own credentials in the credential directory (``--pki-dir``, or the ``pki_dir`` of
``--config controller.toml``) and prints the CA pin that join tickets carry.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.table import Table

from segue.api.cluster import BaselineView
from segue.api.trust import RotationStatus
from segue.cli.connect import URL, controller
from segue.cli.output import console, handles_errors, print_json
from segue.domain.errors import InvalidRequest
from segue.security import store, tokens
from segue.security.pki import IPAddress

cluster_app = typer.Typer(help="The cluster: its CA, the CPU baseline.", no_args_is_help=True)
_WILDCARDS = {"0.0.0.0", "::"}


def _pki_dir_and_address(pki_dir: Path | None, config: Path | None
                         ) -> tuple[Path, str | None]:
    """The credential directory to use and the controller's listen address (if known)."""
    if pki_dir is not None:
        return pki_dir, None
    if config is not None:
        from segue.controller.config import load_controller_config

        loaded = load_controller_config(config)
        if loaded.pki_dir is not None:
            return loaded.pki_dir, loaded.listen.address
        raise InvalidRequest("CLI_PKI_DIR_MISSING", f"{config} sets no pki_dir",
                             "add pki_dir = \"/var/lib/segue/pki\" to it, or give --pki-dir")
    raise InvalidRequest("CLI_PKI_DIR_MISSING", "where should the cluster's CA be kept?",
                         "give --pki-dir DIR, or --config controller.toml with its pki_dir")


def _addresses(names: list[str]) -> tuple[list[str], list[IPAddress]]:
    """``names`` split into DNS names and IP addresses."""
    dns: list[str] = []
    ips: list[IPAddress] = []
    for name in names:
        try:
            ips.append(ipaddress.ip_address(name))
        except ValueError:
            dns.append(name)
    return dns, ips


@cluster_app.command("init")
@handles_errors
def init(
    name: str = typer.Argument(..., help="The cluster's name (1-64 letters, digits, . _ -)."),
    pki_dir: Path | None = typer.Option(None, "--pki-dir", help="The controller's credential "
                                        "directory (default: pki_dir of --config)."),
    config: Path | None = typer.Option(None, "--config", help="The controller's "
                                       "configuration file, for its pki_dir."),
    address: list[str] = typer.Option([], "--address", help="A DNS name or IP address users "
                                      "and hosts reach the controller at (repeat it); the "
                                      "listen address of --config is added."),
) -> None:
    """Create the cluster: its CA and the controller's credentials (offline, once)."""
    root, listen = _pki_dir_and_address(pki_dir, config)
    names = [*address, *([listen] if listen and listen not in _WILDCARDS else [])]
    dns, ips = _addresses(list(dict.fromkeys(names)))
    ca = store.init_cluster(root, name, datetime.now(UTC), dns_names=dns, ip_addresses=ips)
    current = store.current_credentials(root)
    console.print(f"cluster {name}: CA in {root / store.CA_DIR} (keep ca-key.pem safe: it "
                  f"is the keys to the cluster); the controller's credentials in {current.dir}",
                  highlight=False, soft_wrap=True)
    console.print(f"CA pin: {tokens.ca_pin(ca.cert)}", highlight=False, soft_wrap=True)
    console.print("next: start the controller with pki_dir set, then for each host: segue "
                  "host token HOST", highlight=False, soft_wrap=True)


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


def print_rotation(status: RotationStatus) -> None:
    """Which CA issues, and which host is on which CA."""
    state = (f"rotating: CA {status.current_ca} -> {status.next_ca}" if status.rotating
             else f"CA {status.current_ca}, no rotation running")
    console.print(f"{state}; issuing: {status.issuing_ca}", highlight=False)
    table = Table("host", "CA", "certificate", "issued")
    for host in status.hosts:
        issued = host.issued_at.isoformat(timespec="seconds") if host.issued_at else "-"
        table.add_row(host.host, host.ca, host.serial or "-", issued)
    console.print(table)
    if status.rotating:
        waiting = ", ".join(status.lagging) or "none"
        console.print(f"hosts not on the new CA yet: {waiting}", highlight=False)


@cluster_app.command("rotate-ca")
@handles_errors
def rotate_ca(status: bool = typer.Option(False, "--status", help="Show which host is on "
                                          "which CA; change nothing."),
              finish: bool = typer.Option(False, "--finish", help="Drop the old CA (refused "
                                          "while a host is still on it)."),
              force: bool = typer.Option(False, "--force", help="With --finish: drop it even "
                                         "so (those hosts must join again)."),
              url: str | None = URL, as_json: bool = typer.Option(False, "--json")) -> None:
    """Rotate the cluster's CA without restarting anything: start (a new CA, trusted beside
    the old one; hosts renew onto it on their own), --status, then --finish."""
    if status and finish:
        raise InvalidRequest("CLI_OPTIONS_INVALID", "--status and --finish exclude each other",
                             "look first (--status), then finish (--finish)")
    if force and not finish:
        raise InvalidRequest("CLI_OPTIONS_INVALID", "--force goes with --finish only",
                             "segue cluster rotate-ca --finish --force")
    with controller(url) as c:
        if status:
            view = c.run(c.client.ca_rotation())
        elif finish:
            view = c.run(c.client.finish_ca_rotation(force))
        else:
            view = c.run(c.client.start_ca_rotation())
    if as_json:
        print_json(view)
        return
    print_rotation(view)
    if not status and not finish:
        console.print("next: hosts take the new trust within minutes and renew onto the new "
                      "CA after the grace (ca_rotation_grace_s); watch segue cluster "
                      "rotate-ca --status, then --finish", highlight=False, soft_wrap=True)
