"""The controller's answers about pre-migration checks (``segue.checks``).

``CheckAnswer`` is what ``POST /vms/{name}/migrations/check`` answers (one destination),
``WhereAnswer`` what ``GET /vms/{name}/where`` answers (every other host, the worst severity
per check). A refused migration request (409 ``MIGRATION_CHECKS_FAILED``) carries the same
results in its error's ``details.results``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import JsonValue

from segue.api.base import ResponseModel

Severity = Literal["error", "warning", "ok"]


class CheckResultView(ResponseModel):
    """One finding of one check: ``check`` (``request``, ``cpu``, ...), a stable ``code``,
    its ``severity`` (``error`` blocks the migration), and the values it was decided on."""

    check: str
    code: str
    severity: Severity
    message: str
    hint: str = ""
    facts: dict[str, JsonValue] = {}


class CheckAnswer(ResponseModel):
    """Every check for one destination; ``ok``: no error among ``results``."""

    vm: str
    source: str
    destination: str
    ok: bool
    results: list[CheckResultView]


class WhereRow(ResponseModel):
    """One destination of ``where``: the worst severity per check, and every result."""

    host: str
    ok: bool
    checks: dict[str, Severity]
    results: list[CheckResultView]


class WhereAnswer(ResponseModel):
    """Where the VM can go: ``checks`` names the checks in table order, ``hosts`` every
    other host of the cluster."""

    vm: str
    source: str
    checks: list[str]
    hosts: list[WhereRow]
