"""The controller's cluster bodies: the CPU baseline (``segue.controller.cluster``).

``GET /cluster/baseline`` answers ``BaselineView``; ``POST /cluster/baseline/raise``
answers ``RaisedBaselineView`` (the same plus what the raise ``added`` and ``removed``);
the controller's ``GET /health`` answers ``ControllerHealth``.
"""

from __future__ import annotations

from datetime import datetime

from segue.api.base import ResponseModel


class BaselineHost(ResponseModel):
    """One host against the baseline: the baseline's features it lacks."""

    name: str
    connected: bool
    missing: list[str] = []


class BaselineView(ResponseModel):
    """The cluster's CPU baseline: the base ``model`` plus ``features`` (``cpu_model``: the
    ``-cpu`` string VMs get), when it was set (None: never), how many VMs run, what every
    connected host also offers (``raisable``) and what each host lacks."""

    model: str
    features: list[str]
    cpu_model: str
    updated_at: datetime | None = None
    live_vms: int
    raisable: list[str] = []
    hosts: list[BaselineHost] = []


class RaisedBaselineView(BaselineView):
    added: list[str] = []
    removed: list[str] = []


class ControllerHealth(ResponseModel):
    """``GET /health`` of the controller."""

    status: str
    version: str
