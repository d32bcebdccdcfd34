"""Request sanity and the destination host's state.

``check_request``: the VM runs, the destination is not its own host, no other migration of
the VM is in flight. ``check_host_state``: the destination is connected (recent heartbeat),
its agent answers, it is not in maintenance, and migration to it is enabled.
"""

from __future__ import annotations

from segue.checks.context import MigrationContext
from segue.checks.result import CheckResult, error, passed


def check_request(ctx: MigrationContext) -> list[CheckResult]:
    """VM_NOT_RUNNING, MIGRATION_SAME_HOST, MIGRATION_IN_PROGRESS; else REQUEST_OK."""
    vm, problems = ctx.vm.name, []
    if ctx.vm_state != "running":
        problems.append(error("request", "VM_NOT_RUNNING", f"{vm} is {ctx.vm_state}, not running",
                              f"start it first (segue vm start {vm})", state=ctx.vm_state))
    if ctx.source.name == ctx.dest.name:
        problems.append(error("request", "MIGRATION_SAME_HOST",
                              f"{vm} already runs on {ctx.dest.name}",
                              "choose another destination host", host=ctx.dest.name))
    if ctx.in_flight is not None:
        problems.append(error("request", "MIGRATION_IN_PROGRESS",
                              f"{vm} is already migrating ({ctx.in_flight})",
                              f"wait for it, or cancel it: segue migration cancel {ctx.in_flight}",
                              migration=ctx.in_flight))
    return passed("request", problems, f"{vm} runs on {ctx.source.name} and is not migrating",
                  source=ctx.source.name)


def check_host_state(ctx: MigrationContext) -> list[CheckResult]:
    """HOST_DISCONNECTED, AGENT_UNREACHABLE, HOST_IN_MAINTENANCE, HOST_MIGRATION_DISABLED;
    else HOST_STATE_OK."""
    host, problems = ctx.dest, []
    if not host.connected:
        problems.append(error("host_state", "HOST_DISCONNECTED",
                              f"host {host.name} has not sent a heartbeat lately",
                              "check its agent (segue host list)"))
    if not host.reachable:
        problems.append(error("host_state", "AGENT_UNREACHABLE",
                              f"the agent of {host.name} did not answer: "
                              f"{host.unreachable_reason}",
                              "check that its agent runs; facts shown are from its last heartbeat",
                              reason=host.unreachable_reason))
    if host.maintenance:
        problems.append(error("host_state", "HOST_IN_MAINTENANCE",
                              f"host {host.name} is in maintenance",
                              "take it out of maintenance first"))
    if not host.migration_enabled:
        problems.append(error("host_state", "HOST_MIGRATION_DISABLED",
                              f"host {host.name} is not enabled for migration",
                              f"segue host enable-migration {host.name}"))
    return passed("host_state", problems, f"{host.name} is connected and accepts migrations")
