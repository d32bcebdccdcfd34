"""The controller's migration bodies: request, options, the job view, its summary, samples.

``MigrationRequestBody`` is what ``POST /vms/{name}/migrations`` takes; ``MigrationJobView``
what every migration route answers; ``ProgressSample`` one stored progress sample
(``segue.engine.progress.Progress`` plus its time ``t`` since the job started).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, JsonValue

from segue.api.base import Name, RequestModel, ResponseModel

DowntimeMs = Annotated[int, Field(ge=1, le=60_000)]
Seconds = Annotated[float, Field(gt=0, le=86_400)]


class MigrationOptionsBody(RequestModel):
    """What a user may set per migration (``segue vm migrate`` flags)."""

    downtime_limit_ms: DowntimeMs | None = None  # None: chosen from the measured link
    max_bandwidth_mibs: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    deadline_s: Seconds = 600.0
    stall_timeout_s: Seconds = 15.0
    allow_postcopy: bool = True
    # None: the cluster's bound (the controller's max_auto_downtime_ms, 300 ms by default);
    # the policy never chooses nor escalates to a target above it by itself
    max_downtime_ms: DowntimeMs | None = None
    # the stream is TLS with the cluster's certificates (False: plain, readable on the link)
    tls: bool = True


class MigrationRequestBody(MigrationOptionsBody):
    """``POST /vms/{name}/migrations``: the destination host and the options."""

    to: Name


class CheckRequestBody(RequestModel):
    """``POST /vms/{name}/migrations/check``: the destination host; ``tls``: check for an
    encrypted migration (the default, as a migration's; policies may require it)."""

    to: Name
    tls: bool = True


class ProgressSample(ResponseModel):
    """One progress sample (``segue.engine.progress.Progress``); ``t``: seconds since the
    job started (absent on a job's ``progress``, the last sample)."""

    t: float | None = None
    status: str
    transferred: int = 0
    remaining: int = 0
    total: int = 0
    dirty_rate: float = 0.0
    throughput: float = 0.0
    iteration: int = 0
    expected_downtime_ms: float | None = None
    downtime_ms: float | None = None
    total_time_ms: float | None = None
    setup_time_ms: float | None = None
    eta_s: float | None = None
    converging: bool | None = None
    error: str | None = None
    dirty_ratio: float | None = None
    throttle_pct: int = 0


class TransitionView(ResponseModel):
    """One phase change (``from`` == ``to``: a decision noted within a phase)."""

    at: datetime
    from_: str | None = Field(None, alias="from")
    to: str
    message: str = ""


class MigrationJobView(ResponseModel):
    """A migration job as the API shows it. ``queue_position`` (1: next) only while queued;
    ``summary``: prediction and outcome (``segue.engine.job``), keys as documented there;
    ``transitions`` only on a single job's view; ``encrypted``: whether the stream is TLS,
    as the source's QEMU reported at the start (None before it)."""

    id: str
    vm: str
    source: str
    destination: str
    phase: str
    queue_position: int | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    reason: str | None = None
    error_code: str | None = None
    cancel_requested: bool = False
    options: MigrationOptionsBody
    summary: dict[str, JsonValue] = {}
    encrypted: bool | None = None
    progress: ProgressSample | None = None
    transitions: list[TransitionView] | None = None
