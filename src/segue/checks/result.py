"""What a check answers: ``CheckResult`` (check, code, severity, message, hint, facts).

``check`` is one of ``CHECKS`` (the order tables show them in); ``code`` is stable
(``CPU_FEATURE_MISSING``, ``PORTGROUP_DOWN``, ... or ``<CHECK>_OK``); ``severity`` is
``error`` (the migration must not start), ``warning`` (shown, does not block) or ``ok``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning", "ok"]
CHECKS = ("request", "host_state", "cpu", "network", "storage", "port_groups", "resources",
          "compatibility")
_RANK: dict[Severity, int] = {"ok": 0, "warning": 1, "error": 2}


@dataclass(frozen=True)
class CheckResult:
    """One finding of one check, with the values it was decided on (``facts``)."""

    check: str
    code: str
    severity: Severity
    message: str
    hint: str = ""
    facts: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """The result as the API shows it."""
        return {"check": self.check, "code": self.code, "severity": self.severity,
                "message": self.message, "hint": self.hint, "facts": self.facts}


def error(check: str, code: str, message: str, hint: str, **facts: Any) -> CheckResult:
    return CheckResult(check, code, "error", message, hint, facts)


def warning(check: str, code: str, message: str, hint: str, **facts: Any) -> CheckResult:
    return CheckResult(check, code, "warning", message, hint, facts)


def passed(check: str, problems: list[CheckResult], message: str,
           **facts: Any) -> list[CheckResult]:
    """``problems`` if there are any, else one ok result (code ``<CHECK>_OK``)."""
    if problems:
        return problems
    return [CheckResult(check, f"{check.upper()}_OK", "ok", message, "", facts)]


def errors_of(results: Iterable[CheckResult]) -> list[CheckResult]:
    """The results that block a migration."""
    return [r for r in results if r.severity == "error"]


def worst(results: Iterable[CheckResult]) -> Severity:
    """The most severe severity among ``results`` (``ok`` for none)."""
    found: Severity = "ok"
    for result in results:
        if _RANK[result.severity] > _RANK[found]:
            found = result.severity
    return found
