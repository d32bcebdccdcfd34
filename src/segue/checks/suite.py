"""All the checks, in table order: ``run_checks`` never stops at the first error."""

from __future__ import annotations

from collections.abc import Callable

from segue.checks.context import MigrationContext
from segue.checks.cpu import check_compatibility, check_cpu
from segue.checks.network import check_migration_network, check_port_groups
from segue.checks.request import check_host_state, check_request
from segue.checks.resources import check_resources
from segue.checks.result import CheckResult
from segue.checks.storage import check_storage

Check = Callable[[MigrationContext], list[CheckResult]]
ALL_CHECKS: tuple[Check, ...] = (check_request, check_host_state, check_cpu,
                                 check_migration_network, check_storage, check_port_groups,
                                 check_resources, check_compatibility)


def run_checks(ctx: MigrationContext) -> list[CheckResult]:
    """Every check's results, in ``segue.checks.result.CHECKS`` order (each check contributes
    at least one result)."""
    return [result for check in ALL_CHECKS for result in check(ctx)]
