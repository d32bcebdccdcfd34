"""Pre-migration checks: pure functions from a ``MigrationContext`` to ``CheckResult`` lists.

Nothing here does I/O: the controller (``segue.controller.precheck``) gathers the context
from the database and the agents, then calls ``run_checks``. Every check reports each
problem it finds (error or warning) with a stable code, a message, a hint and the facts it
decided on, or one ``ok`` result when it passes, so a table always shows every check.
The CPU baseline of the cluster (EVC-like) lives in ``segue.checks.baseline``.
"""

from segue.checks.context import HostRecord, MigrationContext, PathProbe, host_facts_from_dict
from segue.checks.result import CHECKS, CheckResult, Severity, errors_of, worst
from segue.checks.suite import run_checks

__all__ = ["CHECKS", "CheckResult", "HostRecord", "MigrationContext", "PathProbe", "Severity",
           "errors_of", "host_facts_from_dict", "run_checks", "worst"]
