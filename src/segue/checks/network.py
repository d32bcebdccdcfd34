"""Network checks: the migration network between the two hosts, and the VM's port groups.

``check_migration_network``: on both hosts the migration interface exists, is up and has an
address; its link speed is at least ``MIN_SPEED_MBPS`` (an error below, a warning below
``GOOD_SPEED_MBPS`` or when the kernel does not say); the destination's migration address was
reached from the source's over it (``MigrationContext.probe``); for an encrypted migration
(``MigrationContext.tls``) both hosts have credentials (``MIGRATION_TLS_UNAVAILABLE``).
``check_port_groups``: every NIC's port group exists on the destination with its bridge up.
"""

from __future__ import annotations

from segue.checks.context import HostRecord, MigrationContext, PathProbe
from segue.checks.result import CheckResult, error, passed, warning
from segue.domain.host import HostFacts

MIN_SPEED_MBPS = 1000
GOOD_SPEED_MBPS = 10000


def nic_usable(facts: HostFacts) -> bool:
    """Whether the host's migration interface exists, is up and has an address (worth
    probing the path over)."""
    nic = facts.migration
    return bool(nic.interface and nic.present and nic.up and nic.addresses)


def _nic_problem(host: HostRecord) -> CheckResult | None:
    nic = host.facts.migration
    facts = {"host": host.name, "interface": nic.interface}
    if not nic.interface or not nic.present:
        return error("network", "MIGRATION_NIC_MISSING",
                     f"{host.name} has no migration interface"
                     + (f" ({nic.interface} does not exist)" if nic.interface else ""),
                     f"configure the migration interface of {host.name}'s agent", **facts)
    if not nic.up:
        return error("network", "MIGRATION_NIC_DOWN",
                     f"migration interface {nic.interface} of {host.name} is down",
                     f"bring {nic.interface} up on {host.name}", **facts)
    if not nic.addresses:
        return error("network", "MIGRATION_NIC_NO_ADDRESS",
                     f"migration interface {nic.interface} of {host.name} has no address",
                     f"give {nic.interface} an IP address on {host.name}", **facts)
    return None


def _speed_problem(host: HostRecord) -> CheckResult | None:
    nic = host.facts.migration
    speed = nic.speed_mbps
    facts = {"host": host.name, "interface": nic.interface, "speed_mbps": speed}
    if speed is None:
        return warning("network", "MIGRATION_LINK_SPEED_UNKNOWN",
                       f"the kernel reports no link speed for {nic.interface} on {host.name}",
                       "make sure the migration link runs at 1 Gbit/s or more", **facts)
    if speed < MIN_SPEED_MBPS:
        return error("network", "MIGRATION_LINK_SLOW",
                     f"migration link {nic.interface} of {host.name} runs at {speed} Mbit/s, "
                     f"below {MIN_SPEED_MBPS}", "use a link of 1 Gbit/s or faster", **facts)
    if speed < GOOD_SPEED_MBPS:
        return warning("network", "MIGRATION_LINK_UNDER_10G",
                       f"migration link {nic.interface} of {host.name} runs at {speed} Mbit/s: "
                       "busy VMs may take long to converge",
                       "a 10 Gbit/s migration link makes migrations of busy VMs converge",
                       **facts)
    return None


def _probe_problem(ctx: MigrationContext, probe: PathProbe) -> CheckResult | None:
    if probe.ok:
        return None
    return error("network", "MIGRATION_PATH_UNREACHABLE",
                 f"{ctx.dest.name}'s migration address {probe.dest_address}:{probe.port} was not "
                 f"reached from {ctx.source.name} ({probe.source_address or '?'}): "
                 f"{probe.error or 'no reason given'}",
                 "check the migration network (routes, cabling, firewalls) between the hosts",
                 dest_address=probe.dest_address, port=probe.port,
                 source_address=probe.source_address, error=probe.error)


def _tls_problems(ctx: MigrationContext) -> list[CheckResult]:
    if not ctx.tls:
        return []
    return [error("network", "MIGRATION_TLS_UNAVAILABLE",
                  f"{host.name} has no credentials for an encrypted migration",
                  f"join {host.name} to the cluster (segue host token {host.name}, then "
                  f"segue agent join on it), or migrate without encryption (--no-tls)",
                  host=host.name)
            for host in (ctx.source, ctx.dest) if not host.facts.migration.tls]


def check_migration_network(ctx: MigrationContext) -> list[CheckResult]:
    """MIGRATION_NIC_MISSING/_DOWN/_NO_ADDRESS, MIGRATION_LINK_SLOW (error),
    MIGRATION_LINK_UNDER_10G / MIGRATION_LINK_SPEED_UNKNOWN (warnings),
    MIGRATION_PATH_UNREACHABLE or MIGRATION_PATH_UNTESTED, MIGRATION_TLS_UNAVAILABLE;
    else NETWORK_OK."""
    problems: list[CheckResult] = []
    for host in (ctx.source, ctx.dest):
        nic = _nic_problem(host)
        speed = _speed_problem(host) if nic is None else None
        problems += [p for p in (nic, speed) if p is not None]
    if ctx.probe is not None:
        problems += [p for p in (_probe_problem(ctx, ctx.probe),) if p is not None]
    elif not any(p.severity == "error" for p in problems):
        problems.append(error("network", "MIGRATION_PATH_UNTESTED",
                              f"the migration path to {ctx.dest.name} was not tested",
                              "make sure both agents answer, then check again"))
    problems += _tls_problems(ctx)
    probe = ctx.probe
    return passed("network", problems,
                  f"{ctx.dest.name} is reachable over the migration network"
                  + (f" (rtt {probe.rtt_ms:.2f} ms)" if probe and probe.rtt_ms is not None else "")
                  + (", both hosts can encrypt the stream" if ctx.tls else ""), tls=ctx.tls,
                  dest_address=probe.dest_address if probe else None,
                  source_address=probe.source_address if probe else None,
                  rtt_ms=probe.rtt_ms if probe else None,
                  speed_mbps=[ctx.source.facts.migration.speed_mbps,
                              ctx.dest.facts.migration.speed_mbps])


def check_port_groups(ctx: MigrationContext) -> list[CheckResult]:
    """PORTGROUP_MISSING or PORTGROUP_DOWN per port group the VM's NICs use; else
    PORT_GROUPS_OK."""
    there = {pg.name: pg for pg in ctx.dest.facts.port_groups}
    wanted = sorted({nic.port_group for nic in ctx.vm.nics})
    problems: list[CheckResult] = []
    for name in wanted:
        pg = there.get(name)
        if pg is None or not pg.exists:
            problems.append(error(
                "port_groups", "PORTGROUP_MISSING",
                f"port group {name} does not exist on {ctx.dest.name}",
                f"add port group {name} to {ctx.dest.name}'s agent configuration",
                port_group=name, configured=pg is not None))
        elif not pg.up:
            problems.append(error(
                "port_groups", "PORTGROUP_DOWN",
                f"the bridge {pg.bridge} of port group {name} is down on {ctx.dest.name}",
                f"bring {pg.bridge} up on {ctx.dest.name}", port_group=name, bridge=pg.bridge))
    return passed("port_groups", problems,
                  f"{ctx.dest.name} has port group(s) {', '.join(wanted)}" if wanted
                  else f"{ctx.vm.name} has no NICs", port_groups=wanted)
