"""Wire models of maintenance mode: ``POST /hosts/{name}/maintenance/enter`` and ``/exit``,
and ``GET /hosts/{name}/maintenance`` (``MaintenanceStatus``).

The answer of ``enter`` is the pre-flight: each VM of the host with its destination or its
blocker (a code of ``segue.placement.evacuation.BLOCKER_CODES``, a message, a hint) and
its move's predicted time, and the evacuation's predicted duration.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field

from segue.api.base import RequestModel, ResponseModel
from segue.api.inventory import HostMaintenance
from segue.api.rules import ExcludedView


class EnterMaintenanceBody(RequestModel):
    """``max_parallel``: migrations at once (also bound by the per-host limits);
    ``dry_run``: answer the pre-flight and change nothing."""

    max_parallel: Annotated[int, Field(ge=1, le=16)] = 2
    dry_run: bool = False


class ExitMaintenanceBody(RequestModel):
    """``return_vms``: move back the VMs the latest evacuation moved (where rules, capacity
    and policies allow), ``max_parallel`` at once."""

    return_vms: bool = Field(False, alias="return")
    max_parallel: Annotated[int, Field(ge=1, le=16)] = 2


class EvacueeView(ResponseModel):
    """One VM of the host: where it goes (``dest``) or why it cannot (``blocker``)."""

    vm: str
    running: bool
    dest: str | None = None
    predicted_s: float = 0.0
    start_s: float | None = None
    end_s: float | None = None
    blocker: str | None = None
    message: str | None = None
    hint: str | None = None
    excluded: list[ExcludedView] = []
    warnings: list[str] = []


class MaintenanceAnswer(ResponseModel):
    """The host's maintenance state after the call, and the pre-flight it was based on."""

    host: str
    state: HostMaintenance
    reason: str | None = None
    dry_run: bool = False
    parallel: int = 1
    predicted_s: float = 0.0
    vms: list[EvacueeView] = []


class EvacuationMoveView(ResponseModel):
    """One VM of an evacuation: ``phase`` planned, migrating (``job_phase``: its job's;
    ``progress_pct``: the memory sent over sent plus remaining, ``eta_s``: the job's own
    estimate), moved, blocked (``blocker``, ``message``)."""

    vm: str
    phase: str
    source: str | None = None
    dest: str | None = None
    job_id: str | None = None
    job_phase: str | None = None
    progress_pct: float | None = None
    eta_s: float | None = None
    predicted_s: float = 0.0
    blocker: str | None = None
    message: str | None = None


class MaintenanceStatus(ResponseModel):
    """A host's maintenance state and its latest evacuation (``evacuation``: running, done,
    stuck, stopped; None: never evacuated; ``kind``: evacuate, or return for the moves back
    of ``exit --return``); ``eta_s`` (while running): the pre-flight's predicted duration
    less the time gone."""

    host: str
    state: HostMaintenance
    reason: str | None = None
    evacuation: str | None = None
    kind: str | None = None
    max_parallel: int | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    predicted_s: float = 0.0
    eta_s: float | None = None
    vms: list[EvacuationMoveView] = []
